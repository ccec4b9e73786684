"""Benchmark harness: scan every model of a zoo with every detector, then score the detectors across models.

Everything after the scans (thresholds, metrics, the report) is computed from the records alone. Modules:
:mod:`.io` (the results folder and its records), :mod:`.metrics` (AUROC, DSR, bootstrap, clean-only
thresholds), :mod:`.runner` (the scans, sequential or on Ray), :mod:`.mitigate` (repairs of a zoo and their
records), :mod:`.report` (``report.md`` and ``report.html``).
"""

from __future__ import annotations

from .io import BenchRecord, load_records, read_jsonl
from .metrics import (auroc, average_precision, bootstrap_ci, compute_metrics, fit_thresholds, roc_points,
                      tpr_at_fpr)
from .mitigate import MitigationRecord, mitigate_zoo
from .report import mitigation_section, write_report
from .runner import BenchConfig, run_bench, scan_model

__all__ = ["BenchConfig", "run_bench", "scan_model", "read_jsonl", "load_records", "auroc", "average_precision",
           "roc_points", "tpr_at_fpr", "bootstrap_ci", "fit_thresholds", "compute_metrics", "mitigate_zoo",
           "MitigationRecord", "BenchRecord", "write_report", "mitigation_section"]
