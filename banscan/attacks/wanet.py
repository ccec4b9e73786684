"""WaNet: an imperceptible warping of the image, with noise-mode (cross) samples."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._utils import BanscanError
from . import register_attack
from ._base import Attack


@register_attack("wanet")
class WaNet(Attack):
    """Warping-based backdoor (dirty label, poisoned on the fly per batch).

    Reference: A. Nguyen, A. Tran, "WaNet -- Imperceptible Warping-based Backdoor Attack", ICLR 2021.

    Settings (the BAN code's, which are the paper's CIFAR-10 values): a random ``k x k`` = 4x4 control field
    normalised to mean absolute value 1, upsampled bicubically to the image size and scaled by ``s / H`` with
    ``s`` = 0.5 and ``grid_rescale`` = 1; in each training batch a fraction ``poison_rate`` = 0.1 is warped and
    relabelled, and ``cross_ratio`` = 2 times as many samples are warped with the field plus uniform noise of one
    pixel (noise mode) while keeping their labels. Target 0, all-to-one (all-to-all: ``y -> y+1 mod K``).
    The warping field is saved with the model.

    Args:
        target: target class.
        poison_rate: fraction of each training batch that is warped and relabelled.
        k: side of the random control field.
        s: warping strength.
        grid_rescale: scale of the grid (1 in the paper).
        cross_ratio: noise-mode samples per poisoned sample.
        mode: ``"all2one"`` or ``"all2all"``.
        seed: seed of the warping field.

    Shape:
        images ``(N, C, H, W)`` float in ``[0, 1]``.
    """

    modes = ("all2one", "all2all")
    reference = "Nguyen & Tran, WaNet, ICLR 2021"
    per_batch = True  # poisons a share of every batch, as its paper does

    def __init__(self, *, target: int = 0, poison_rate: float = 0.1, k: int = 4, s: float = 0.5,
                 grid_rescale: float = 1.0, cross_ratio: float = 2.0, mode: str = "all2one", seed: int = 0) -> None:
        self.target = target
        self.poison_rate = poison_rate
        self.k = k
        self.s = s
        self.grid_rescale = grid_rescale
        self.cross_ratio = cross_ratio
        self.mode = mode
        self.seed = seed

    def _check_params(self, num_classes: int) -> None:
        if not isinstance(self.k, int) or self.k < 2:
            raise BanscanError(f"wanet: k must be an integer >= 2, got {self.k!r}")
        if float(self.s) <= 0 or float(self.cross_ratio) < 0 or float(self.grid_rescale) <= 0:
            raise BanscanError("wanet: s and grid_rescale must be positive and cross_ratio non-negative")

    def _build(self, gen: torch.Generator) -> None:
        _, h, w = self.image_shape_
        if h != w:
            raise BanscanError(f"wanet: needs square images, got {h}x{w}")
        ins = torch.rand(1, 2, self.k, self.k, generator=gen) * 2 - 1
        ins = ins / ins.abs().mean()
        self.noise_grid_ = F.interpolate(ins, size=(h, w), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)

    def _grid(self, device: torch.device) -> torch.Tensor:
        h = self.image_shape_[1]
        lin = torch.linspace(-1, 1, h, device=device)
        xx, yy = torch.meshgrid(lin, lin, indexing="ij")
        identity = torch.stack((yy, xx), 2)[None]
        grid = identity + self.s * self.noise_grid_.to(device) / h
        return (grid * self.grid_rescale).clamp(-1, 1)

    def _warp(self, x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return F.grid_sample(x, grid.expand(x.shape[0], -1, -1, -1).to(x.dtype), align_corners=True)

    def _trigger(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return self._warp(x, self._grid(x.device))

    def poison_batch(self, x, y, idx, gen):  # type: ignore[override]
        self._check_built()
        n = x.shape[0]
        n_bd = int(n * self.poison_rate)
        n_cross = min(n - n_bd, int(n_bd * self.cross_ratio))
        if n_bd == 0 and n_cross == 0:
            return x, y
        h = self.image_shape_[1]
        grid = self._grid(x.device)
        x = x.clone()
        y = y.clone()
        if n_bd:
            x[:n_bd] = self._warp(x[:n_bd], grid)
            y[:n_bd] = self.target_labels(y[:n_bd])
        if n_cross:
            noise = (torch.rand(n_cross, h, h, 2, generator=gen) * 2 - 1).to(x.device) / h
            grid2 = (grid + noise).clamp(-1, 1)
            x[n_bd:n_bd + n_cross] = F.grid_sample(x[n_bd:n_bd + n_cross], grid2, align_corners=True)
        return x.clamp(0, 1), y

    def state_dict(self) -> dict[str, torch.Tensor]:
        self._check_built()
        return {"noise_grid": self.noise_grid_}

    def _load_state(self, state: dict[str, torch.Tensor]) -> None:
        self.noise_grid_ = state["noise_grid"].float().cpu()
