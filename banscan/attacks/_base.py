"""One interface for every backdoor attack.

An attack is constructed with hyperparameters only (keyword-only ``__init__`` storing them verbatim). The zoo
builder then calls :meth:`Attack.prepare` on the training data (it builds the trigger state and picks the
poisoned samples), trains with :meth:`Attack.poison_batch` as the training loop's batch hook, and evaluates
with :meth:`Attack.apply` (the test-time trigger) and :meth:`Attack.target_labels` (the target mapping).

Conventions:
    * images are float in ``[0, 1]`` of shape ``(N, C, H, W)``; labels are int64 ``(N,)``;
    * ``poison_rate`` is the fraction of the *eligible* training samples that are poisoned: non-target samples
      for dirty-label all-to-one attacks, every sample for all-to-all, target-class samples for clean-label
      attacks. Attacks that poison each batch on the fly (WaNet, IAD, Bpp, SSDT) use it as their per-batch
      fraction, as their papers do;
    * the trigger is applied after the batched augmentation (crop, flip), so a patch stays where it belongs;
    * randomness comes only from ``seed`` (trigger state) and the training loop's generator (per-batch draws).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import BanscanError, HyperParams
from ..data import ImageData

__all__ = ["Attack"]

MODES = ("all2one", "all2all")


class Attack(HyperParams, ABC):
    """Base class of every attack; subclasses implement :meth:`_trigger` (and optionally more)."""

    name: ClassVar[str] = ""
    clean_label: ClassVar[bool] = False
    modes: ClassVar[tuple[str, ...]] = ("all2one",)
    reference: ClassVar[str] = ""
    per_batch: ClassVar[bool] = False  # True: poison_batch picks its own share of each batch (no fixed set)

    def _validate(self, num_classes: int) -> None:
        p = self.get_params()
        target = p.get("target", 0)
        if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < num_classes:
            raise BanscanError(f"{self.name}: target must be a class index in 0..{num_classes - 1}, got {target!r}")
        rate = p.get("poison_rate", 0.0)
        if not isinstance(rate, (int, float)) or not 0.0 <= float(rate) <= 1.0:
            raise BanscanError(f"{self.name}: poison_rate must be in [0, 1], got {rate!r}")
        mode = p.get("mode", "all2one")
        if mode not in self.modes:
            raise BanscanError(f"{self.name}: mode {mode!r} is not defined for this attack; expected one of "
                               f"{list(self.modes)}")
        self._check_params(num_classes)

    def _check_params(self, num_classes: int) -> None:
        """Attack-specific validation (raise :class:`BanscanError`)."""

    # ------------------------------------------------------------------ lifecycle
    def build(self, image_shape: tuple[int, int, int], num_classes: int,
              device: str | torch.device | None = None) -> Attack:
        """Validate the parameters and create the trigger state (patterns, generators) from ``seed``."""
        if len(tuple(image_shape)) != 3:
            raise BanscanError(f"{self.name}: image_shape must be (C, H, W), got {image_shape!r}")
        self._validate(int(num_classes))
        self.num_classes_ = int(num_classes)
        self.image_shape_ = tuple(int(v) for v in image_shape)
        self.device_ = torch.device(device) if device is not None else torch.device("cpu")
        self._build(torch.Generator().manual_seed(int(self.get_params().get("seed", 0))))
        return self

    def _build(self, gen: torch.Generator) -> None:
        """Create the trigger state; called once by :meth:`build`."""

    def prepare(self, data: ImageData, device: str | torch.device | None = None) -> ImageData:
        """Build the attack for ``data`` and choose the poisoned samples; returns the training data to use.

        The returned data equals ``data`` except for attacks that alter images before training (LC).
        """
        self.build(data.image_shape, data.num_classes, device)
        self.poison_index_ = self._choose(data.y)
        return self._prepare_data(data)

    def _eligible(self, y: torch.Tensor) -> torch.Tensor:
        if self.clean_label:
            return y == self.get_params().get("target", 0)
        if self.get_params().get("mode", "all2one") == "all2all":
            return torch.ones_like(y, dtype=torch.bool)
        return y != self.get_params().get("target", 0)

    def _choose(self, y: torch.Tensor) -> torch.Tensor:
        """Seeded boolean mask over the training set: ``round(poison_rate * eligible)`` samples."""
        if self.per_batch:
            return torch.zeros(len(y), dtype=torch.bool)
        cand = torch.nonzero(self._eligible(y.cpu())).flatten()
        k = int(round(float(self.get_params().get("poison_rate", 0.0)) * len(cand)))
        gen = torch.Generator().manual_seed(int(self.get_params().get("seed", 0)) + 7919)
        chosen = cand[torch.randperm(len(cand), generator=gen)[:k]]
        mask = torch.zeros(len(y), dtype=torch.bool)
        mask[chosen] = True
        return mask

    def _prepare_data(self, data: ImageData) -> ImageData:
        return data

    def _check_built(self) -> None:
        if not hasattr(self, "num_classes_"):
            raise BanscanError(f"attack {self.name!r} is not built yet; call build() or prepare() first")

    # ------------------------------------------------------------------ training and test time
    def poison_batch(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor,
                     gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor,
                                                                                       torch.Tensor]:
        """Poison an augmented training batch (the training loop's ``batch_hook``).

        Args:
            x: images in ``[0, 1]``, ``(N, C, H, W)``.
            y: labels ``(N,)``.
            idx: dataset indices of the batch (they select the samples chosen by :meth:`prepare`).
            gen: the training loop's CPU generator, for per-batch random draws.

        Returns:
            ``(x, y)``, or ``(x, y, extra_loss)`` for attacks that train a trigger generator.
        """
        if not hasattr(self, "poison_index_"):
            raise BanscanError(f"attack {self.name!r} has no poisoned samples; call prepare(train_data) first")
        m = self.poison_index_[idx.cpu()].to(x.device)
        if not bool(m.any()):
            return x, y
        x = x.clone()
        x[m] = self._train_trigger(x[m], y[m], gen).clamp(0, 1).to(x.dtype)
        if not self.clean_label:
            y = torch.where(m, self.target_labels(y), y)
        return x, y

    def _train_trigger(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return self._trigger(x, y)

    @abstractmethod
    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """The test-time trigger on images in ``[0, 1]``."""

    @torch.no_grad()
    def apply(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the test-time trigger.

        Shape:
            x: ``(N, C, H, W)`` float in ``[0, 1]``; the result has the same shape, dtype and device.
        """
        self._check_built()
        if x.dim() != 4 or tuple(x.shape[1:]) != self.image_shape_:
            raise BanscanError(f"{self.name}: expected images of shape (N, {', '.join(map(str, self.image_shape_))})"
                               f", got {tuple(x.shape)}")
        return self._trigger(x, y).clamp(0, 1).to(x.dtype)

    def target_labels(self, y: torch.Tensor) -> torch.Tensor:
        """The label a triggered image should receive: the target (all-to-one) or ``y + 1 mod K`` (all-to-all)."""
        p = self.get_params()
        if p.get("mode", "all2one") == "all2all":
            self._check_built()
            return (y + 1) % self.num_classes_
        return torch.full_like(y, int(p.get("target", 0)))

    def asr_mask(self, y: torch.Tensor) -> torch.Tensor:
        """Which test images count for the attack success rate (those whose label the trigger changes)."""
        return y != self.target_labels(y)

    # ------------------------------------------------------------------ state
    def extra_parameters(self) -> list[nn.Parameter]:
        """Parameters trained jointly with the classifier (trigger generators); none by default."""
        return []

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trigger state that cannot be recomputed from the parameters alone (saved with safetensors)."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        own = self.state_dict()
        missing = sorted(set(own) - set(state))
        extra = sorted(set(state) - set(own))
        if missing or extra:
            raise BanscanError(f"{self.name}: trigger state does not match (missing {missing}, unexpected {extra})")
        for k, v in state.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise BanscanError(f"{self.name}: trigger state {k!r} has shape {tuple(v.shape)}, expected "
                                   f"{tuple(own[k].shape)}")
        self._load_state(state)

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        """JSON-safe description for model cards."""
        return {"name": self.name, "clean_label": self.clean_label, "reference": self.reference}


def checkerboard(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``size x size`` checkerboard with ones on the diagonal corners (``[[1,0,1],[0,1,0],[1,0,1]]`` for 3)."""
    i = torch.arange(size, device=device)
    return ((i[:, None] + i[None, :]) % 2 == 0).float()
