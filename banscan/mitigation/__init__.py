"""Backdoor removal: BAN's noise fine-tuning and baselines behind one interface and one command.

Adding a method: one module with ``@register_mitigation("name")`` on a :class:`Mitigation` subclass and one
import below. ``banscan mitigate`` and :func:`banscan.bench.mitigate_zoo` pick it up.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .._utils import BanscanError
from ._base import Mitigation, MitigationResult

_REGISTRY: dict[str, type[Mitigation]] = {}


def register_mitigation(name: str) -> Callable[[type[Mitigation]], type[Mitigation]]:
    def deco(cls: type[Mitigation]) -> type[Mitigation]:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_mitigations() -> list[str]:
    return sorted(_REGISTRY)


def get_mitigation(name: str, **params) -> Mitigation:
    """Instantiate a registered mitigation by name with keyword hyperparameters."""
    if name not in _REGISTRY:
        raise BanscanError(f"unknown mitigation {name!r}; expected one of {list_mitigations()}")
    cls = _REGISTRY[name]
    valid = [k for k in inspect.signature(cls.__init__).parameters if k != "self"]
    unknown = sorted(k for k in params if k not in valid)
    if unknown:
        raise BanscanError(f"mitigation {name!r} does not take {unknown}; it takes {valid}")
    return cls(**params)



from .finetune import FineTune  # noqa: E402
from .ban_ft import BANFineTune, BANScanFineTune  # noqa: E402
from .anp import ANP  # noqa: E402
from .btidbf_u import BTIDBFUnlearn  # noqa: E402
from ._files import mitigate_file  # noqa: E402
from .evaluation import evaluate_mitigation, verify_repair  # noqa: E402

__all__ = ["ANP", "BANFineTune", "BANScanFineTune", "BTIDBFUnlearn", "FineTune", "Mitigation", "MitigationResult",
           "evaluate_mitigation", "get_mitigation", "list_mitigations", "mitigate_file",
           "register_mitigation", "verify_repair"]
