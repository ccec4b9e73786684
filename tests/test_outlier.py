"""The per-class outlier rules (MM-BD's gamma p-value and the MAD anomaly index)."""

from __future__ import annotations

import numpy as np
import pytest

from banscan.detectors._outlier import mad_index, max_class_pvalue


def test_a_clear_outlier_gets_a_small_pvalue_and_a_typical_maximum_does_not():
    rng = np.random.default_rng(0)
    null = rng.gamma(4.0, 0.05, size=9)
    assert max_class_pvalue([*null, 0.2 + 10 * null.max()]) < 1e-3
    assert max_class_pvalue(rng.gamma(4.0, 0.05, size=10)) > 0.05
    # monotone: a larger maximum is more surprising
    assert max_class_pvalue([*null, 2 * null.max()]) > max_class_pvalue([*null, 4 * null.max()])


def test_degenerate_null_and_bad_input():
    assert max_class_pvalue([0.1, 0.1, 0.1, 0.5]) == 0.0
    assert max_class_pvalue([0.1, 0.1, 0.1, 0.1]) == 1.0
    with pytest.raises(ValueError, match="at least 3"):
        max_class_pvalue([0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        max_class_pvalue([0.1, 0.2, float("nan")])


def test_mad_index():
    assert mad_index([1, 2, 3, 4, 100]) == pytest.approx((100 - 3) / 1.4826)
    assert mad_index([1.0, 2.0, 3.0]) == pytest.approx(1 / 1.4826)
