"""One interface and one result type for every mitigation (backdoor removal) method.

A mitigation is constructed with hyperparameters only (keyword-only, stored under their own names, validated
when it runs); ``repair(model, data)`` works on a deep copy of the model and returns a
:class:`MitigationResult` holding the repaired copy. The caller's model, its mode and its parameters are never
touched. ``data`` is the defender's clean data, used whole (hold out an evaluation part before calling).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from .._utils import BanscanError, HyperParams, PhaseTimer, json_safe, resolve_device, versions
from ..data import ImageData
from ..models import SplitModel

__all__ = ["Mitigation", "MitigationResult"]


@dataclass(frozen=True)
class MitigationResult:
    """The outcome of one repair. JSON-safe except ``model`` (the repaired copy, in eval mode)."""

    schema_version: ClassVar[int] = 1
    model: nn.Module
    method: str
    stats: dict[str, Any]
    timings: dict[str, float]
    seed: int
    config: dict[str, Any]
    versions: dict[str, str]
    device: str

    def to_dict(self) -> dict[str, Any]:
        d = {"method": self.method, "stats": self.stats, "timings": self.timings, "seed": self.seed,
             "config": self.config, "versions": self.versions, "device": self.device}
        d["schema_version"] = self.schema_version
        return json_safe(d)

    def summary(self) -> str:
        return f"{self.method}: repaired in {self.timings.get('total', 0):.1f}s on {self.device}"


class Mitigation(HyperParams, ABC):
    """Base class: validation, copying, timing and the result live here once.

    Subclasses define a keyword-only ``__init__`` that stores its arguments under the same names (including
    ``seed`` and ``batch_size``) and implement :meth:`_repair`, which changes its private copy in place.
    """

    name: ClassVar[str] = ""
    seed: int
    batch_size: int

    def _validate(self) -> None:
        """Check hyperparameters (called by :meth:`repair`); subclasses extend it."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise BanscanError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise BanscanError(f"batch_size must be an integer >= 2 (BatchNorm needs two images), got "
                               f"{self.batch_size!r}")

    @abstractmethod
    def _repair(self, net: SplitModel, data: ImageData, timer: PhaseTimer, gen: torch.Generator,
                device: torch.device) -> dict[str, Any]:
        """Repair ``net.model`` (a private copy on ``device``) in place; return JSON-safe statistics."""

    def prepare(self, model: nn.Module, data: ImageData, device: str | torch.device | None = None
                ) -> tuple[SplitModel, torch.device, int]:
        """Validate inputs; return a private trainable copy wrapped with normalisation, the device and K."""
        if not isinstance(model, nn.Module):
            raise BanscanError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(data, ImageData):
            raise BanscanError(f"data must be banscan.ImageData (see banscan.load_data), got {type(data).__name__}")
        self._validate()
        data.check()
        if len(data) < 16:
            raise BanscanError(f"clean data has only {len(data)} images; mitigation needs at least 16")
        dev = resolve_device(device, model)
        net = SplitModel(copy.deepcopy(model), data.mean, data.std).to(dev).eval()
        if not any(True for _ in net.model.parameters()):
            raise BanscanError(f"{type(model).__name__} has no parameters to repair")
        x, _ = next(data.batches(2, dev))
        k = net.probe(x, data.y)
        net.model.requires_grad_(True)
        return net, dev, k

    def repair(self, model: nn.Module, data: ImageData, device: str | torch.device | None = None
               ) -> MitigationResult:
        """Remove a backdoor from a copy of ``model`` using the defender's clean ``data``.

        The input model is never modified. The returned model has exactly the input's state-dict keys (no
        parametrisation leftovers), sits on ``device`` (default: the model's) and is in eval mode.
        """
        net, dev, k = self.prepare(model, data, device)
        keys = list(model.state_dict().keys())
        timer = PhaseTimer(dev)
        gen = torch.Generator().manual_seed(int(self.seed))
        stats = self._repair(net, data, timer, gen, dev)
        # Rebuild from a fresh copy so module structure and key order match the input exactly.
        sd = net.model.state_dict()
        if set(sd) != set(keys):
            raise BanscanError(f"{self.name}: the repaired state dict has different keys than the input "
                               f"(extra {sorted(set(sd) - set(keys))[:5]}, missing {sorted(set(keys) - set(sd))[:5]})")
        out = copy.deepcopy(model).to(dev)
        out.load_state_dict({k_: sd[k_] for k_ in keys}, strict=True)
        out.eval()
        bad = [n for n, p in out.state_dict().items() if p.is_floating_point() and not torch.isfinite(p).all()]
        if bad:
            raise BanscanError(f"{self.name}: repair diverged (non-finite values in {bad[:3]}); lower the learning "
                               "rate")
        return MitigationResult(
            model=out,
            method=self.name,
            stats=json_safe(stats),
            timings=timer.total(),
            seed=int(self.seed),
            config=json_safe({**self.get_params(), "n_images": len(data), "num_classes": k,
                              "data_source": data.source, "mean": data.mean, "std": data.std,
                              "model_class": type(model).__name__}),
            versions=versions(),
            device=str(dev),
        )


# ------------------------------------------------------------------ helpers shared by the fine-tuning methods
def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y)


def check_positive(name: str, value: Any, integer: bool = False, allow_zero: bool = False) -> None:
    ok_type = (isinstance(value, int) if integer else isinstance(value, (int, float))) and not isinstance(value, bool)
    if not ok_type or not (value >= 0 if allow_zero else value > 0):
        kind = "an integer" if integer else "a number"
        bound = ">= 0" if allow_zero else "> 0"
        raise BanscanError(f"{name} must be {kind} {bound}, got {value!r}")
