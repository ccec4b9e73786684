"""The benchmark runner: scan every model of a zoo with every detector, one JSON line per (model, method).

``banscan bench --zoo DIR --methods ban,nc --out RESULTS`` appends one record per (model, method) to
``RESULTS/results.jsonl`` and never rescans a finished pair, so an interrupted run resumes where it stopped. One
model's scans are one job, :func:`scan_model` (pure: card, weights and data in, records out), run here or as a Ray
task (``ray=``); either way only this process reads the zoo and writes the results.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import logging
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._utils import BanscanError
from ..params import reject_seed
from .io import (RESULTS_NAME, RUNS_NAME, BenchRecord, append_jsonl, check_same_weights, read_jsonl, record_key,
                 repair_tail, weights_sha256)

log = logging.getLogger(__name__)

SCHEMA_VERSION = BenchRecord.schema_version  # of results.jsonl lines; BenchRecord writes it


def _parse_method_params(text: str | Mapping[str, Any] | None, methods: Sequence[str],
                         flag: str = "--method-params") -> dict[str, dict[str, Any]]:
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        params = dict(text)
    else:
        src = text
        if not text.lstrip().startswith("{"):
            if not Path(text).is_file():
                raise BanscanError(f"{flag} {text!r} is neither a JSON object nor a JSON file")
            src = Path(text).read_text()
        try:
            params = json.loads(src)
        except json.JSONDecodeError as e:
            raise BanscanError(f"{flag} is not valid JSON ({e.msg} at position {e.pos}); expected e.g. "
                               '\'{"ban": {"n_steps": 5}}\'') from None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise BanscanError(f"{flag} must map each method to an object of parameters, "
                           'e.g. {"ban": {"eps": 0.3}}')
    extra = sorted(set(params) - set(methods))
    if extra:
        raise BanscanError(f"{flag} names {extra}, which are not among the methods {list(methods)}")
    for m, p in params.items():
        reject_seed(p, f"{flag} for {m!r}")
    return params


@dataclass(frozen=True)
class BenchConfig:
    """What to scan with what: a zoo, detectors (by registry name) and their parameters, one seed."""

    zoo: str
    methods: tuple[str, ...]
    out: str
    seed: int = 0
    device: str | None = None
    method_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    models: tuple[str, ...] | None = None


def _detectors(cfg: BenchConfig) -> dict[str, Any]:
    from ..detectors import get_detector, list_detectors

    if not cfg.methods:
        raise BanscanError(f"no methods given; expected a comma-separated list from {list_detectors()}")
    dup = sorted(m for m, c in Counter(cfg.methods).items() if c > 1)
    if dup:
        raise BanscanError(f"methods {dup} are listed twice")
    unknown = [m for m in cfg.methods if m not in list_detectors()]
    if unknown:
        raise BanscanError(f"unknown methods {unknown}; registered detectors are {list_detectors()}")
    params = _parse_method_params(dict(cfg.method_params), cfg.methods)
    return {m: get_detector(m, seed=cfg.seed, **params.get(m, {})) for m in cfg.methods}


def _zoo_cards(zoo_mod: Any, cfg: BenchConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    d = Path(cfg.zoo)
    if not (d / "manifest.json").is_file():
        raise BanscanError(f"{d}: no manifest.json; build a zoo first with `banscan zoo build SPEC --out {d}`")
    manifest = zoo_mod.load_manifest(d)
    cards = manifest.get("models")
    if not isinstance(cards, list):
        raise BanscanError(f"{d}/manifest.json has no 'models' list")
    for c in cards:
        missing = [k for k in ("id", "attack", "status") if k not in c]
        if missing:
            raise BanscanError(f"{d}/manifest.json: model card {c.get('id', '?')} lacks {missing}")
    failed = [c["id"] for c in cards if c["status"] != "ok"]
    if failed:
        log.warning("skipping %d model(s) that failed the zoo's quality gate: %s", len(failed), failed)
    ok = [c for c in cards if c["status"] == "ok"]
    if cfg.models is not None:
        unknown = sorted(set(cfg.models) - {c["id"] for c in cards})
        if unknown:
            raise BanscanError(f"--models names {unknown}, which are not in {d}/manifest.json")
        ok = [c for c in ok if c["id"] in cfg.models]
    if not ok:
        raise BanscanError(f"{d}: no model with status 'ok' to scan")
    return manifest, ok


def _zoo_id(manifest: Mapping[str, Any]) -> str:
    """Identifies the zoo's data and defender split (not its model list, which a later build may extend)."""
    ds = {k: v for k, v in (manifest.get("dataset") or {}).items() if k != "path"}  # the data may move
    text = json.dumps({"dataset": ds, "defender_split": manifest.get("defender_split")}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _check_consistent(existing: list[dict], det_params: Mapping[str, dict], zoo_id: str, seed: int,
                      path: Path) -> None:
    """Refuse to mix, in one results file, scans made with other parameters, seeds or zoos."""
    for r in existing:
        if r.get("status") != "ok" or r["method"] not in det_params:
            continue
        if r.get("zoo_id") != zoo_id:
            raise BanscanError(f"{path} holds results of another zoo (zoo_id {r.get('zoo_id')} != {zoo_id}); "
                               "use a new --out for this zoo")
        if r.get("seed") != seed:
            raise BanscanError(f"{path} holds {r['method']} results with seed {r.get('seed')}, not {seed}; use a "
                               "new --out or the same --seed")
        if r.get("params") != det_params[r["method"]]:
            old, new = r.get("params") or {}, det_params[r["method"]]
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise BanscanError(f"{path} holds {r['method']} results made with other parameters (differing: {diff}); "
                               "use a new --out or the same --method-params")


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux), so that ``ru_maxrss`` measures from now on."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _mem_begin(dev: Any) -> tuple[float, bool]:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        return 0.0, True
    reset = _reset_peak_rss()
    return _maxrss_mb(), reset


def _maxrss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def _mem_peak(dev: Any, base: float, reset: bool) -> tuple[float, str]:
    import torch

    if dev.type == "cuda":
        return torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    return max(0.0, _maxrss_mb() - base), "cpu_maxrss_delta" if reset else "cpu_maxrss_delta_monotone"


def _truth(card: Mapping[str, Any]) -> dict[str, Any]:
    return {"backdoored": card["attack"] is not None, "attack": card["attack"], "true_target": card.get("target"),
            "arch": card.get("arch"), "poison_rate": card.get("poison_rate"), "BA": card.get("BA"),
            "ASR": card.get("ASR")}


def _scan(det: Any, model: Any, data: Any, device: str | None) -> tuple[Any, float, float, str]:
    import torch

    from .._utils import resolve_device

    dev = resolve_device(device, model)
    base, reset = _mem_begin(dev)
    t0 = time.perf_counter()
    result = det.detect(model, data, device=device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    wall = time.perf_counter() - t0
    mem, kind = _mem_peak(dev, base, reset)
    return result, wall, mem, kind


def _warm_up(model: Any, data: Any, device: str | None) -> None:
    """One forward/backward pass on a copy, so that one-time start-up costs (thread pools, kernel choice, lazy
    initialisation) are not charged to the first timed scan."""
    import copy

    import torch

    from .._utils import resolve_device
    from ..models import SplitModel

    dev = resolve_device(device, model)
    net = SplitModel(copy.deepcopy(model), data.mean, data.std).to(dev)
    x, y = next(data.batches(min(16, len(data)), dev))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _scale_budgets(dets: dict[str, Any], n_images: int, explicit: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Detectors whose clean-data budget (``n_opt``) exceeds the defender split, rebuilt with half the split for
    optimisation and the rest for evaluation, with a warning; a budget the user set is left to fail clearly."""
    from ..detectors import get_detector

    out = {}
    for m, det in dets.items():
        n_opt = getattr(det, "n_opt", None)
        if n_opt is None or n_images > n_opt or "n_opt" in explicit.get(m, {}):
            out[m] = det
            continue
        params = {**det.get_params(), "n_opt": n_images // 2}
        if getattr(det, "n_eval", None) is not None and det.n_eval > n_images - n_images // 2:
            params["n_eval"] = n_images - n_images // 2
        log.warning("%s: the zoo's defender split has %d images, fewer than n_opt=%d; scanning with n_opt=%d, "
                    "n_eval=%s (set %s.n_opt to choose)", m, n_images, n_opt, params["n_opt"],
                    params.get("n_eval", det.n_eval), m)
        out[m] = get_detector(m, **params)
    return out


_STARTED: set[str] = set()  # methods that ran in this process (a Ray worker's): the first scan pays start-up costs


def scan_model(card: Mapping[str, Any], weights: Any, data: Any, detectors: Mapping[str, Any],
               methods: Sequence[str], base: Mapping[str, Any], device: str | None = None,
               started: set[str] | None = None) -> list[dict[str, Any]]:
    """Scan one zoo model with ``methods``: one record per method, ``status`` ``ok`` or ``error``.

    ``weights`` is the model's safetensors file or its bytes (a Ray task gets bytes); ``base`` holds the fields
    every record of this run carries (seed, zoo_id, ...); ``started`` the methods already run in this process.
    A :class:`BanscanError` (bad input or configuration) propagates: it would fail the same way on every model.
    """
    from .._utils import json_safe
    from ..zoo.store import model_from_card

    started = _STARTED if started is None else started
    t0 = time.perf_counter()
    sha = weights_sha256(weights)
    model = model_from_card(card, weights)
    load_s = time.perf_counter() - t0
    if not started:
        _warm_up(model, data, device)
    out = []
    for m in methods:
        rec = {**base, "model": card["id"], "method": m, "params": json_safe(detectors[m].get_params()),
               **_truth(card), "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
               "weights_sha256": sha}
        first = m not in started
        started.add(m)
        try:
            r, wall, mem, kind = _scan(detectors[m], model, data, device)
        except BanscanError:
            raise
        except Exception as e:  # one broken scan must not end a long benchmark; it is recorded and retried
            log.error("%s on %s failed: %s: %s", m, card["id"], type(e).__name__, e)
            out.append(BenchRecord(**rec, status="error", error=f"{type(e).__name__}: {e}").to_dict())
            continue
        out.append(BenchRecord(
            **rec, status="ok", score=r.score, verdict=r.verdict, threshold=r.threshold,
            threshold_source=r.threshold_source, target=r.target, timings=r.timings, load_s=round(load_s, 4),
            wall_s=round(wall, 4), peak_mem_mb=round(mem, 2), mem_kind=kind, first_in_process=first, device=r.device,
            stats=r.stats, versions=r.versions).to_dict())
        log.info("%s %s: score %.4f target %s (%.1fs)", card["id"], m, r.score, r.target, wall)
    return out


def _ray_scan(card: Mapping[str, Any], weights: bytes, methods: Sequence[str], data: Any,
              detectors: Mapping[str, Any], base: Mapping[str, Any], device: str | None) -> list[dict[str, Any]]:
    """One Ray task of a benchmark: :func:`scan_model` on the task's device (a GPU when it was given one)."""
    import torch

    if device is None and torch.cuda.is_available():
        device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU; without a GPU it hides them all
    return scan_model(card, weights, data, detectors, methods, base, device)


def run_bench(cfg: BenchConfig, argv: Sequence[str] | None = None, ray: Any = None) -> dict[str, Any]:
    """Scan every (model, method) pair of ``cfg`` not yet in ``cfg.out/results.jsonl``; returns counts.

    ``ray`` (a :class:`banscan.distributed.RayConfig`) runs each model's scans as one Ray task; the records are
    the same as without it for the same seed (the scans are deterministic given the seed and the device).
    """
    from .._utils import json_safe

    dets = _detectors(cfg)
    zoo_mod = importlib.import_module("banscan.zoo")
    manifest, cards = _zoo_cards(zoo_mod, cfg)
    n_def = (manifest.get("defender_split") or {}).get("size")
    if isinstance(n_def, int):
        dets = _scale_budgets(dets, n_def, _parse_method_params(dict(cfg.method_params), cfg.methods))
    zoo_id = _zoo_id(manifest)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    repair_tail(path)
    existing = read_jsonl(path)
    det_params = {m: json_safe(d.get_params()) for m, d in dets.items()}
    _check_consistent(existing, det_params, zoo_id, cfg.seed, path)
    check_same_weights({r["model"]: r.get("weights_sha256") for r in existing if r.get("status") == "ok"}, cards,
                       Path(cfg.zoo), path)
    done = {record_key(r) for r in existing if r.get("status") == "ok"}
    todo = [(c, [m for m in cfg.methods if (c["id"], m) not in done]) for c in cards]
    todo = [(c, ms) for c, ms in todo if ms]
    n_todo, n_all = sum(len(ms) for _, ms in todo), len(cards) * len(cfg.methods)
    append_jsonl(out / RUNS_NAME, {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "argv": list(argv or []),
        "commit": _git_commit(), "zoo": str(Path(cfg.zoo).resolve()), "zoo_id": zoo_id, "methods": list(cfg.methods),
        "params": det_params, "seed": cfg.seed, "device": cfg.device, "n_todo": n_todo,
        "n_done_before": n_all - n_todo, "ray": None if ray is None else str(getattr(ray, "address", None) or "local")})
    log.info("%d of %d (model, method) pairs to scan", n_todo, n_all)
    data = zoo_mod.defender_data(Path(cfg.zoo)) if todo else None
    counts = {"scanned": 0, "errors": 0, "skipped": n_all - n_todo}
    base = {"seed": cfg.seed, "zoo_id": zoo_id}  # BenchRecord writes the schema_version

    def write(_key: Any, recs: list[dict[str, Any]]) -> None:
        for rec in recs:
            append_jsonl(path, rec)
            counts["scanned" if rec["status"] == "ok" else "errors"] += 1

    if ray is None:
        started: set[str] = set()
        for card, methods in todo:
            write(card["id"], scan_model(card, Path(cfg.zoo) / card["file"], data, dets, methods, base, cfg.device,
                                         started))
        return counts
    _scan_on_ray(todo, Path(cfg.zoo), ray, write, base, det_params,
                 {"data": data, "detectors": dets, "base": base, "device": cfg.device})
    return counts


def _scan_on_ray(todo: list[tuple[dict[str, Any], list[str]]], zoo: Path, ray: Any, write: Any,
                 base: Mapping[str, Any], det_params: Mapping[str, Any], shared: Mapping[str, Any]) -> None:
    """Each model's scans as one Ray task; weights travel as bytes, read here lazily. A task that fails for good
    (after Ray's retries) leaves one ``error`` record per method, which the next run retries."""
    from ..distributed import run_tasks

    by_id = {c["id"]: (c, ms) for c, ms in todo}

    def jobs():  # read lazily: at most a few models' weights are in flight at a time
        for card, methods in todo:
            yield card["id"], {"card": card, "weights": (zoo / card["file"]).read_bytes(), "methods": methods}

    def failed(f: Any) -> None:
        card, methods = by_id[f.key]
        write(f.key, [BenchRecord(**base, model=f.key, method=m, params=det_params[m], **_truth(card),
                                  status="error", error=f"{f.kind}: {f.reason}").to_dict() for m in methods])

    run_tasks(_ray_scan, jobs(), ray, write, failed, total=len(todo), desc="bench", shared=shared)
