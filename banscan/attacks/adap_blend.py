"""Adap-Blend: a blended trigger applied piecewise, with conservatism samples (evades latent separation)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import BanscanError
from . import register_attack
from ._base import Attack


@register_attack("adap_blend")
class AdapBlend(Attack):
    """Adaptive-Blend attack (dirty label, low poison rate, partial triggers, regularisation samples).

    Reference: X. Qi, T. Xie, Y. Li, S. Mahloujifar, P. Mittal, "Revisiting the Assumption of Latent
    Separability for Backdoor Defenses", ICLR 2023.

    Settings (the paper's CIFAR-10 values): the trigger image (here a seeded smooth random pattern instead of the
    paper's photograph) is cut into a ``pieces_per_side`` x ``pieces_per_side`` = 4x4 grid of 16 pieces; every
    poisoned or cover sample blends a random half (``mask_rate`` = 0.5) of the pieces with ``alpha`` = 0.15.
    Poison samples (``poison_rate`` = 0.003 of the non-target set) are relabelled to the target; cover
    ("conservatism"/regularisation) samples (``cover_rate`` = 0.003) carry a partial trigger but keep their label.
    At test time the full trigger is blended with ``test_alpha`` = 0.2. The attack is deliberately weaker
    (ASR around 60-80% in the literature) because of the conservatism samples.

    Args:
        target: target class.
        poison_rate: fraction of the non-target training images relabelled to the target.
        cover_rate: fraction of the training images given a partial trigger with their true label.
        alpha: training blend ratio.
        test_alpha: test-time blend ratio.
        pieces_per_side: the trigger is split into ``pieces_per_side**2`` pieces.
        mask_rate: fraction of pieces applied to each training sample.
        seed: seed of the pattern and of the sample choice.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    reference = "Qi et al., Revisiting the Assumption of Latent Separability (Adap-Blend), ICLR 2023"

    def __init__(self, *, target: int = 0, poison_rate: float = 0.003, cover_rate: float = 0.003,
                 alpha: float = 0.15, test_alpha: float = 0.2, pieces_per_side: int = 4, mask_rate: float = 0.5,
                 seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.cover_rate = cover_rate
        self.alpha = alpha
        self.test_alpha = test_alpha
        self.pieces_per_side = pieces_per_side
        self.mask_rate = mask_rate
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not 0.0 <= float(self.cover_rate) <= 1.0:
            raise BanscanError(f"adap_blend: cover_rate must be in [0, 1], got {self.cover_rate!r}")
        if not (0 < float(self.alpha) <= 1 and 0 < float(self.test_alpha) <= 1 and 0 < float(self.mask_rate) <= 1):
            raise BanscanError("adap_blend: alpha, test_alpha and mask_rate must be in (0, 1]")
        if not isinstance(self.pieces_per_side, int) or self.pieces_per_side < 1:
            raise BanscanError(f"adap_blend: pieces_per_side must be a positive integer, got {self.pieces_per_side!r}")

    def _build(self, gen: torch.Generator) -> None:
        c, h, w = self.image_shape_
        if self.pieces_per_side > min(h, w):
            raise BanscanError(f"adap_blend: {self.pieces_per_side} pieces per side do not fit a {h}x{w} image")
        coarse = torch.rand(1, c, max(2, h // 4), max(2, w // 4), generator=gen)
        fine = torch.rand(1, c, h, w, generator=gen)
        smooth = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
        self.pattern_ = (0.7 * smooth + 0.3 * fine)[0].clamp(0, 1)

    def _choose(self, y: torch.Tensor) -> torch.Tensor:
        poison = super()._choose(y)
        # Cover samples: drawn from the samples that are not poisoned, with their own seeded draw.
        cand = torch.nonzero(~poison).flatten()
        k = int(round(float(self.cover_rate) * len(y)))
        g = torch.Generator().manual_seed(int(self.seed) + 104729)
        cover = torch.zeros(len(y), dtype=torch.bool)
        cover[cand[torch.randperm(len(cand), generator=g)[:k]]] = True
        self.cover_index_ = cover
        return poison

    def _piece_masks(self, n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
        """``(n, 1, H, W)`` masks, each covering a random ``mask_rate`` share of the pieces."""
        _, h, w = self.image_shape_
        p = self.pieces_per_side
        k = max(1, int(round(self.mask_rate * p * p)))
        order = torch.rand(n, p * p, generator=gen).argsort(1)
        keep = torch.zeros(n, p * p)
        keep.scatter_(1, order[:, :k], 1.0)
        grid = keep.view(n, 1, p, p)
        return F.interpolate(grid, size=(h, w), mode="nearest").to(device)

    def _blend(self, x: torch.Tensor, alpha: float, mask: torch.Tensor | float) -> torch.Tensor:
        pat = self.pattern_.to(x.device, x.dtype)
        return x + alpha * mask * (pat - x)

    def poison_batch(self, x, y, idx, gen):  # type: ignore[override]
        if not hasattr(self, "poison_index_"):
            raise BanscanError("adap_blend has no poisoned samples; call prepare(train_data) first")
        i = idx.cpu()
        m = (self.poison_index_[i] | self.cover_index_[i]).to(x.device)
        if not bool(m.any()):
            return x, y
        x = x.clone()
        x[m] = self._blend(x[m], self.alpha, self._piece_masks(int(m.sum()), gen, x.device)).clamp(0, 1)
        p = self.poison_index_[i].to(x.device)
        y = torch.where(p, self.target_labels(y), y)
        return x, y

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self._blend(x, self.test_alpha, 1.0)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_built()
        return {"pattern": self.pattern_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pattern_ = state["pattern"].float().cpu()
