"""How well a mitigation worked: clean accuracy, attack success and robust accuracy, before and after
(measured by :func:`banscan.attacks.metrics.attack_metrics`, the one implementation), and a detector's verdict
before and after (:func:`verify_repair`). Repairing a whole zoo is :func:`banscan.bench.mitigate_zoo`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._utils import BanscanError, json_safe, resolve_device
from ..attacks.metrics import attack_metrics
from ..data import ImageData
from ..params import with_seed

log = logging.getLogger(__name__)


def evaluate_mitigation(model_before: nn.Module, model_after: nn.Module, test_data: ImageData, attack: Any = None,
                        device: str | torch.device | None = None, batch_size: int = 512) -> dict[str, Any]:
    """Clean accuracy before/after and, given the attack, ASR before/after and robust accuracy.

    Args:
        model_before, model_after: the backdoored and the repaired model (neither is modified).
        test_data: labelled clean test images.
        attack: an object with ``apply(x01, y) -> x01`` and ``target_labels(y)`` (e.g.
            ``banscan.attacks.attack_from_card``), or ``None`` for BA only.

    ASR is measured on the test images whose label the trigger changes (for an all-to-one attack, the
    non-target images): the share predicted as ``target_labels(y)``. Robust accuracy (RA) is the share of the
    same triggered images predicted as their true class. ``ASR_any`` is the attack success towards the class
    that collects most triggered images (per class ``c``: triggered images of other classes predicted ``c``, over
    triggered images of other classes), ``ASR_any_class`` that class: a repair that only moves the backdoor to
    another label (seen: plain fine-tuning of an IAD model sent every triggered image to class 7, ASR 0.000)
    keeps ``ASR_any`` high.
    """
    if not isinstance(test_data, ImageData):
        raise BanscanError(f"test_data must be banscan.ImageData, got {type(test_data).__name__}")
    if len(test_data) == 0:
        raise BanscanError("test_data is empty")
    if attack is not None and not (callable(getattr(attack, "apply", None))
                                   and callable(getattr(attack, "target_labels", None))):
        raise BanscanError(f"attack must have apply(x01, y) and target_labels(y); got {type(attack).__name__}")
    for name, m in (("model_before", model_before), ("model_after", model_after)):
        if not isinstance(m, nn.Module):
            raise BanscanError(f"{name} must be a torch.nn.Module, got {type(m).__name__}")
    out: dict[str, Any] = {}
    for tag, m in (("before", model_before), ("after", model_after)):
        r = attack_metrics(m, test_data, attack, resolve_device(device, m), batch_size)
        out[f"BA_{tag}"] = r["BA"]
        if attack is not None:
            out[f"ASR_{tag}"] = r["ASR"]
            out[f"RA_{tag}"] = r["RA"]
            out[f"ASR_any_{tag}"] = r["ASR_any"]
            out[f"ASR_any_class_{tag}"] = r["ASR_any_class"]
            out["n_triggered"] = r["n_triggered"]
        out["n_test"] = r["n_test"]
    return out


_SAME_FAMILY = {"ban": ("ban", "ban_scan")}  # detector -> repairs trained against exactly what it measures


# Nine arguments: the two models, the data, the detector and its parameters, the repair it judges, seed, device
# and an earlier scan to reuse; each is a separate fact of the check.
def verify_repair(model_before: nn.Module, model_after: nn.Module, data: ImageData, detector: str = "nc",
                  params: Mapping[str, Any] | None = None, method: str | None = None, seed: int = 0,
                  device: str | torch.device | None = None, before: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """Scan the model before and after a repair with one detector on the same clean data.

    A user without the trigger cannot measure ASR; this is the check left to them, and it is weak. The same class
    flagged before and after means the repair did not change what the detector sees: the backdoor survived, or the
    finding was a false alarm both times. A clean verdict after is not evidence: it says nothing when the detector
    missed the backdoor before, and on this repository's zoo Neural Cleanse and BAN passed all five backdoors that
    survived an aimed BAN repair (ASR 0.29-1.00) or named another class; NC's one "same class" finding was a
    false alarm (``benchmarks/RESULTS.md``). Use a detector independent of the repair: BAN fine-tuning trains the
    model to resist exactly the noise BAN's scan applies (measured on a BadNets model whose ASR stayed at 0.92:
    BAN's scan called it clean, Neural Cleanse still flagged its target). ``note`` says when the detector and the
    repair (``method``) are of one family, or the detector did not flag the model before.

    ``n_opt`` is lowered to half the images when ``data`` is too small for the detector's default. Returns
    ``{"detector", "params", "before": {...}, "after": {...}, "still_flagged", "note"}``, each side with the
    verdict, score, threshold, target and seconds; ``before`` (an earlier result's ``"before"``, same detector,
    parameters and data) skips the first scan.
    """
    from ..detectors import get_detector

    params = with_seed(params, seed, f"detector {detector!r}")
    det = get_detector(detector, **params)
    if "n_opt" not in params and len(data) <= det.n_opt:
        params["n_opt"] = len(data) // 2
        det = get_detector(detector, **params)
    out: dict[str, Any] = {"detector": detector, "params": json_safe(det.get_params())}
    for tag, m in (("before", model_before), ("after", model_after)):
        if tag == "before" and before is not None:
            out[tag] = dict(before)
            continue
        r = det.detect(m, data, device=device)
        out[tag] = {"verdict": r.verdict, "score": r.score, "threshold": r.threshold, "target": r.target,
                    "seconds": r.timings.get("total")}
    b, a = out["before"], out["after"]
    out["still_flagged"] = b["verdict"] == a["verdict"] == "backdoored" and b["target"] == a["target"]
    notes = []
    if method in _SAME_FAMILY.get(detector, ()):
        notes.append(f"not independent: {method} is trained against the {detector} scan's own noise, so passing "
                     "it is no evidence that the backdoor is gone")
    if b["verdict"] != "backdoored":
        notes.append(f"uninformative: {detector} did not flag the model before the repair either")
    out["note"] = "; ".join(notes) or None
    return out
