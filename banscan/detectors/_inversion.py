"""Helpers shared by the trigger-inversion baselines (BTI-DBF, Neural Cleanse, FeatureRE).

A small UNet image-to-image generator: both official codes of BTI-DBF and FeatureRE use a UNet with 32 base filters and 4 resolution levels as the input-space transform;
this is our own compact version of that architecture (two 3x3 conv + BatchNorm + ReLU per level, max-pool
down, bilinear up with skip connections, 1x1 output conv, no output activation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import BanscanError
from ..data import ImageData
from ..models import SplitModel
from ..train import augment

__all__ = ["UNet", "seeded_unet", "train_batches", "Normalizer"]


def _double_conv(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """UNet with ``n_blocks`` resolution levels; level ``i`` has ``base_filters * 2**i`` channels.

    ``residual=True`` returns ``x + UNet(x)`` with a zero-initialised output layer, so the map starts at the
    identity (not in the official codes; it lets short runs skip most of the reconstruction pre-training).

    Shape:
        x: ``(N, channels, H, W)`` float (any range); output: the same shape. ``H`` and ``W`` need not be
        divisible by ``2 ** (n_blocks - 1)``: the upsampled maps are resized to their skip connection.
    """

    def __init__(self, channels: int = 3, base_filters: int = 32, n_blocks: int = 4, residual: bool = False) -> None:
        super().__init__()
        self.residual = residual
        if n_blocks < 1 or base_filters < 1:
            raise BanscanError(f"UNet needs n_blocks >= 1 and base_filters >= 1, got {n_blocks}, {base_filters}")
        widths = [base_filters * 2 ** i for i in range(n_blocks)]
        self.down = nn.ModuleList([_double_conv(channels, widths[0])])
        self.down.extend(_double_conv(widths[i - 1], widths[i]) for i in range(1, n_blocks))
        self.up = nn.ModuleList(_double_conv(widths[i] + widths[i - 1], widths[i - 1])
                                for i in range(n_blocks - 1, 0, -1))
        self.out = nn.Conv2d(widths[0], channels, 1)
        if residual:  # start at the identity map: x + 0
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.max_pool2d(h, 2) if min(h.shape[-2:]) >= 2 else h
            h = block(h)
            skips.append(h)
        skips.pop()
        for block in self.up:
            s = skips.pop()
            h = F.interpolate(h, size=s.shape[-2:], mode="bilinear", align_corners=False)
            h = block(torch.cat([h, s], dim=1))
        return x + self.out(h) if self.residual else self.out(h)


def seeded_unet(gen: torch.Generator, channels: int, base_filters: int, n_blocks: int,
                device: torch.device, residual: bool = False) -> UNet:
    """A UNet whose initial weights depend only on ``gen`` (the global RNG state is restored afterwards)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet(channels, base_filters, n_blocks, residual)
    return net.to(device)


def train_batches(data: ImageData, batch_size: int, device: torch.device, gen: torch.Generator,
                  augmented: bool) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One shuffled epoch of ``data`` in ``[0, 1]``, with the usual CIFAR augmentation if ``augmented``
    (random crop with 1/8-size zero padding and horizontal flip, as the official loaders do)."""
    pad = max(1, data.x.shape[-1] // 8)
    out = []
    for x, y in data.batches(batch_size, device, shuffle=True, generator=gen):
        if len(y) < 2 and out:  # a batch of one cannot be normalised by a generator's BatchNorm
            continue
        out.append((augment(x, gen, pad, True) if augmented else x, y))
    return out


class Normalizer:
    """Move images between ``[0, 1]`` and the model's normalised input space (where the official codes
    run their generators and measure their input-space distances)."""

    def __init__(self, net: SplitModel) -> None:
        self.mean, self.std = net.mean, net.std

    def norm(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def denorm(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean
