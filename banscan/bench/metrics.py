"""Benchmark metrics, plain functions of scores and labels: AUROC (rank based, ties count one half), average
precision, TPR at a false-positive budget, the BAN paper's detection success rate, the same with the target also
right, clean FPR, seeded bootstrap confidence intervals over models; and thresholds fitted on clean models only
(:func:`fit_thresholds`, leave-one-out by default), each clean model judged by a threshold it did not help fit."""

from __future__ import annotations

import logging
import math
import random
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._utils import BanscanError

log = logging.getLogger(__name__)


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
    from ..detectors import calibrate_threshold

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
