"""MobileNetV2 for 32x32 inputs (kuangliu layout: ``conv1, bn1, layers, conv2, bn2, linear``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model

# (expansion, out_planes, num_blocks, stride); stride 1 in the first two stages for CIFAR
_CFG = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class Block(nn.Module):
    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False), nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2(nn.Module):
    def __init__(self, num_classes: int = 10, width_mult: float = 1.0, in_chans: int = 3) -> None:
        super().__init__()

        def ch(c: int) -> int:
            return max(8, int(round(c * width_mult)))

        self.conv1 = nn.Conv2d(in_chans, ch(32), 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(ch(32))
        layers, in_planes = [], ch(32)
        for expansion, out, n, stride in _CFG:
            for s in [stride] + [1] * (n - 1):
                layers.append(Block(in_planes, ch(out), expansion, s))
                in_planes = ch(out)
        self.layers = nn.Sequential(*layers)
        self.num_features = ch(1280)
        self.conv2 = nn.Conv2d(in_planes, self.num_features, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.num_features)
        self.linear = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(F.relu(self.bn1(self.conv1(x))))
        return F.relu(self.bn2(self.conv2(out)))

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        return z if pre_logits else self.linear(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("mobilenetv2")
def mobilenetv2(num_classes: int = 10, width_mult: float = 1.0, in_chans: int = 3) -> MobileNetV2:
    return MobileNetV2(num_classes, width_mult, in_chans)
