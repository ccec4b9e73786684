"""IAD: input-aware dynamic triggers from a generator trained jointly with the classifier."""

from __future__ import annotations

import torch
from torch import nn

from .._utils import BanscanError
from . import register_attack
from ._base import Attack
from ._generator import TriggerGenerator


@register_attack("iad")
class IAD(Attack):
    """Input-Aware Dynamic backdoor (dirty label, poisoned on the fly per batch).

    Reference: T. A. Nguyen, A. T. Tran, "Input-Aware Dynamic Backdoor Attack", NeurIPS 2020.

    Settings (the BAN code's, which are the paper's CIFAR-10 values): a pattern generator ``G`` and a mask
    generator ``M`` map each image to its own trigger, ``x' = x + (G(x) - x) * M(x)``. In each batch a fraction
    ``poison_rate`` (p_attack) = 0.1 is triggered and relabelled and a fraction ``p_cross`` = 0.1 receives the
    trigger generated from *another* image while keeping its label (cross-trigger samples), which makes triggers
    input-specific. The generators are trained jointly with the classifier (their parameters join the
    classifier's optimiser through :meth:`extra_parameters`) with the diversity loss
    ``lambda_div * ||x1 - x2|| / ||G(x1) - G(x2)||`` and the mask-density loss
    ``lambda_norm * relu(mean(M(x)) - mask_density)`` (``lambda_div`` = 1, ``lambda_norm`` = 100,
    ``mask_density`` = 0.032). The paper pre-trains ``M`` separately, thresholds it to a near-binary mask and
    optimises the generators with Adam; here everything trains in one loop and the mask keeps the
    ``mask_density`` share of pixels that ``M`` scores highest (straight-through gradient), which is cheaper and
    gives the same kind of sparse, input-specific trigger.
    The generator weights are saved with the model. Target 0, all-to-one (all-to-all: ``y -> y+1 mod K``).

    Args:
        target: target class.
        poison_rate: fraction of each training batch triggered and relabelled (p_attack).
        p_cross: fraction of each training batch given another image's trigger (labels kept).
        mask_density: target mean of the mask.
        lambda_div: weight of the diversity loss.
        lambda_norm: weight of the mask-density loss.
        width: channels of the generators.
        mode: ``"all2one"`` or ``"all2all"``.
        seed: seed of the generators' initial weights.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    modes = ("all2one", "all2all")
    reference = "Nguyen & Tran, Input-Aware Dynamic Backdoor Attack, NeurIPS 2020"
    per_batch = True  # poisons a share of every batch, as its paper does

    # One keyword argument per hyperparameter (the estimator contract, docs/architecture.md): no logic here.
    def __init__(self, *, target: int = 0, poison_rate: float = 0.1, p_cross: float = 0.1,
                 mask_density: float = 0.032, lambda_div: float = 1.0, lambda_norm: float = 100.0, width: int = 16,
                 mode: str = "all2one", seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.p_cross = p_cross
        self.mask_density = mask_density
        self.lambda_div = lambda_div
        self.lambda_norm = lambda_norm
        self.width = width
        self.mode = mode
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not 0 <= float(self.p_cross) <= 1 or float(self.poison_rate) + float(self.p_cross) > 1:
            raise BanscanError(f"{self.name}: need 0 <= p_cross and poison_rate + p_cross <= 1, got "
                               f"{self.poison_rate!r} + {self.p_cross!r}")
        if not 0 < float(self.mask_density) < 1:
            raise BanscanError(f"{self.name}: mask_density must be in (0, 1), got {self.mask_density!r}")
        if not isinstance(self.width, int) or self.width < 1:
            raise BanscanError(f"{self.name}: width must be a positive integer, got {self.width!r}")

    def _build(self, gen: torch.Generator) -> None:
        c = self.image_shape_[0]
        with torch.random.fork_rng(devices=[]):  # seeded initial weights without leaking global RNG state
            torch.manual_seed(int(gen.initial_seed()))
            self.pattern_gen_ = TriggerGenerator(c, c, self.width)
            self.mask_gen_ = TriggerGenerator(c, 1, self.width)
        self.pattern_gen_.to(self.device_)
        self.mask_gen_.to(self.device_)

    def extra_parameters(self) -> list[nn.Parameter]:
        self._check_built()
        return list(self.pattern_gen_.parameters()) + list(self.mask_gen_.parameters())

    def _mask(self, src: torch.Tensor) -> torch.Tensor:
        """Binary mask of the ``mask_density`` share of pixels the mask generator scores highest.

        The paper thresholds its mask to near-binary values; a per-image top-k with a straight-through gradient
        does the same without a separate pre-training stage, and keeps the trigger at full strength (a soft mask
        squeezed to a 3% mean would only be a faint blend that the classifier never picks up).
        """
        soft = self.mask_gen_(src)
        flat = soft.flatten(1)
        k = max(1, int(round(self.mask_density * flat.shape[1])))
        kth = flat.topk(k, dim=1).values[:, -1:]
        hard = (flat >= kth).to(soft.dtype).view_as(soft)
        return hard + soft - soft.detach()

    def _dynamic(self, x: torch.Tensor, src: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pattern = self.pattern_gen_(src)
        mask = self._mask(src)
        return x + (pattern - x) * mask, pattern, mask

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self._dynamic(x, x)[0]

    def _aux_losses(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Diversity and mask-density losses on a batch."""
        n = x.shape[0]
        if n < 2:
            return x.new_zeros(())
        x2 = x[torch.randperm(n, generator=gen).to(x.device)]
        p1, m1 = self.pattern_gen_(x), self.mask_gen_(x)
        p2, m2 = self.pattern_gen_(x2), self.mask_gen_(x2)
        dist_x = (x - x2).flatten(1).norm(dim=1)
        div_p = (dist_x / ((p1 - p2).flatten(1).norm(dim=1) + 1e-3)).mean()
        div_m = (dist_x / ((m1 - m2).flatten(1).norm(dim=1) + 1e-3)).mean()
        density = torch.relu(torch.cat([m1, m2]).mean() - self.mask_density)
        return self.lambda_div * (div_p + div_m) + self.lambda_norm * density

    def _roles(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions in the batch: (triggered+relabelled, triggered+label kept, cross, their labels)."""
        n = len(y)
        n_bd = int(n * self.poison_rate)
        n_cross = int(n * self.p_cross)
        ar = torch.arange(n, device=y.device)
        return ar[:n_bd], ar[:0], ar[n_bd:n_bd + n_cross], self.target_labels(y[:n_bd])

    def poison_batch(self, x, y, idx, gen):  # type: ignore[override]
        self._check_built()
        bd, keep, cross, y_bd = self._roles(y)
        x0 = x
        x = x.clone()
        y = y.clone()
        sel = torch.cat([bd, keep])
        if len(sel):
            x[sel] = self._dynamic(x[sel], x[sel])[0].clamp(0, 1)
            y[bd] = y_bd
        if len(cross):
            donors = x0[torch.randperm(x.shape[0], generator=gen)[:len(cross)].to(x.device)]
            x[cross] = self._dynamic(x[cross], donors)[0].clamp(0, 1)
        # Regularise on the samples that carry a trigger (as the paper does), not the whole batch: it keeps
        # the generators' cost small next to the classifier's.
        reg = torch.cat([sel, cross])
        return x, y, self._aux_losses(x0[reg], gen)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_built()
        sd = {f"pattern.{k}": v for k, v in self.pattern_gen_.state_dict().items()}
        sd.update({f"mask.{k}": v for k, v in self.mask_gen_.state_dict().items()})
        return sd

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pattern_gen_.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("pattern.")})
        self.mask_gen_.load_state_dict({k[5:]: v for k, v in state.items() if k.startswith("mask.")})
