"""Pre-activation ResNet-18 in BackdoorBench's layout (``conv1, layer1..4, bn, linear``; blocks ``bn1, conv1,
bn2, conv2, shortcut.0``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model


class PreActBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        shortcut = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class PreActResNet(nn.Module):
    def __init__(self, num_blocks: list[int], num_classes: int = 10, base_width: int = 64, in_chans: int = 3) -> None:
        super().__init__()
        w = base_width
        self.in_planes = w
        self.conv1 = nn.Conv2d(in_chans, w, 3, 1, 1, bias=False)
        self.layer1 = self._make_layer(w, num_blocks[0], 1)
        self.layer2 = self._make_layer(2 * w, num_blocks[1], 2)
        self.layer3 = self._make_layer(4 * w, num_blocks[2], 2)
        self.layer4 = self._make_layer(8 * w, num_blocks[3], 2)
        self.bn = nn.BatchNorm2d(8 * w)
        self.num_features = 8 * w
        self.linear = nn.Linear(8 * w, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(PreActBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return F.relu(self.bn(out))

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        return z if pre_logits else self.linear(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("preact_resnet18")
def preact_resnet18(num_classes: int = 10, base_width: int = 64, in_chans: int = 3) -> PreActResNet:
    return PreActResNet([2, 2, 2, 2], num_classes, base_width, in_chans)
