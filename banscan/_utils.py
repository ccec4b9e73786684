"""Small shared helpers: errors, versions, timing, progress bars, devices."""

from __future__ import annotations

import contextlib
import inspect
import os
import platform
import time
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import torch

__all__ = ["BanscanError", "HyperParams", "Registry", "eval_mode", "versions", "PhaseTimer", "progress",
           "progress_enabled", "resolve_device", "set_progress"]

T = TypeVar("T")
_PROGRESS = {"enabled": False}


class BanscanError(ValueError):
    """Bad input or configuration, with a message that says what was wrong and what was expected."""


class HyperParams:
    """Mixin for classes whose keyword-only ``__init__`` stores every argument under its own name
    (detectors, attacks, mitigations): parameters are read back by signature, and shown by ``repr``."""

    def get_params(self) -> dict[str, Any]:
        """The constructor's parameters, read back from the attributes of the same names."""
        sig = inspect.signature(type(self).__init__)
        return {k: getattr(self, k) for k in sig.parameters if k != "self"}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class Registry:
    """Algorithms of one kind by name (detectors, attacks, mitigations): ``@registry.register("name")`` on a
    :class:`HyperParams` class; :meth:`create` builds one and rejects unknown parameters, listing the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._classes: dict[str, type] = {}

    def register(self, name: str):
        def deco(cls: type) -> type:
            cls.name = name
            self._classes[name] = cls
            return cls
        return deco

    def names(self) -> list[str]:
        return sorted(self._classes)

    def __getitem__(self, name: str) -> type:
        if name not in self._classes:
            raise BanscanError(f"unknown {self.kind} {name!r}; expected one of {self.names()}")
        return self._classes[name]

    def create(self, name: str, **params: Any) -> Any:
        cls = self[name]
        valid = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
        unknown = sorted(k for k in params if k not in valid)
        if unknown:
            raise BanscanError(f"{self.kind} {name!r} does not take {unknown}; it takes {valid}")
        return cls(**params)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``model`` in eval mode inside the block; afterwards every submodule gets its own mode back (``train(mode)``
    on the root alone would overwrite the children's, e.g. of a wrapper around an eval-mode network)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def toml_loads(text: str) -> dict[str, Any]:
    """Parse TOML with the standard library (``tomli`` on Python 3.10); errors are ``ValueError``s."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads(text)


def write_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part; the
    temporary name is per process, so processes writing side by side (build shards) do not collide."""
    tmp = f"{os.fspath(path)}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    import numpy

    from . import __version__

    return {
        "banscan": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "cuda": str(torch.version.cuda) if torch.cuda.is_available() else "none",
        "cpu": torch.backends.cpu.get_cpu_capability(),  # the kernels used (e.g. AVX2, AVX512): results differ
    }


def resolve_device(device: str | torch.device | None, model: torch.nn.Module | None = None) -> torch.device:
    """``None`` means the model's device (CPU for a model without parameters)."""
    if device is not None:
        return torch.device(device)
    if model is not None:
        for p in model.parameters():
            return p.device
    return torch.device("cpu")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PhaseTimer:
    """Wall-clock time per named phase (synchronised on CUDA)."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.timings: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    def total(self) -> dict[str, float]:
        out = {k: round(v, 4) for k, v in self.timings.items()}
        out["total"] = round(sum(self.timings.values()), 4)
        return out


def set_progress(enabled: bool) -> None:
    """Turn progress bars on or off for long phases (the CLI turns them on)."""
    _PROGRESS["enabled"] = bool(enabled)


def progress_enabled() -> bool:
    """Whether progress bars are on (:func:`set_progress`)."""
    return _PROGRESS["enabled"]


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterable[T]:
    if not _PROGRESS["enabled"]:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True)


def json_safe(obj: Any) -> Any:
    """Convert tensors, tuples and numpy scalars to JSON-native values."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return json_safe(obj.tolist())
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    if isinstance(obj, float) and obj != obj:  # NaN is not valid JSON
        return None
    return obj
