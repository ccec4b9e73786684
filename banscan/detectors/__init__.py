"""Detector registry. Adding a detector: one module with ``@register_detector("name")`` and one import below."""

from __future__ import annotations

from collections.abc import Callable

from .._utils import BanscanError
from ._base import DetectionResult, Detector, Evidence, calibrate_threshold

_REGISTRY: dict[str, type[Detector]] = {}


def register_detector(name: str) -> Callable[[type[Detector]], type[Detector]]:
    def deco(cls: type[Detector]) -> type[Detector]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_detectors() -> list[str]:
    return sorted(_REGISTRY)


def get_detector(name: str, **params) -> Detector:
    """Instantiate a registered detector by name with keyword hyperparameters."""
    if name not in _REGISTRY:
        raise BanscanError(f"unknown detector {name!r}; expected one of {list_detectors()}")
    try:
        return _REGISTRY[name](**params)
    except TypeError as e:
        raise BanscanError(f"bad parameters for detector {name!r}: {e}") from None


from .ban import BAN  # noqa: E402
from .btidbf import BTIDBF  # noqa: E402
from .featurere import FeatureRE  # noqa: E402
from .mmbd import MMBD  # noqa: E402
from .nc import NeuralCleanse  # noqa: E402

__all__ = ["BAN", "BTIDBF", "FeatureRE", "MMBD", "NeuralCleanse", "DetectionResult", "Detector", "Evidence",
           "calibrate_threshold", "get_detector", "list_detectors", "register_detector"]
