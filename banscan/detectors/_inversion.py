"""Helpers shared by the trigger-inversion baselines (BTI-DBF, Neural Cleanse, FeatureRE).

**The generator.** BTI-DBF's and FeatureRE's official codes both build their input-space generator with the same
UNet class (a third-party 2D/3D U-Net, called as ``UNet(n_channels=3, num_classes=3, base_filter_num=32,
num_blocks=4)``). :class:`UNet` is our own implementation of that network as those calls configure it:

* ``n_blocks`` encoder levels of two (3x3 conv with bias, InstanceNorm with affine parameters, LeakyReLU
  slope 0.01), widths ``base_filters * 2**i`` capped at 512, each followed by a 2x2 max-pool (so 32x32 inputs
  reach a 2x2 bottleneck with 4 levels);
* a bottleneck of the same two-conv form at twice the last width;
* ``n_blocks`` decoder levels: a 3x3 transposed convolution of stride 2 that keeps its channel count, a
  LeakyReLU, concatenation with the encoder output of that level, then the two-conv block down to its width;
* a 1x1 output convolution, no output activation. With 3 channels, 32 filters and 4 levels: 10,987,011
  parameters.

The official class also builds a bilinear-upsampling branch per decoder level that its forward pass never uses
(``interpolate=False``): 3,134,400 more parameters that receive no gradient, so we leave them out (its
``parameters()`` count is 14,121,411). Departures, both where the official network cannot run: inputs whose
sides are not a multiple of ``2**n_blocks``, or too small to keep a bottleneck of at least 2x2 (instance
normalisation needs more than one value per channel), are padded by edge replication to the next size that
works and the output is cropped back; the official code fails on them. ``residual=True`` (not official) returns
``x + UNet(x)`` with a zero-initialised output layer, so the map starts at the identity (for short runs and tests).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import BanscanError
from ..data import ImageData
from ..models import SplitModel
from ..train import autocast, train_batches

__all__ = ["UNet", "seeded_unet", "BatchStream", "Normalizer", "autocast", "unit_tanh",
           "clean_features", "transfer_asr", "private_copy"]

MAX_WIDTH = 512  # the official network caps its encoder widths at 512


class ConvPair(nn.Module):
    """Two rounds of 3x3 convolution (with bias), InstanceNorm (affine) and LeakyReLU (slope 0.01)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.InstanceNorm2d(c_out, affine=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.InstanceNorm2d(c_out, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(self.conv1(x)))
        return F.leaky_relu(self.norm2(self.conv2(x)))


class UpBlock(nn.Module):
    """Transposed 3x3 convolution of stride 2 (channels kept), LeakyReLU, concatenation with the skip
    connection, then a :class:`ConvPair` down to ``c_out`` channels."""

    def __init__(self, c_in: int, c_skip: int, c_out: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(c_in, c_in, 3, stride=2, padding=1, output_padding=1)
        self.block = ConvPair(c_in + c_skip, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.block(torch.cat([F.leaky_relu(self.up(x)), skip], dim=1))


class UNet(nn.Module):
    """The official BTI-DBF/FeatureRE generator architecture (see the module docstring).

    Args:
        channels: image channels (input and output).
        base_filters: width of the first level (official 32); level ``i`` has ``min(base_filters * 2**i, 512)``.
        n_blocks: encoder and decoder levels (official 4).
        residual: ``x + UNet(x)`` starting at the identity (not official).

    Shape:
        x: ``(N, channels, H, W)`` float (any range); output: the same shape.
    """

    def __init__(self, channels: int = 3, base_filters: int = 32, n_blocks: int = 4, residual: bool = False) -> None:
        super().__init__()
        if n_blocks < 1 or base_filters < 1 or channels < 1:
            raise BanscanError(f"UNet needs channels, n_blocks and base_filters >= 1, got {channels}, {n_blocks}, "
                               f"{base_filters}")
        self.residual = residual
        self.n_blocks = n_blocks
        widths = [min(base_filters * 2 ** i, MAX_WIDTH) for i in range(n_blocks)]
        self.enc = nn.ModuleList(ConvPair(c_in, c_out) for c_in, c_out in zip([channels] + widths[:-1], widths))
        self.bottleneck = ConvPair(widths[-1], 2 * widths[-1])
        ins = [2 * widths[-1]] + widths[::-1][:-1]
        self.dec = nn.ModuleList(UpBlock(c_in, w, w) for c_in, w in zip(ins, widths[::-1]))
        self.out = nn.Conv2d(widths[0], channels, 1)
        if residual:  # start at the identity map: x + 0
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)

    def padded_size(self, n: int) -> int:
        """The smallest side ``>= n`` that the network runs on: a multiple of ``2**n_blocks`` with a bottleneck
        of at least 2."""
        step = 2 ** self.n_blocks
        return max(2 * step, -(-n // step) * step)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = self.padded_size(h) - h, self.padded_size(w) - w
        z = F.pad(x, (0, pw, 0, ph), mode="replicate") if ph or pw else x
        skips = []
        for block in self.enc:
            z = block(z)
            skips.append(z)
            z = F.max_pool2d(z, 2)
        z = self.bottleneck(z)
        for block in self.dec:
            z = block(z, skips.pop())
        z = self.out(z)[..., :h, :w]
        return x + z if self.residual else z


def seeded_unet(gen: torch.Generator, channels: int, base_filters: int, n_blocks: int,
                device: torch.device, residual: bool = False) -> UNet:
    """A UNet whose initial weights depend only on ``gen`` (the global RNG state is restored afterwards)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = UNet(channels, base_filters, n_blocks, residual)
    return net.to(device)


class BatchStream:
    """Training batches drawn epoch by epoch: ``epoch(None)`` is one shuffled pass over ``data`` (as a data
    loader gives); ``epoch(n)`` is the next ``n`` batches of an endless sequence of shuffled passes, the way
    Neural Cleanse's original code draws a fixed number of mini-batches per epoch from a cycling generator."""

    def __init__(self, data: ImageData, batch_size: int, device: torch.device, gen: torch.Generator,
                 augmented: bool) -> None:
        self.data, self.batch_size, self.device, self.gen, self.augmented = data, batch_size, device, gen, augmented
        self._left: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _pass(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        # zero padding of 1/8 of the image size, as the official loaders
        pad = max(1, self.data.x.shape[-1] // 8) if self.augmented else 0
        return list(train_batches(self.data, self.batch_size, self.gen, self.device, pad, self.augmented))

    def epoch(self, n_batches: int | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if n_batches is None:
            return self._pass()
        out = []
        while len(out) < n_batches:
            if not self._left:
                self._left = self._pass()
            out.append(self._left.pop(0))
        return out


def private_copy(net: SplitModel) -> SplitModel:
    """A deep copy of ``net`` whose feature/head split is rebuilt on the copy (so nothing points back)."""
    c = copy.deepcopy(net)
    c._split = None
    return c


class Normalizer:
    """Move images between ``[0, 1]`` and the model's normalised input space (where the official codes
    run their generators and measure their input-space distances)."""

    def __init__(self, net: SplitModel) -> None:
        self.mean, self.std = net.mean, net.std

    def norm(self, x01: torch.Tensor) -> torch.Tensor:
        return (x01 - self.mean) / self.std

    def denorm(self, xn: torch.Tensor) -> torch.Tensor:
        return xn * self.std + self.mean


TANH_EPS = 1e-7


def unit_tanh(theta: torch.Tensor) -> torch.Tensor:
    """``tanh(theta) / (2 + 1e-7) + 0.5``: the official codes' map of a free parameter into ``(0, 1)``."""
    return torch.tanh(theta) / (2 + TANH_EPS) + 0.5


@torch.no_grad()
def clean_features(net: SplitModel, data: ImageData, batch_size: int, device: torch.device,
                   amp: bool | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Features ``h(x)`` (float32) and labels of every image of ``data``, in order."""
    zs, ys = [], []
    with autocast(amp, device):
        for x, y in data.batches(batch_size, device):
            zs.append(net.features(x).float())
            ys.append(y)
    return torch.cat(zs), torch.cat(ys)


@torch.no_grad()
def transfer_asr(net: SplitModel, data: ImageData, transform, target: int, batch_size: int,
                 device: torch.device, amp: bool | None) -> tuple[float, tuple[torch.Tensor, torch.Tensor] | None]:
    """Share of ``data``'s images not of class ``target`` that ``net`` sends to ``target`` after ``transform``
    (images in ``[0, 1]`` to images in ``[0, 1]``), and the first batch's (up to 8) sources and outputs."""
    hits = n = 0
    examples = None
    with autocast(amp, device):
        for x, y in data.batches(batch_size, device):
            x = x[y != target]
            if len(x) == 0:
                continue
            xt = transform(x)
            hits += int((net(xt).argmax(1) == target).sum())
            n += len(x)
            if examples is None:
                examples = (x[:8].cpu(), xt[:8].float().cpu())
    return hits / max(1, n), examples
