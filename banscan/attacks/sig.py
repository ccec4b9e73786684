"""SIG: a sinusoidal signal added to target-class images, labels untouched (clean label)."""

from __future__ import annotations

import math

import torch

from .._utils import BanscanError
from . import register_attack
from ._base import Attack


@register_attack("sig")
class SIG(Attack):
    """Sinusoidal-signal clean-label attack.

    Reference: M. Barni, K. Kallas, B. Tondi, "A New Backdoor Attack in CNNs by Training Set Corruption Without
    Label Poisoning", ICIP 2019.

    Settings: horizontal sinusoid ``v(i, j) = delta * sin(2 pi j f / W)`` on every row and channel with
    ``delta`` = 20/255 and ``f`` = 6 (the paper's values), added to a fraction ``poison_rate`` of the
    *target-class* training images whose labels stay correct; at test time the same signal with
    ``test_delta`` (default equal to ``delta``) is added to non-target images.

    Args:
        target: target class.
        poison_rate: fraction of the target-class training images that carry the signal.
        delta: amplitude of the training signal (in ``[0, 1]`` units).
        freq: number of periods across the image width.
        test_delta: amplitude at test time (``None``: ``delta``).
        seed: seed of the poisoned-sample choice.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    clean_label = True
    reference = "Barni et al., SIG, ICIP 2019"

    def __init__(self, *, target: int = 0, poison_rate: float = 0.8, delta: float = 20 / 255, freq: float = 6.0,
                 test_delta: float | None = None, seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.delta = delta
        self.freq = freq
        self.test_delta = test_delta
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not 0.0 < float(self.delta) <= 1.0 or (self.test_delta is not None and not 0.0 < self.test_delta <= 1):
            raise BanscanError(f"sig: delta/test_delta must be in (0, 1], got {self.delta!r}/{self.test_delta!r}")
        if float(self.freq) <= 0:
            raise BanscanError(f"sig: freq must be positive, got {self.freq!r}")

    def _signal(self, x: torch.Tensor, delta: float) -> torch.Tensor:
        w = x.shape[-1]
        j = torch.arange(w, device=x.device, dtype=x.dtype)
        return delta * torch.sin(2 * math.pi * j * self.freq / w)  # broadcasts over (N, C, H, W)

    def _train_trigger(self, x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return x + self._signal(x, self.delta)

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        d = self.delta if self.test_delta is None else self.test_delta
        return x + self._signal(x, d)
