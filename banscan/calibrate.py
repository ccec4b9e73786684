"""Fit a detector's verdict threshold from known-clean models, for a chosen false-positive rate."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._utils import BanscanError, versions
from .checkpoints import load_weights
from .data import load_data
from .detectors import Detector, calibrate_threshold
from .detectors.ban import fit_class_prior
from .models import create_model, parse_kwargs

__all__ = ["calibrate_from_folder"]
_WEIGHT_EXT = {".safetensors", ".pt", ".pth", ".bin", ".ckpt"}


# Eleven arguments: the library form of `banscan calibrate`, one per option of that command (most keyword-only).
def calibrate_from_folder(models: str | os.PathLike, data: str | os.PathLike, detector: Detector, *,
                          fpr: float = 0.05, device: str | None = None, arch: str = "resnet18",
                          arch_kwargs: str = "", num_classes: int = 10, mean: Sequence[float] | None = None,
                          std: Sequence[float] | None = None, data_split: str = "test",
                          need_prior: bool = False) -> dict[str, Any]:
    """Scan every weight file in ``models`` (all known clean) and return the calibration record.

    The threshold is the smallest value that flags at most ``fpr`` of these clean models
    (:func:`banscan.detectors.calibrate_threshold`); the record lists every score it came from. For BAN's
    noise statistic with at least 3 models, ``record["class_prior"]`` is a class prior fitted on the same scans
    (:func:`banscan.detectors.ban.fit_class_prior`; ``banscan calibrate --prior-out``); ``need_prior`` refuses,
    before any scan, a folder or detector that cannot give one.
    """
    folder = Path(models)
    if not folder.is_dir():
        raise BanscanError(f"models folder not found: {folder}")
    files = sorted(f for f in folder.iterdir() if f.suffix in _WEIGHT_EXT)
    if not files:
        raise BanscanError(f"{folder} holds no weight files ({', '.join(sorted(_WEIGHT_EXT))})")
    fits_prior = getattr(detector, "statistic", None) == "noise"
    if need_prior and (not fits_prior or len(files) < 3):
        raise BanscanError(f"a class prior needs BAN's noise statistic and at least 3 clean models; got "
                           f"--method {detector.name} and {len(files)} weight files in {folder}")
    kw = {k: v for k, v in (("mean", mean), ("std", std)) if v is not None}
    clean = load_data(data, split=data_split, **kw)
    det = detector
    scores: dict[str, float] = {}
    hists = []
    t0 = time.perf_counter()
    for f in files:
        model = create_model(arch, num_classes, **parse_kwargs(arch_kwargs))
        load_weights(model, f)
        r = det.detect(model, clean, device=device)
        scores[f.name] = r.score
        if fits_prior and "hist_noise" in r.stats:
            hists.append(r.stats["hist_noise"])
    prior = fit_class_prior(hists, fpr, det, clean.classes) if len(hists) >= 3 else None
    return {
        "class_prior": prior,
        "method": det.name,
        "threshold": calibrate_threshold(list(scores.values()), fpr),
        "fpr": fpr,
        "n_models": len(scores),
        "scores": scores,
        "detector_params": det.get_params(),
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "data": str(data),
        "seed": det.seed,
        "time_s": round(time.perf_counter() - t0, 2),
        "versions": versions(),
    }
