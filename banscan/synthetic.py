"""Generated image-classification data: learnable in seconds on a CPU, no download needed.

Each class has a smooth random colour prototype; samples are the prototype, randomly shifted and
brightness-jittered, plus pixel noise. Used by the tests, the demo and the ``tiny`` zoo spec.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .data import ImageData

__all__ = ["make_synthetic"]


def make_synthetic(n: int = 2000, num_classes: int = 4, size: int = 16, seed: int = 0,
                   noise: float = 0.12, task_seed: int = 0) -> ImageData:
    """``n`` images of ``size x size`` RGB in ``num_classes`` balanced classes.

    ``task_seed`` fixes the class prototypes (the task); ``seed`` draws the samples, so a train and a test
    set of the same task differ only in ``seed``.
    """
    coarse = torch.rand(num_classes, 3, 4, 4, generator=torch.Generator().manual_seed(task_seed))
    g = torch.Generator().manual_seed(seed + 1_000_003)
    protos = F.interpolate(coarse, size=(size + 4, size + 4), mode="bilinear", align_corners=False)
    y = torch.arange(n) % num_classes
    y = y[torch.randperm(n, generator=g)]
    dy = torch.randint(0, 5, (n,), generator=g)
    dx = torch.randint(0, 5, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(size))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(size))[:, None, None, :]
    x = protos[y][torch.arange(n)[:, None, None, None], torch.arange(3)[None, :, None, None], rows, cols]
    x = x * (0.8 + 0.4 * torch.rand(n, 1, 1, 1, generator=g)) + noise * torch.randn(x.shape, generator=g)
    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageData(x8, y.long(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                     classes=tuple(f"class{i}" for i in range(num_classes)), source=f"synthetic(task_seed={task_seed}, seed={seed})")
