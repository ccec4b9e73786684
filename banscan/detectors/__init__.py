"""Detector registry. Adding a detector: one module with ``@register_detector("name")`` and one import below."""

from __future__ import annotations

from collections.abc import Callable

from .._utils import Registry
from ._base import DetectionResult, Detector, Evidence, calibrate_threshold

_REGISTRY = Registry("detector")


def register_detector(name: str) -> Callable[[type[Detector]], type[Detector]]:
    return _REGISTRY.register(name)


def list_detectors() -> list[str]:
    return _REGISTRY.names()


def get_detector(name: str, **params) -> Detector:
    """Instantiate a registered detector by name with keyword hyperparameters (unknown ones are refused)."""
    return _REGISTRY.create(name, **params)


from .ban import BAN  # noqa: E402
from .btidbf import BTIDBF  # noqa: E402
from .featurere import FeatureRE  # noqa: E402
from .mmbd import MMBD  # noqa: E402
from .nc import NeuralCleanse  # noqa: E402

__all__ = ["BAN", "BTIDBF", "FeatureRE", "MMBD", "NeuralCleanse", "DetectionResult", "Detector", "Evidence",
           "calibrate_threshold", "get_detector", "list_detectors", "register_detector"]
