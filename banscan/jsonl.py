"""JSON Lines records: the one reader and appender every results file uses (bench, mitigation, runs).

An append is one ``write`` of a whole line followed by ``fsync``, so a record is on disk when the call returns. A
process killed mid-write leaves at most a torn last line: :func:`read_jsonl` ignores it, and :func:`repair_tail`
(called before the first append of a run) cuts it off so that new records never follow a broken one.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ._utils import BanscanError

__all__ = ["read_jsonl", "repair_tail", "append_jsonl", "check_schema"]
log = logging.getLogger(__name__)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a JSON Lines file; a torn (unparseable) last line is ignored, a bad earlier line is an error."""
    p = Path(path)
    if not p.exists():
        return []
    lines = p.read_text(encoding="utf-8").split("\n")
    out: list[dict[str, Any]] = []
    last = max((i for i, s in enumerate(lines) if s.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if i == last:
                log.warning("%s: ignoring a torn last line (%s)", p, e.msg)
                continue
            raise BanscanError(f"{p}, line {i + 1}: not a JSON record ({e.msg}); fix or delete that line") from None
        if not isinstance(rec, dict):
            raise BanscanError(f"{p}, line {i + 1}: expected a JSON object, got {type(rec).__name__}")
        out.append(rec)
    return out


def repair_tail(path: str | os.PathLike) -> None:
    """Make ``path`` end with a newline so that appends start a fresh line; drop a torn last line."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return
    raw = p.read_bytes()
    if raw.endswith(b"\n"):
        return
    cut = raw.rfind(b"\n") + 1
    try:
        json.loads(raw[cut:])
    except (json.JSONDecodeError, UnicodeDecodeError):
        log.warning("%s: dropping a torn last line left by an interrupted run", p)
        with open(p, "r+b") as f:
            f.truncate(cut)
            f.flush()
            os.fsync(f.fileno())
        return
    with open(p, "ab") as f:
        f.write(b"\n")
        f.flush()
        os.fsync(f.fileno())


def append_jsonl(path: str | os.PathLike, rec: Mapping[str, Any]) -> None:
    """Append one record as one line (sorted keys, no NaN) and ``fsync`` it."""
    line = json.dumps(rec, sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def check_schema(d: Mapping[str, Any], expected: int, what: str) -> None:
    """Refuse a record of another ``schema_version`` (records written before versioning carry none: version 1)."""
    version = d.get("schema_version", 1)
    if version != expected:
        raise BanscanError(f"{what}: schema_version {version!r}, expected {expected}")
