"""Blend: a full-image pattern blended into the image."""

from __future__ import annotations

import torch

from .._utils import BanscanError
from . import register_attack
from ._base import Attack


@register_attack("blend")
class Blend(Attack):
    """Blended-injection attack with a fixed random-noise pattern (dirty label).

    Reference: X. Chen, C. Liu, B. Li, K. Lu, D. Song, "Targeted Backdoor Attacks on Deep Learning Systems Using
    Data Poisoning", arXiv:1712.05526, 2017.

    Settings: the pattern is uniform noise in ``[0, 1]`` of the image's full size drawn from ``seed`` (the BAN
    code blends a fixed noise image; Chen et al. use a random-noise key pattern), blended as
    ``(1 - alpha) * x + alpha * pattern`` with ``alpha`` = 0.2, 10% of the non-target images poisoned, target 0.
    The pattern is saved with the model (``<id>.attack.safetensors``).

    Args:
        target: target class.
        poison_rate: fraction of eligible training images poisoned.
        alpha: blend ratio of the pattern.
        mode: ``"all2one"`` or ``"all2all"``.
        seed: seed of the pattern and of the poisoned-sample choice.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    modes = ("all2one", "all2all")
    reference = "Chen et al., Blended injection, arXiv:1712.05526 (2017)"

    def __init__(self, *, target: int = 0, poison_rate: float = 0.1, alpha: float = 0.2, mode: str = "all2one",
                 seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.alpha = alpha
        self.mode = mode
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not 0.0 < float(self.alpha) <= 1.0:
            raise BanscanError(f"blend: alpha must be in (0, 1], got {self.alpha!r}")

    def _build(self, gen: torch.Generator) -> None:
        self.pattern_ = torch.rand(self.image_shape_, generator=gen)

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return (1 - self.alpha) * x + self.alpha * self.pattern_.to(x.device, x.dtype)

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_built()
        return {"pattern": self.pattern_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.pattern_ = state["pattern"].float().cpu()
