"""The benchmark's results folder: file names, and its records read back (the JSON Lines themselves are written
and read by :mod:`banscan.jsonl`, the one implementation)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

from .._utils import BanscanError
from ..jsonl import append_jsonl, check_schema, read_jsonl, repair_tail

__all__ = ["RESULTS_NAME", "RUNS_NAME", "MITIGATION_NAME", "BenchRecord", "read_jsonl", "append_jsonl",
           "repair_tail", "record_key", "load_records", "weights_sha256", "check_same_weights"]

RESULTS_NAME = "results.jsonl"
RUNS_NAME = "runs.jsonl"
MITIGATION_NAME = "mitigation.jsonl"


def weights_sha256(weights: str | os.PathLike | bytes) -> str:
    """SHA-256 of a model's weights (its file, or the file's bytes as a Ray task gets them)."""
    return hashlib.sha256(weights if isinstance(weights, bytes) else Path(weights).read_bytes()).hexdigest()


def check_same_weights(recorded: Mapping[str, str | None], cards: list[dict[str, Any]], zoo: Path, path: Path) -> None:
    """Refuse to resume over records (model id -> ``weights_sha256``) of a model whose weights file has changed
    since (a rebuilt model); records without a hash (older files) are not checked."""
    for card in cards:
        old = recorded.get(card["id"])
        if old and old != (now := weights_sha256(zoo / card["file"])):
            raise BanscanError(f"{path} holds results for {card['id']} made from other weights (sha256 {old[:12]}..., "
                               f"the file now {now[:12]}...): the model was rebuilt or replaced; use a new --out, or "
                               "remove its records to run it again")


_SCAN_FIELDS = ("score", "verdict", "threshold", "threshold_source", "target", "timings", "load_s", "wall_s",
                "peak_mem_mb", "mem_kind", "first_in_process", "device", "stats", "versions")


@dataclass(frozen=True)
class BenchRecord:
    """One (model, method) scan of ``results.jsonl``; JSON-safe and versioned like ``DetectionResult``.

    ``status`` is ``"ok"`` (the scan fields are set) or ``"error"`` (``error`` says why; the scan fields are left
    out of the line). The model's ground truth (``backdoored``, ``attack``, ``true_target``, ``arch``,
    ``poison_rate``, ``BA``, ``ASR``) comes from its zoo card; rates are fractions. ``weights_sha256`` is the
    SHA-256 of the weights file that was scanned: a resumed benchmark refuses to mix it with a rebuilt model's.
    """

    schema_version: ClassVar[int] = 1
    model: str
    method: str
    seed: int
    zoo_id: str
    params: dict[str, Any]
    backdoored: bool
    attack: str | None
    true_target: int | None
    arch: str | None
    poison_rate: float | None
    BA: float | None
    ASR: float | None
    status: str
    time: str | None = None
    weights_sha256: str | None = None
    error: str | None = None
    score: float | None = None
    verdict: str | None = None
    threshold: float | None = None
    threshold_source: str | None = None
    target: int | None = None
    timings: dict[str, float] = field(default_factory=dict)
    load_s: float | None = None
    wall_s: float | None = None
    peak_mem_mb: float | None = None
    mem_kind: str | None = None
    first_in_process: bool | None = None
    device: str | None = None
    stats: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        from .._utils import json_safe

        d = {**asdict(self), "schema_version": self.schema_version}
        drop = _SCAN_FIELDS if self.status != "ok" else ("error",)
        return json_safe({k: v for k, v in d.items()
                          if k not in drop and not (k in ("time", "weights_sha256") and v is None)})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> BenchRecord:
        check_schema(d, cls.schema_version, f"bench record {d.get('model', '?')}")
        missing = [k for k in ("model", "method", "status") if k not in d]
        if missing:
            raise BanscanError(f"bench record lacks {missing}; is this a banscan bench results file?")
        names = [f.name for f in fields(cls)]
        core = names[:names.index("status") + 1]  # the fields without a default
        return cls(**{k: d.get(k) for k in core}, **{k: d[k] for k in names[len(core):] if d.get(k) is not None})


def record_key(rec: Mapping[str, Any]) -> tuple[str, str]:
    return str(rec["model"]), str(rec["method"])


def load_records(results: str | os.PathLike, ok_only: bool = True) -> list[dict[str, Any]]:
    """The records of ``RESULTS/results.jsonl`` (or of that file itself), first finished record per key."""
    p = Path(results)
    p = p / RESULTS_NAME if p.is_dir() else p
    if not p.exists():
        raise BanscanError(f"{p} does not exist; run `banscan bench --zoo DIR --out RESULTS` first")
    seen: set[tuple[str, str]] = set()
    out = []
    for i, rec in enumerate(read_jsonl(p)):
        missing = [k for k in ("model", "method", "status") if k not in rec]
        if missing:
            raise BanscanError(f"{p}: record {i + 1} lacks {missing}; is this a banscan bench results file?")
        if ok_only and rec["status"] != "ok":
            continue
        if rec["status"] == "ok":
            if record_key(rec) in seen:
                continue
            seen.add(record_key(rec))
        out.append(rec)
    return out
