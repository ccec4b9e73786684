"""The benchmark's results folder: file names, and its records read back (the JSON Lines themselves are written
and read by :mod:`banscan.jsonl`, the one implementation)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._utils import BanscanError
from ..jsonl import append_jsonl, read_jsonl, repair_tail

__all__ = ["RESULTS_NAME", "RUNS_NAME", "MITIGATION_NAME", "read_jsonl", "append_jsonl", "repair_tail",
           "record_key", "load_records"]

RESULTS_NAME = "results.jsonl"
RUNS_NAME = "runs.jsonl"
MITIGATION_NAME = "mitigation.jsonl"


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
