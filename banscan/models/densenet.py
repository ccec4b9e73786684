"""DenseNet-121 for 32x32 inputs (kuangliu layout: ``conv1, dense1..4, trans1..3, bn, linear``).

Unlike the BAN code's copy, ``num_classes`` is respected. ``forward_features`` ends after the final BN+ReLU
(timm's convention), so the head holds no normalisation layer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model


class Bottleneck(nn.Module):
    def __init__(self, in_planes: int, growth_rate: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNet(nn.Module):
    def __init__(self, nblocks: list[int], growth_rate: int = 32, reduction: float = 0.5, num_classes: int = 10,
                 in_chans: int = 3) -> None:
        super().__init__()
        g = growth_rate
        planes = 2 * g
        self.conv1 = nn.Conv2d(in_chans, planes, 3, padding=1, bias=False)
        for i, n in enumerate(nblocks):
            dense = nn.Sequential(*[Bottleneck(planes + j * g, g) for j in range(n)])
            planes += n * g
            setattr(self, f"dense{i + 1}", dense)
            if i < len(nblocks) - 1:
                out = int(math.floor(planes * reduction))
                setattr(self, f"trans{i + 1}", Transition(planes, out))
                planes = out
        self.bn = nn.BatchNorm2d(planes)
        self.num_features = planes
        self.linear = nn.Linear(planes, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        out = self.trans1(self.dense1(out))
        out = self.trans2(self.dense2(out))
        out = self.trans3(self.dense3(out))
        out = self.dense4(out)
        return F.relu(self.bn(out))

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        return z if pre_logits else self.linear(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("densenet121")
def densenet121(num_classes: int = 10, growth_rate: int = 32, in_chans: int = 3) -> DenseNet:
    return DenseNet([6, 12, 24, 16], growth_rate, 0.5, num_classes, in_chans)
