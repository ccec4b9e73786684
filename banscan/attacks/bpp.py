"""BppAttack: colour-depth squeezing as the trigger, with negative (contrastive) samples."""

from __future__ import annotations

import torch

from .._utils import BanscanError
from . import register_attack
from ._base import Attack


def squeeze(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Quantise each channel of images in ``[0, 1]`` to ``levels`` evenly spaced values."""
    return torch.round(x * (levels - 1)) / (levels - 1)


def dither(x: torch.Tensor, levels: int) -> torch.Tensor:
    """Floyd-Steinberg error-diffusion quantisation to ``levels`` values (batched over images and channels)."""
    out = x.clone().float()
    _, _, h, w = out.shape
    for i in range(h):
        for j in range(w):
            old = out[:, :, i, j]
            new = squeeze(old.clamp(0, 1), levels)
            err = old - new
            out[:, :, i, j] = new
            if j + 1 < w:
                out[:, :, i, j + 1] += err * 7 / 16
            if i + 1 < h:
                if j > 0:
                    out[:, :, i + 1, j - 1] += err * 3 / 16
                out[:, :, i + 1, j] += err * 5 / 16
                if j + 1 < w:
                    out[:, :, i + 1, j + 1] += err * 1 / 16
    return out.clamp(0, 1).to(x.dtype)


@register_attack("bpp")
class Bpp(Attack):
    """BppAttack: image quantisation (bit-depth reduction) as an invisible trigger (dirty label).

    Reference: Z. Wang, J. Zhai, S. Ma, "BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural
    Networks via Image Quantization and Contrastive Adversarial Learning", CVPR 2022.

    Settings (the BAN code's): ``squeeze_num`` = 8 colour levels per channel, no dithering, in each training
    batch a fraction ``poison_rate`` (injection rate) = 0.2 is squeezed and relabelled, and a fraction
    ``neg_rate`` = 0.2 become negative samples that keep their labels: clean images plus the quantisation
    residual of *other* images, so that only the exact colour squeezing, not any small perturbation, triggers
    the backdoor. (The paper builds its negatives by an adversarial search; shuffled residuals are the cheap
    contrastive substitute used here.) Target 0, all-to-one (all-to-all: ``y -> y+1 mod K``).

    Args:
        target: target class.
        poison_rate: fraction of each training batch squeezed and relabelled.
        neg_rate: fraction of each training batch used as negative samples.
        squeeze_num: number of colour levels per channel.
        dithering: use Floyd-Steinberg dithering (slow: a Python loop over pixels).
        mode: ``"all2one"`` or ``"all2all"``.
        seed: unused by the trigger (it is deterministic); kept for the card.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    modes = ("all2one", "all2all")
    reference = "Wang et al., BppAttack, CVPR 2022"
    per_batch = True  # poisons a share of every batch, as its paper does

    def __init__(self, *, target: int = 0, poison_rate: float = 0.2, neg_rate: float = 0.2, squeeze_num: int = 8,
                 dithering: bool = False, mode: str = "all2one", seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.neg_rate = neg_rate
        self.squeeze_num = squeeze_num
        self.dithering = dithering
        self.mode = mode
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not isinstance(self.squeeze_num, int) or not 2 <= self.squeeze_num <= 255:
            raise BanscanError(f"bpp: squeeze_num must be an integer in 2..255, got {self.squeeze_num!r}")
        if not 0 <= float(self.neg_rate) <= 1 or float(self.poison_rate) + float(self.neg_rate) > 1:
            raise BanscanError(f"bpp: need 0 <= neg_rate and poison_rate + neg_rate <= 1, got "
                               f"{self.poison_rate!r} + {self.neg_rate!r}")

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return dither(x, self.squeeze_num) if self.dithering else squeeze(x, self.squeeze_num)

    def poison_batch(self, x, y, idx, gen):  # type: ignore[override]
        self._check_built()
        n = x.shape[0]
        n_bd = int(n * self.poison_rate)
        n_neg = min(n - n_bd, int(n * self.neg_rate))
        x = x.clone()
        y = y.clone()
        if n_bd:
            x[:n_bd] = self._trigger(x[:n_bd], None)
            y[:n_bd] = self.target_labels(y[:n_bd])
        if n_neg > 1:
            # Clean images plus the quantisation residual of another image of the batch (never their own,
            # which would reproduce the real trigger).
            sl = slice(n_bd, n_bd + n_neg)
            residual = (self._trigger(x[sl], None) - x[sl]).roll(1, 0)
            x[sl] = (x[sl] + residual).clamp(0, 1)
        return x, y
