"""A task function for the Ray tests: module-level, so Ray workers import it by name (the tests' Ray instance
ships this file to its workers, see ``ray_local`` in conftest.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from banscan._utils import BanscanError
from banscan.detectors import BAN


def work(x: int, mode: str = "ok", marker: str | None = None, offset: list[int] | None = None,
         sleep: float = 0.0) -> int:
    """``x + sum(offset)``, after ``sleep`` seconds; or, by ``mode``: kill the worker process (``die``), kill it on
    the first attempt only (``die_once``: ``marker`` is a file that says the first attempt happened), raise a
    :class:`BanscanError` (``bad``) or another error (``error``)."""
    time.sleep(sleep)
    if mode == "die" or (mode == "die_once" and not Path(marker).exists()):
        if marker is not None:
            Path(marker).write_text(str(os.getpid()))
        os._exit(1)
    if mode == "bad":
        raise BanscanError(f"bad input for job {x}")
    if mode == "error":
        raise KeyError(f"job {x} is broken")
    return x + sum(offset or [])



class DieOnceBAN(BAN):
    """BAN whose first scan (in any process) kills its worker; ``_marker`` (an instance attribute set by the test,
    not a constructor parameter, so the parameters and the records are BAN's) is a file that says it happened."""

    _marker = ""

    def detect(self, model, data, device=None):
        if self._marker and not Path(self._marker).exists():
            Path(self._marker).write_text(str(os.getpid()))
            os._exit(1)
        return super().detect(model, data, device=device)
