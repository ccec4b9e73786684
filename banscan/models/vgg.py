"""VGG-16 with BatchNorm in the CIFAR layout (``features`` then one ``classifier`` Linear)."""

from __future__ import annotations

import torch
from torch import nn

from . import register_model

_CFG16 = [1, 1, "M", 2, 2, "M", 4, 4, 4, "M", 8, 8, 8, "M", 8, 8, 8, "M"]


class VGG(nn.Module):
    def __init__(self, cfg: list, num_classes: int = 10, width: int = 64, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in cfg:
            if v == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, v * width, 3, padding=1), nn.BatchNorm2d(v * width), nn.ReLU(inplace=True)]
                c = v * width
        self.features = nn.Sequential(*layers)
        self.num_features = c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, z: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        z = torch.nn.functional.adaptive_avg_pool2d(z, 1).flatten(1)
        return z if pre_logits else self.classifier(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("vgg16_bn")
def vgg16_bn(num_classes: int = 10, width: int = 64, in_chans: int = 3) -> VGG:
    return VGG(_CFG16, num_classes, width, in_chans)
