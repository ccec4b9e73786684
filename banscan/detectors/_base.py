"""One interface and one result type for every detector.

A detector is constructed with hyperparameters only; ``detect(model, data)`` works on a deep copy of the
model (the caller's model, its mode and hooks are never touched), splits the defender's clean data into a
disjoint optimisation and evaluation part, and returns a :class:`DetectionResult`. Higher scores mean more
suspicious; the verdict is ``score >= threshold``.
"""

from __future__ import annotations

import copy
import json
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import BanscanError, HyperParams, PhaseTimer, json_safe, resolve_device, versions
from ..data import ImageData
from ..models import SplitModel
from ..train import channels_last_ok

__all__ = ["Detector", "DetectionResult", "Evidence", "calibrate_threshold", "class_hist"]


def class_hist(pred: torch.Tensor, k: int) -> torch.Tensor:
    """Predictions per class (length ``k``), on the CPU."""
    return torch.bincount(pred.cpu(), minlength=k)


@dataclass(frozen=True)
class DetectionResult:
    """The outcome of one scan. JSON-safe except ``artifacts`` (tensors, saved with safetensors)."""

    schema_version: ClassVar[int] = 1
    detector: str
    verdict: str
    score: float
    threshold: float
    threshold_source: str
    target: int | None
    stats: dict[str, Any]
    timings: dict[str, float]
    seed: int
    config: dict[str, Any]
    versions: dict[str, str]
    device: str
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def is_backdoored(self) -> bool:
        return self.verdict == "backdoored"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("artifacts")
        d["schema_version"] = self.schema_version
        return json_safe(d)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DetectionResult:
        if d.get("schema_version") != cls.schema_version:
            raise BanscanError(f"result schema {d.get('schema_version')} is not {cls.schema_version}")
        kw = {k: v for k, v in d.items() if k != "schema_version"}
        return cls(**kw)

    def summary(self) -> str:
        tgt = "-" if self.target is None else str(self.target)
        return (f"{self.detector}: {self.verdict.upper()}  score={self.score:.4f}  threshold={self.threshold:.4f} "
                f"({self.threshold_source})  suspected target={tgt}  time={self.timings.get('total', 0):.1f}s")

    def save(self, out_dir: str | os.PathLike) -> Path:
        """Write ``result.json`` and, if any, ``artifacts.safetensors`` into ``out_dir``."""
        from safetensors.torch import save_file

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))
        if self.artifacts:
            save_file({k: v.detach().cpu().contiguous() for k, v in self.artifacts.items()},
                      str(out / "artifacts.safetensors"))
        return out


@dataclass
class Evidence:
    """What a detector's ``_detect`` returns: its score, target guess, statistics and tensors; ``threshold``
    (value, source) replaces :meth:`Detector.default_verdict_threshold` where the statistic's threshold depends on
    the data (e.g. BAN's class prior, which exists for some data sets only)."""

    score: float
    target: int | None
    stats: dict[str, Any] = field(default_factory=dict)
    artifacts: dict[str, torch.Tensor] = field(default_factory=dict)
    threshold: tuple[float, str] | None = None


def calibrate_threshold(clean_scores: list[float], fpr: float = 0.05) -> float:
    """Smallest threshold whose false-positive rate on ``clean_scores`` is at most ``fpr``.

    With ``k = floor(fpr * n)`` clean models allowed above it, the threshold sits just above the
    ``(k+1)``-th largest clean score.
    """
    if not clean_scores:
        raise BanscanError("calibration needs at least one score from a known-clean model")
    if not 0 <= fpr < 1:
        raise BanscanError(f"fpr must be in [0, 1), got {fpr}")
    s = sorted((float(v) for v in clean_scores), reverse=True)
    k = int(fpr * len(s) + 1e-9)
    return float(torch.nextafter(torch.tensor(s[k], dtype=torch.float64), torch.tensor(float("inf"),
                                                                                      dtype=torch.float64)))


class Detector(HyperParams, ABC):
    """Base class: validation, copying, splitting, timing and the verdict live here once.

    Subclasses define a keyword-only ``__init__`` that stores its arguments under the same names
    (including the common ones ``seed``, ``threshold``, ``n_opt``, ``n_eval``, ``batch_size``,
    ``split_layer``) and implement :meth:`_detect`.
    """

    name: ClassVar[str] = ""
    default_threshold: ClassVar[float] = 0.5
    threshold_source: ClassVar[str] = ""

    seed: int
    threshold: float | None
    n_opt: int
    n_eval: int
    batch_size: int
    split_layer: str | None

    def default_verdict_threshold(self) -> tuple[float, str]:
        """The threshold used when ``threshold`` is None, and where it comes from (may depend on the params)."""
        return self.default_threshold, self.threshold_source

    @abstractmethod
    def _detect(self, net: SplitModel, opt: ImageData, evl: ImageData, timer: PhaseTimer,
                gen: torch.Generator, device: torch.device) -> Evidence:
        """Compute the evidence on ``net`` (a private copy, eval mode, weights frozen)."""

    def prepare(self, model: nn.Module, data: ImageData, device: str | torch.device | None = None
                ) -> tuple[SplitModel, ImageData, ImageData, torch.device]:
        """Validate inputs; return a frozen private copy of the model and the seeded opt/eval split."""
        if not isinstance(model, nn.Module):
            raise BanscanError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(data, ImageData):
            raise BanscanError(f"data must be banscan.ImageData (see banscan.load_data), got {type(data).__name__}")
        dev = resolve_device(device, model)
        data.check()
        if len(data) <= self.n_opt:
            raise BanscanError(
                f"clean data has {len(data)} images; the detector needs more than n_opt={self.n_opt} "
                "(optimisation part) plus an evaluation part"
            )
        opt, evl = data.split(self.n_opt, self.n_eval, seed=self.seed)
        net = SplitModel(copy.deepcopy(model), data.mean, data.std, self.split_layer).to(dev).eval()
        net.requires_grad_(False)
        if channels_last_ok(net, dev):  # faster convolutions; the copy is private
            net.to(memory_format=torch.channels_last)
        x, _ = next(evl.batches(2, dev))
        k = net.probe(x, data.y)
        try:
            with torch.no_grad():
                net.head(net.features(x))
        except BanscanError:
            raise
        except Exception as e:
            raise BanscanError(f"the model's feature/head split failed ({type(e).__name__}: {e})") from None
        if data.classes and len(data.classes) != k:
            raise BanscanError(f"the data names {len(data.classes)} classes but the model has {k} outputs")
        return net, opt, evl, dev

    def detect(self, model: nn.Module, data: ImageData, device: str | torch.device | None = None
               ) -> DetectionResult:
        """Scan ``model`` with the defender's clean ``data``; the model is never modified."""
        net, opt, evl, dev = self.prepare(model, data, device)
        timer = PhaseTimer(dev)
        gen = torch.Generator().manual_seed(int(self.seed))
        ev = self._detect(net, opt, evl, timer, gen, dev)
        if self.threshold is None:
            thr, source = ev.threshold or self.default_verdict_threshold()
        else:
            thr, source = float(self.threshold), "user"
        return DetectionResult(
            detector=self.name,
            verdict="backdoored" if ev.score >= thr else "clean",
            score=float(ev.score),
            threshold=float(thr),
            threshold_source=source,
            target=ev.target,
            stats=json_safe(ev.stats),
            timings=timer.total(),
            seed=int(self.seed),
            config=json_safe({**self.get_params(), "n_opt_used": len(opt), "n_eval_used": len(evl),
                              "data_source": data.source, "mean": data.mean, "std": data.std,
                              "model_class": type(model).__name__}),
            versions=versions(),
            device=str(dev),
            artifacts=ev.artifacts,
        )
