"""Small convolutional trigger generators shared by the dynamic attacks (IAD, SSDT)."""

from __future__ import annotations

import torch
from torch import nn


class TriggerGenerator(nn.Module):
    """Image-to-image encoder-decoder: ``(N, C, H, W)`` in ``[0, 1]`` to ``(N, out_channels, H, W)`` in ``[0, 1]``.

    No normalisation layers, so training and evaluation mode compute the same function.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 3, width: int = 16, bias: float = 0.0) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(2 * w, w, 3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(w, out_channels, 3, padding=1),
        )
        last = self.body[-1]
        assert isinstance(last, nn.Conv2d) and last.bias is not None
        nn.init.constant_(last.bias, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if out.shape[-2:] != x.shape[-2:]:
            out = nn.functional.interpolate(out, size=x.shape[-2:], mode="nearest")
        return torch.sigmoid(out)
