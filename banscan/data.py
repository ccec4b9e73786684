"""Clean image data: one uint8 tensor in memory, explicit normalisation, seeded stratified splits.

Formats: a CIFAR-10 ``cifar-10-batches-py`` folder, an ``.npz`` with ``x`` (N,H,W,C uint8) and ``y``, or an
image folder with one sub-folder per class (PNG/JPEG).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._utils import BanscanError

__all__ = ["ImageData", "load_data", "CIFAR10_MEAN", "CIFAR10_STD"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
_IMG_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".ppm"}


@dataclass(frozen=True)
class ImageData:
    """Labelled images held as one uint8 tensor.

    Shape:
        x: ``(N, C, H, W)`` uint8 in ``[0, 255]``; y: ``(N,)`` int64. Models see ``x / 255`` normalised
        with ``mean``/``std``.
    """

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple[float, ...] = CIFAR10_MEAN
    std: tuple[float, ...] = CIFAR10_STD
    classes: tuple[str, ...] | None = None
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.x, torch.Tensor) or self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise BanscanError(
                f"image data must be a uint8 tensor of shape (N, C, H, W); got "
                f"{getattr(self.x, 'dtype', type(self.x).__name__)} {tuple(getattr(self.x, 'shape', ()))}"
            )
        if self.y.dtype != torch.int64 or self.y.shape != (self.x.shape[0],):
            raise BanscanError(f"labels must be int64 of shape ({self.x.shape[0]},), got {self.y.dtype} "
                               f"{tuple(self.y.shape)}")
        c = self.x.shape[1]
        if len(self.mean) != c or len(self.std) != c:
            raise BanscanError(f"mean/std have {len(self.mean)}/{len(self.std)} values but images have {c} channels")
        if any(s <= 0 for s in self.std):
            raise BanscanError(f"std must be positive, got {self.std}")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.y.max().item()) + 1 if len(self) else 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def subset(self, idx: torch.Tensor | Sequence[int]) -> ImageData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return replace(self, x=self.x[idx], y=self.y[idx], meta=dict(self.meta))

    def to(self, device: torch.device | str) -> ImageData:
        return replace(self, x=self.x.to(device), y=self.y.to(device))

    def images(self, device: torch.device | str | None = None) -> torch.Tensor:
        """All images as float in ``[0, 1]``."""
        x = self.x if device is None else self.x.to(device, non_blocking=True)
        return x.float().div_(255)

    def batches(self, batch_size: int, device: torch.device | str = "cpu", shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield ``(x in [0,1] float, y)`` batches; the last one may be smaller."""
        n = len(self)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for i in range(0, n, batch_size):
            j = order[i:i + batch_size]
            yield self.x[j].to(device).float().div_(255), self.y[j].to(device)

    def check(self, num_classes: int | None = None, input_size: int | Sequence[int] | None = None,
              min_classes: int = 2) -> None:
        """Raise :class:`BanscanError` if this cannot serve as a defender's clean set."""
        if len(self) == 0:
            raise BanscanError(f"clean data {self.source or ''} is empty; expected labelled images")
        present = torch.unique(self.y)
        if len(present) < min_classes:
            raise BanscanError(
                f"clean data {self.source or ''} holds {len(present)} class(es) {present.tolist()}; at least "
                f"{min_classes} are needed to tell a backdoor's target from a class imbalance"
            )
        if int(self.y.min()) < 0 or (num_classes is not None and int(self.y.max()) >= num_classes):
            raise BanscanError(
                f"labels span {int(self.y.min())}..{int(self.y.max())} but the model has {num_classes} classes"
            )
        if input_size is not None:
            want = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
            if tuple(self.x.shape[2:]) != want:
                raise BanscanError(
                    f"images are {self.x.shape[2]}x{self.x.shape[3]} but the model expects {want[0]}x{want[1]} "
                    "(resize the data or set the input size)"
                )

    def split(self, n_first: int, n_second: int | None = None, seed: int = 0) -> tuple[ImageData, ImageData]:
        """Disjoint, stratified, seeded split into ``n_first`` and ``n_second`` (default: the rest) images."""
        n = len(self)
        if n_first <= 0 or n_first >= n:
            raise BanscanError(f"cannot take {n_first} of {n} images for the first part of a split")
        rest = n - n_first
        n_second = rest if n_second is None else min(n_second, rest)
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=gen)
        y = self.y[perm]
        classes = torch.unique(y)
        # Round-robin over classes in a seeded order gives stratified prefixes of any length.
        per_class = [perm[y == c] for c in classes]
        order = []
        longest = max(len(p) for p in per_class)
        for i in range(longest):
            for p in per_class:
                if i < len(p):
                    order.append(int(p[i]))
        order_t = torch.tensor(order)
        first = order_t[:n_first]
        second = order_t[n_first:n_first + n_second]
        return self.subset(first.sort().values), self.subset(second.sort().values)


class _SafeUnpickler(pickle.Unpickler):
    """Only the globals a CIFAR python batch needs (numpy arrays); anything else is refused."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"), ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise BanscanError(f"refusing to unpickle {module}.{name}: a CIFAR batch holds only arrays and lists")


def _load_cifar_batches(d: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for nm in names:
        f = d / nm
        if not f.is_file():
            raise BanscanError(f"{d} looks like a cifar-10-batches-py folder but has no {nm}")
        with open(f, "rb") as fh:
            try:
                obj = _SafeUnpickler(fh, encoding="bytes").load()
            except BanscanError:
                raise
            except Exception as e:
                raise BanscanError(f"{f}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None
        xs.append(np.asarray(obj[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(obj[b"labels"], dtype=np.int64))
    classes = None
    meta = d / "batches.meta"
    if meta.is_file():
        with open(meta, "rb") as fh:
            try:
                m = _SafeUnpickler(fh, encoding="bytes").load()
                classes = tuple(c.decode() for c in m[b"label_names"])
            except Exception:
                classes = None
    return np.concatenate(xs), np.concatenate(ys), classes


def _load_npz(p: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...] | None]:
    try:
        d = np.load(p, allow_pickle=False)
        keys = set(d.files)
    except Exception as e:
        raise BanscanError(f"{p}: not a readable .npz archive ({type(e).__name__}: {e})") from None
    if not {"x", "y"} <= keys:
        raise BanscanError(f"{p}: expected arrays 'x' (N,H,W,C uint8) and 'y' (N,), found {sorted(keys)}")
    try:
        x, y = d["x"], d["y"]
    except ValueError as e:
        raise BanscanError(f"{p}: arrays need pickle to load, which banscan refuses ({e})") from None
    if x.ndim != 4 or x.dtype != np.uint8:
        raise BanscanError(f"{p}: 'x' must be uint8 of shape (N, H, W, C), got {x.dtype} {x.shape}")
    if x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif x.shape[1] not in (1, 3):
        raise BanscanError(f"{p}: 'x' has shape {x.shape}; expected (N, H, W, C) with 1 or 3 channels")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise BanscanError(f"{p}: 'y' must be integer labels of shape ({x.shape[0]},), got {y.dtype} {y.shape}")
    classes = tuple(str(c) for c in d["classes"]) if "classes" in keys else None
    return np.ascontiguousarray(x), y.astype(np.int64), classes


def _load_folder(d: Path) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    from PIL import Image, UnidentifiedImageError

    class_dirs = sorted(p for p in d.iterdir() if p.is_dir())
    if not class_dirs:
        raise BanscanError(f"{d}: expected one sub-folder per class holding PNG/JPEG images, found none")
    xs, ys, size = [], [], None
    for label, cd in enumerate(class_dirs):
        for f in sorted(cd.iterdir()):
            if f.suffix.lower() not in _IMG_EXT:
                continue
            try:
                with Image.open(f) as im:
                    arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise BanscanError(f"{f}: not a readable image ({e})") from None
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise BanscanError(
                    f"{f} is {arr.shape[1]}x{arr.shape[0]} but earlier images are {size[1]}x{size[0]}; "
                    "all images must have the same size"
                )
            xs.append(arr)
            ys.append(label)
    if not xs:
        raise BanscanError(f"{d}: no PNG/JPEG images in its class sub-folders")
    return np.stack(xs).transpose(0, 3, 1, 2).copy(), np.asarray(ys, dtype=np.int64), tuple(c.name for c in class_dirs)


def load_data(path: str | os.PathLike, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
              split: str = "test") -> ImageData:
    """Load clean labelled images from an ``.npz``, a ``cifar-10-batches-py`` folder or a class folder.

    ``split`` ("train"/"test") selects the CIFAR batches; other formats load everything.
    """
    p = Path(path)
    if not p.exists():
        raise BanscanError(f"data path not found: {p}")
    if p.is_file():
        if p.suffix != ".npz":
            raise BanscanError(f"{p}: unsupported data file; expected an .npz, a cifar-10-batches-py folder "
                               "or an image folder with one sub-folder per class")
        x, y, classes = _load_npz(p)
    elif (p / "test_batch").is_file() or (p / "data_batch_1").is_file():
        if split not in ("train", "test"):
            raise BanscanError(f"split must be 'train' or 'test', got {split!r}")
        x, y, classes = _load_cifar_batches(p, split)
    else:
        x, y, classes = _load_folder(p)
    return ImageData(torch.from_numpy(x), torch.from_numpy(y), tuple(float(v) for v in mean),
                     tuple(float(v) for v in std), classes, str(p))
