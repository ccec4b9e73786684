"""Is one class an outlier among the model's own classes? The null is the other classes' values.

A backdoor's target is a shortcut, so a per-class statistic (how easily noise or an optimised input reaches the
class) should put it far above the model's other classes; a clean model has no such class. Comparing a model
with itself needs no reference models of the user's architecture.

:func:`max_class_pvalue` follows MM-BD (Wang et al., S&P 2024): fit a gamma distribution to the ``K - 1`` values
left after removing the largest, and take the chance that the largest of ``K`` draws from it is at least as
large as the observed maximum, ``1 - F(max)^K``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np

__all__ = ["fisher_pvalue", "max_class_pvalue", "mad_index"]


def max_class_pvalue(values: Sequence[float]) -> float:
    """P-value of the largest per-class value under a gamma null fitted to the others (MM-BD's rule)."""
    from scipy import stats

    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or len(v) < 3 or not np.isfinite(v).all():
        raise ValueError(f"need at least 3 finite per-class values, got {values!r}")
    i = int(v.argmax())
    rest = np.delete(v, i)
    if np.ptp(rest) <= 1e-12 * max(1.0, abs(rest).max()):  # a degenerate null: any larger value is an outlier
        return 1.0 if v[i] <= rest.max() else 0.0
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        a, loc, scale = stats.gamma.fit(rest)
        cdf = float(stats.gamma.cdf(v[i], a, loc=loc, scale=scale))
    if not math.isfinite(cdf):
        return 1.0
    return float(min(1.0, max(0.0, 1.0 - cdf ** len(v))))


def mad_index(values: Sequence[float]) -> float:
    """Anomaly index of the largest value: its distance from the median in units of 1.4826 x MAD."""
    v = np.asarray(values, dtype=np.float64)
    med = float(np.median(v))
    mad = 1.4826 * float(np.median(np.abs(v - med)))
    return float((v.max() - med) / max(mad, 1e-12))


def fisher_pvalue(pvalues: Sequence[float]) -> float:
    """Fisher's combination of independent p-values: ``P(chi2_{2n} >= -2 sum log p)``."""
    from scipy import stats

    p = np.clip(np.asarray(pvalues, dtype=np.float64), 1e-300, 1.0)
    return float(stats.chi2.sf(-2.0 * np.log(p).sum(), 2 * len(p)))
