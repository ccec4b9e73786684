"""BadNets: a small fixed patch stamped on the image."""

from __future__ import annotations

import torch

from .._utils import BanscanError
from . import register_attack
from ._base import Attack, checkerboard


@register_attack("badnets")
class BadNets(Attack):
    """BadNets patch trigger (dirty label).

    Reference: T. Gu, B. Dolan-Gavitt, S. Garg, "BadNets: Identifying Vulnerabilities in the Machine Learning
    Model Supply Chain", arXiv:1708.06733, 2017.

    Settings (the BAN paper's): a ``patch_size x patch_size`` black/white checkerboard (3x3, ones on the corners)
    pasted with opacity ``alpha`` = 1 in the bottom-right corner (rows/cols 29-31 of a 32x32 image),
    5% of the non-target training images poisoned, target class 0, all-to-one (all-to-all: ``y -> y+1 mod K``).

    Args:
        target: target class (all-to-one).
        poison_rate: fraction of eligible training images poisoned.
        patch_size: side of the checkerboard in pixels.
        alpha: opacity of the patch.
        mode: ``"all2one"`` or ``"all2all"``.
        seed: seed of the poisoned-sample choice.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    modes = ("all2one", "all2all")
    reference = "Gu et al., BadNets, arXiv:1708.06733 (2017)"

    def __init__(self, *, target: int = 0, poison_rate: float = 0.05, patch_size: int = 3, alpha: float = 1.0,
                 mode: str = "all2one", seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.patch_size = patch_size
        self.alpha = alpha
        self.mode = mode
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise BanscanError(f"badnets: patch_size must be a positive integer, got {self.patch_size!r}")
        if not 0.0 < float(self.alpha) <= 1.0:
            raise BanscanError(f"badnets: alpha must be in (0, 1], got {self.alpha!r}")

    def _build(self, gen: torch.Generator) -> None:
        _, h, w = self.image_shape_
        if self.patch_size > min(h, w):
            raise BanscanError(f"badnets: patch_size {self.patch_size} exceeds the {h}x{w} image")

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        s = self.patch_size
        patch = checkerboard(s, x.device).to(x.dtype)
        out = x.clone()
        region = out[:, :, -s:, -s:]
        out[:, :, -s:, -s:] = (1 - self.alpha) * region + self.alpha * patch
        return out
