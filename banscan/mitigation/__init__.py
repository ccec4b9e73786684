"""Backdoor removal: BAN's noise fine-tuning and baselines behind one interface and one command.

Adding a method: one module with ``@register_mitigation("name")`` on a :class:`Mitigation` subclass and one
import below. ``banscan mitigate`` and :func:`banscan.bench.mitigate_zoo` pick it up.
"""

from __future__ import annotations

from collections.abc import Callable

from .._utils import Registry
from ._base import Mitigation, MitigationResult

_REGISTRY = Registry("mitigation")


def register_mitigation(name: str) -> Callable[[type[Mitigation]], type[Mitigation]]:
    return _REGISTRY.register(name)


def list_mitigations() -> list[str]:
    return _REGISTRY.names()


def get_mitigation(name: str, **params) -> Mitigation:
    """Instantiate a registered mitigation by name with keyword hyperparameters (unknown ones are refused)."""
    return _REGISTRY.create(name, **params)


from .finetune import FineTune  # noqa: E402
from .ban_ft import BANFineTune, BANScanFineTune  # noqa: E402
from .anp import ANP  # noqa: E402
from .btidbf_u import BTIDBFUnlearn  # noqa: E402
from ._files import mitigate_file  # noqa: E402
from .evaluation import evaluate_mitigation, verify_repair  # noqa: E402

__all__ = ["ANP", "BANFineTune", "BANScanFineTune", "BTIDBFUnlearn", "FineTune", "Mitigation", "MitigationResult",
           "evaluate_mitigation", "get_mitigation", "list_mitigations", "mitigate_file",
           "register_mitigation", "verify_repair"]
