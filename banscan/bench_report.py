"""Deprecated location, kept for one release: the report is :mod:`banscan.bench.report` (``from banscan.bench import
write_report``)."""

from __future__ import annotations

from .bench.report import Doc, mitigation_section, write_report

__all__ = ["Doc", "mitigation_section", "write_report"]
