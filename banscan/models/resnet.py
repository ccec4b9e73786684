"""CIFAR-style ResNets (3x3 stem, no max-pool) with the key layout of the BAN and BTI-DBF papers' code.

State-dict keys are ``conv1, bn1, layer1..4.N.{conv1,bn1,conv2,bn2,shortcut.0,shortcut.1}, linear``, so
checkpoints written by that code (and by the widely copied kuangliu/pytorch-cifar models) load unchanged.
``base_width`` is the channel count of the first stage (64 in the papers); smaller values give cheap CPU variants.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import register_model


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet for 32x32 inputs; ``forward_features`` stops before the global average pool."""

    def __init__(self, num_blocks: list[int], num_classes: int = 10, base_width: int = 64, in_chans: int = 3) -> None:
        super().__init__()
        w = base_width
        self.in_planes = w
        self.conv1 = nn.Conv2d(in_chans, w, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.layer1 = self._make_layer(w, num_blocks[0], 1)
        self.layer2 = self._make_layer(2 * w, num_blocks[1], 2)
        self.layer3 = self._make_layer(4 * w, num_blocks[2], 2)
        self.layer4 = self._make_layer(8 * w, num_blocks[3], 2)
        self.num_features = 8 * w
        self.linear = nn.Linear(8 * w, num_classes)

    def _make_layer(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = F.adaptive_avg_pool2d(z, 1).flatten(1)
        return z if pre_logits else self.linear(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("resnet18")
def resnet18(num_classes: int = 10, base_width: int = 64, in_chans: int = 3) -> ResNet:
    return ResNet([2, 2, 2, 2], num_classes, base_width, in_chans)


@register_model("resnet34")
def resnet34(num_classes: int = 10, base_width: int = 64, in_chans: int = 3) -> ResNet:
    return ResNet([3, 4, 6, 3], num_classes, base_width, in_chans)
