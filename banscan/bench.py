"""Benchmark harness: scan every model of a zoo with every detector, then score the detectors across models.

``banscan bench --zoo DIR --methods ban,nc --out RESULTS`` appends one JSON line per (model, method) to
``RESULTS/results.jsonl`` and never rescans a finished pair, so an interrupted run resumes where it stopped.
Everything after the scans (thresholds, metrics, the report) is computed from those lines alone:

* thresholds are fitted on known-clean models only (:func:`fit_thresholds`; leave-one-out by default), each
  clean model being judged by a threshold that it did not help to fit;
* metrics (:func:`compute_metrics`) are plain functions of scores and labels: AUROC (rank based, ties count one
  half), average precision, TPR at a false-positive budget, the BAN paper's detection success rate, the same
  with the target also right, clean FPR, and seeded bootstrap confidence intervals over models.

The report (``report.md`` and ``report.html``) lives in :mod:`banscan.bench_report`.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import importlib
import json
import logging
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._utils import BanscanError
from .params import reject_seed

log = logging.getLogger(__name__)

__all__ = ["BenchConfig", "run_bench", "read_jsonl", "load_records", "auroc", "average_precision", "roc_points",
           "tpr_at_fpr", "bootstrap_ci", "fit_thresholds", "compute_metrics"]

SCHEMA_VERSION = 1
RESULTS_NAME = "results.jsonl"
RUNS_NAME = "runs.jsonl"
MITIGATION_NAME = "mitigation.jsonl"


# ------------------------------------------------------------------------------------------- JSON Lines I/O
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


def _repair_tail(p: Path) -> None:
    """Make ``p`` end with a newline so that appends start a fresh line; drop a torn last line."""
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
        return
    with open(p, "ab") as f:
        f.write(b"\n")


def _append_jsonl(p: Path, rec: Mapping[str, Any]) -> None:
    line = json.dumps(rec, sort_keys=True, allow_nan=False) + "\n"
    with open(p, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


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


# ---------------------------------------------------------------------------------------------- metrics
def _check_scores(values: Iterable[float], what: str) -> list[float]:
    out = [float(v) for v in values]
    if any(not math.isfinite(v) for v in out):
        raise BanscanError(f"{what} holds a non-finite score")
    return out


def auroc(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """P(score of a random backdoored model > that of a random clean one), ties counting 1/2 (rank based)."""
    pos, neg = _check_scores(pos, "positives"), _check_scores(neg, "negatives")
    if not pos or not neg:
        return None
    allv = sorted([(v, 1) for v in pos] + [(v, 0) for v in neg])
    rank_sum, i = 0.0, 0
    while i < len(allv):
        j = i
        while j < len(allv) and allv[j][0] == allv[i][0]:
            j += 1
        mid_rank = (i + 1 + j) / 2  # average of the 1-based ranks i+1..j
        rank_sum += mid_rank * sum(lab for _, lab in allv[i:j])
        i = j
    n_pos, n_neg = len(pos), len(neg)
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _sweep(pos: Sequence[float], neg: Sequence[float]) -> list[tuple[int, int]]:
    """Cumulative (true positives, false positives) at each distinct threshold, from high to low score."""
    cp, cn = Counter(pos), Counter(neg)
    tp = fp = 0
    out = []
    for t in sorted(set(cp) | set(cn), reverse=True):
        tp += cp[t]
        fp += cn[t]
        out.append((tp, fp))
    return out


def roc_points(pos: Sequence[float], neg: Sequence[float]) -> list[tuple[float, float]]:
    """ROC curve as (FPR, TPR) points, from (0, 0) to (1, 1); tied scores form one step."""
    pos, neg = _check_scores(pos, "positives"), _check_scores(neg, "negatives")
    if not pos or not neg:
        return []
    return [(0.0, 0.0)] + [(fp / len(neg), tp / len(pos)) for tp, fp in _sweep(pos, neg)]


def average_precision(pos: Sequence[float], neg: Sequence[float]) -> float | None:
    """Area under the precision-recall step curve: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    pos, neg = _check_scores(pos, "positives"), _check_scores(neg, "negatives")
    if not pos:
        return None
    ap, prev_recall = 0.0, 0.0
    for tp, fp in _sweep(pos, neg):
        recall = tp / len(pos)
        ap += (recall - prev_recall) * tp / (tp + fp)
        prev_recall = recall
    return ap


def tpr_at_fpr(pos: Sequence[float], neg: Sequence[float], max_fpr: float = 0.05) -> float | None:
    """Highest TPR over ROC points whose FPR is at most ``max_fpr`` (an in-sample, oracle threshold)."""
    pts = roc_points(pos, neg)
    if not pts:
        return None
    return max(tpr for f, tpr in pts if f <= max_fpr + 1e-12)


def _quantile(sorted_vals: Sequence[float], q: float) -> float:
    pos = q * (len(sorted_vals) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


def bootstrap_ci(stat: Callable[..., float | None], groups: Sequence[Sequence[Any]], n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of ``stat(*groups)`` over resamples of the models, each group resampled on its own.

    Resampling per group (e.g. backdoored and clean models separately) keeps both classes in every resample.
    ``None`` when a group is empty or ``n_boot`` is 0.
    """
    if n_boot <= 0 or any(len(g) == 0 for g in groups):
        return None
    rng = random.Random(seed)
    vals = []
    for _ in range(n_boot):
        v = stat(*[[g[rng.randrange(len(g))] for _ in range(len(g))] for g in groups])
        if v is not None:
            vals.append(v)
    if not vals:
        return None
    vals.sort()
    a = (1 - level) / 2
    return _quantile(vals, a), _quantile(vals, 1 - a)


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


# ------------------------------------------------------------------------------------------- thresholds
@dataclass(frozen=True)
class ThresholdFit:
    """The threshold that judges one model, and the clean models that fitted it."""

    threshold: float
    fitted_on: tuple[str, ...]


@dataclass
class Calibration:
    """Per-model thresholds of one method; ``fit_only`` are clean models used for fitting and not evaluated."""

    scheme: str
    fpr: float
    per_model: dict[str, ThresholdFit] = field(default_factory=dict)
    fit_only: tuple[str, ...] = ()
    all_clean: ThresholdFit | None = None
    note: str = ""  # why there is no threshold (too few clean models), if so


def _parse_scheme(scheme: str) -> tuple[str, float]:
    name, _, arg = scheme.partition(":")
    try:
        if name == "loo" and not arg:
            return name, 0
        if name == "kfold":
            k = int(arg or 5)
            if k >= 2:
                return name, k
        if name == "holdout":
            f = float(arg or 0.5)
            if 0 < f < 1:
                return name, f
    except ValueError:
        pass
    raise BanscanError(f"calibration scheme {scheme!r} not understood; expected 'loo', 'kfold:K' (K >= 2) or "
                       "'holdout:F' (0 < F < 1, the share of clean models that fits the threshold)")


def fit_thresholds(clean: Mapping[str, float], backdoored: Iterable[str], fpr: float = 0.05, scheme: str = "loo",
                   seed: int = 0) -> Calibration:
    """Thresholds fitted on clean models only, for a false-positive budget ``fpr``.

    * ``loo``: each clean model is judged by a threshold fitted on all other clean models;
    * ``kfold:K``: clean models in K seeded folds, each fold judged by a threshold fitted on the other folds;
    * ``holdout:F``: a seeded share F of the clean models fits one threshold and is left out of the evaluation.

    Except under ``holdout``, backdoored models are judged by the threshold fitted on every clean model.
    """
    from .detectors import calibrate_threshold

    name, arg = _parse_scheme(scheme)
    ids = sorted(clean)
    need = {"loo": 2, "kfold": int(arg), "holdout": 2}[name]
    if len(ids) < need:
        raise BanscanError(f"calibration {scheme!r} needs at least {need} clean models with results; have {len(ids)}")

    def fit(on: Sequence[str]) -> ThresholdFit:
        return ThresholdFit(calibrate_threshold([clean[i] for i in on], fpr), tuple(on))

    cal = Calibration(scheme=scheme, fpr=fpr, all_clean=fit(ids))
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    if name == "holdout":
        n_fit = min(len(ids) - 1, max(1, round(arg * len(ids))))
        fitter = fit(sorted(shuffled[:n_fit]))
        cal.fit_only = fitter.fitted_on
        cal.per_model = {i: fitter for i in shuffled[n_fit:]}
        cal.per_model.update({b: fitter for b in backdoored})
        return cal
    folds = [[i] for i in ids] if name == "loo" else [shuffled[j::int(arg)] for j in range(int(arg))]
    for fold in folds:
        tf = fit([i for i in ids if i not in fold])
        cal.per_model.update({i: tf for i in fold})
    cal.per_model.update({b: cal.all_clean for b in backdoored})
    return cal


# ---------------------------------------------------------------------------------------------- metrics
def _rate(flags: Sequence[bool]) -> float | None:
    return sum(flags) / len(flags) if flags else None


def _with_ci(value: float | None, stat: Callable[..., float | None], groups: Sequence[Sequence[Any]],
             n_boot: int, seed: int) -> dict[str, Any]:
    return {"value": value, "ci": bootstrap_ci(stat, groups, n_boot, seed) if value is not None else None}


def _group_metrics(bd: list[dict], clean: list[dict], cal: Calibration, fpr: float, n_boot: int,
                   seed: int) -> dict[str, Any]:
    """Metrics of backdoored models ``bd`` against clean models ``clean`` (either list may be empty)."""
    def flagged(r: dict) -> bool:
        return r["score"] >= cal.per_model[r["model"]].threshold

    bd_eval = [r for r in bd if r["model"] in cal.per_model]
    cl_eval = [r for r in clean if r["model"] in cal.per_model]
    hit = [flagged(r) for r in bd_eval]
    with_target = [r for r in bd_eval if r.get("true_target") is not None]
    hit_t = [flagged(r) and r.get("target") == r["true_target"] for r in with_target]
    tgt = [r.get("target") == r["true_target"] for r in bd if r.get("true_target") is not None]
    false_pos = [flagged(r) for r in cl_eval]
    passed = [not f for f in false_pos]
    pos, neg = [r["score"] for r in bd], [r["score"] for r in clean]
    times = [r["timings"]["total"] for r in bd + clean]
    mean = _rate
    return {
        "n_backdoored": len(bd), "n_clean": len(clean), "n_eval": len(bd_eval) + len(cl_eval),
        "dsr": _with_ci(mean(hit), mean, [hit], n_boot, seed),
        "dsr_target": _with_ci(mean(hit_t), mean, [hit_t], n_boot, seed),
        "target_acc": _with_ci(mean(tgt), mean, [tgt], n_boot, seed),
        "clean_pass": _with_ci(mean(passed), mean, [passed], n_boot, seed),
        "clean_fpr": _with_ci(mean(false_pos), mean, [false_pos], n_boot, seed),
        "acc": mean(hit + passed),
        "dsr_default": mean([r["verdict"] == "backdoored" for r in bd]),
        "fpr_default": mean([r["verdict"] == "backdoored" for r in clean]),
        "auroc": _with_ci(auroc(pos, neg), auroc, [pos, neg], n_boot, seed),
        "aupr": average_precision(pos, neg) if neg else None,
        "tpr_at_fpr": tpr_at_fpr(pos, neg, fpr),
        "time_mean": _mean(times), "time_median": statistics.median(times) if times else None,
    }


def compute_metrics(records: Sequence[Mapping[str, Any]], fpr: float = 0.05, calibration: str = "loo",
                    seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Per method: thresholds fitted on clean models, then metrics overall and per attack.

    Returns ``{method: {"calibration": Calibration, "overall": {...}, "clean": {...}, "attacks": {name: {...}}}}``.
    Groups compare the backdoored models of one attack (or of all attacks) with every clean model; rates
    carry ``{"value", "ci"}`` with a bootstrap interval over models.
    """
    _parse_scheme(calibration)
    by_method: dict[str, list[dict]] = {}
    for r in records:
        if r.get("status") != "ok":
            continue
        if r.get("score") is None or not math.isfinite(r["score"]):
            log.warning("%s on %s has no finite score; left out of the metrics", r["method"], r["model"])
            continue
        by_method.setdefault(r["method"], []).append(dict(r))
    out: dict[str, Any] = {}
    for m, recs in sorted(by_method.items()):
        clean = [r for r in recs if not r["backdoored"]]
        bd = [r for r in recs if r["backdoored"]]
        try:
            cal = fit_thresholds({r["model"]: r["score"] for r in clean}, [r["model"] for r in bd], fpr,
                                 calibration, seed)
        except BanscanError as e:  # too few clean models so far: threshold-free metrics only
            cal = Calibration(scheme=calibration, fpr=fpr, note=str(e))
        attacks = sorted({str(r["attack"]) for r in bd})
        out[m] = {
            "calibration": cal,
            "overall": _group_metrics(bd, clean, cal, fpr, n_boot, seed),
            "clean": _group_metrics([], clean, cal, fpr, n_boot, seed),
            "attacks": {a: _group_metrics([r for r in bd if str(r["attack"]) == a], clean, cal, fpr, n_boot, seed)
                        for a in attacks},
        }
    return out


# ----------------------------------------------------------------------------------------------- runner
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
    from .detectors import get_detector, list_detectors

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

    from ._utils import resolve_device

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

    from ._utils import resolve_device
    from .models import SplitModel

    dev = resolve_device(device, model)
    net = SplitModel(copy.deepcopy(model), data.mean, data.std).to(dev)
    x, y = next(data.batches(min(16, len(data)), dev))
    torch.nn.functional.cross_entropy(net(x), y).backward()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def run_bench(cfg: BenchConfig, argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Scan every (model, method) pair of ``cfg`` not yet in ``cfg.out/results.jsonl``; returns counts."""
    from ._utils import json_safe

    dets = _detectors(cfg)
    zoo_mod = importlib.import_module("banscan.zoo")
    manifest, cards = _zoo_cards(zoo_mod, cfg)
    zoo_id = _zoo_id(manifest)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS_NAME
    _repair_tail(path)
    existing = read_jsonl(path)
    det_params = {m: json_safe(d.get_params()) for m, d in dets.items()}
    _check_consistent(existing, det_params, zoo_id, cfg.seed, path)
    done = {record_key(r) for r in existing if r.get("status") == "ok"}
    todo = [(c, m) for c in cards for m in cfg.methods if (c["id"], m) not in done]
    _append_jsonl(out / RUNS_NAME, {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "argv": list(argv or []),
        "commit": _git_commit(), "zoo": str(Path(cfg.zoo).resolve()), "zoo_id": zoo_id, "methods": list(cfg.methods),
        "params": det_params, "seed": cfg.seed, "device": cfg.device, "n_todo": len(todo),
        "n_done_before": len(cards) * len(cfg.methods) - len(todo)})
    log.info("%d of %d (model, method) pairs to scan", len(todo), len(cards) * len(cfg.methods))
    data = zoo_mod.defender_data(Path(cfg.zoo)) if todo else None
    counts = {"scanned": 0, "errors": 0, "skipped": len(cards) * len(cfg.methods) - len(todo)}
    started: set[str] = set()  # methods that ran in this process (a method's first scan carries start-up costs)
    for card in cards:
        pending = [m for c, m in todo if c is card]
        if not pending:
            continue
        t0 = time.perf_counter()
        model = zoo_mod.load_zoo_model(Path(cfg.zoo), card)
        load_s = time.perf_counter() - t0
        if not started:
            _warm_up(model, data, cfg.device)
        for m in pending:
            base = {"schema_version": SCHEMA_VERSION, "model": card["id"], "method": m, "seed": cfg.seed,
                    "zoo_id": zoo_id, "params": det_params[m], **_truth(card),
                    "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
            first = m not in started
            started.add(m)
            try:
                r, wall, mem, kind = _scan(dets[m], model, data, cfg.device)
            except BanscanError:
                raise  # bad input or configuration: it would fail the same way on every model
            except Exception as e:  # one broken scan must not end a long benchmark; it is recorded and retried
                log.error("%s on %s failed: %s: %s", m, card["id"], type(e).__name__, e)
                _append_jsonl(path, {**base, "status": "error", "error": f"{type(e).__name__}: {e}"})
                counts["errors"] += 1
                continue
            _append_jsonl(path, json_safe({
                **base, "status": "ok", "score": r.score, "verdict": r.verdict, "threshold": r.threshold,
                "threshold_source": r.threshold_source, "target": r.target, "timings": r.timings,
                "load_s": round(load_s, 4), "wall_s": round(wall, 4), "peak_mem_mb": round(mem, 2), "mem_kind": kind,
                "first_in_process": first, "device": r.device, "stats": r.stats, "versions": r.versions}))
            counts["scanned"] += 1
            log.info("%s %s: score %.4f target %s (%.1fs)", card["id"], m, r.score, r.target, wall)
    return counts
