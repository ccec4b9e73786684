"""How well a mitigation worked: clean accuracy, attack success and robust accuracy, before and after.

``mitigate_zoo`` repairs every backdoored model of a zoo and appends one JSON line per (model, method) to
``RESULTS/mitigation.jsonl`` with exactly the fields ``model, method, attack, BA_before, BA_after, ASR_before,
ASR_after, RA_after, ASR_any_after, ASR_any_class_after, time_s, n_images, device, params, stats, timings,
versions, verify`` (rates are fractions in ``[0, 1]``; ``params`` are the mitigation's hyperparameters; ``verify``
is :func:`verify_repair`'s result or ``None``); ``banscan bench --mitigate`` merges that file into the benchmark
report.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..models import SplitModel
from .._utils import BanscanError, json_safe, resolve_device
from ..params import with_seed
from ..data import ImageData
from . import get_mitigation

log = logging.getLogger(__name__)

RECORD_FIELDS = ("model", "method", "attack", "BA_before", "BA_after", "ASR_before", "ASR_after", "RA_after",
                 "ASR_any_after", "ASR_any_class_after", "time_s", "n_images", "device", "params", "stats",
                 "timings", "versions", "verify")


@torch.no_grad()
def _rates(model: nn.Module, data: ImageData, attack: Any, device: torch.device,
           batch_size: int) -> dict[str, float | int]:
    net = SplitModel(model, data.mean, data.std).to(device)
    was_training = model.training
    net.eval()
    hit = n = asr_hit = ra_hit = n_trig = 0
    to_class = not_class = None  # per class c: triggered images predicted c / triggered images not of class c
    try:
        for x, y in data.batches(batch_size, device):
            hit += int((net(x).argmax(1) == y).sum())
            n += len(y)
            if attack is None:
                continue
            yt = attack.target_labels(y).to(device)
            keep = y != yt  # images whose label the trigger changes
            if not keep.any():
                continue
            xs, ys, yts = x[keep], y[keep], yt[keep]
            logits = net(attack.apply(xs, ys))
            pred, k = logits.argmax(1), logits.shape[1]
            asr_hit += int((pred == yts).sum())
            ra_hit += int((pred == ys).sum())
            n_trig += len(ys)
            wrong = torch.bincount(pred[pred != ys], minlength=k).cpu()
            others = len(ys) - torch.bincount(ys, minlength=k).cpu()
            to_class = wrong if to_class is None else to_class + wrong
            not_class = others if not_class is None else not_class + others
    finally:
        model.train(was_training)
    out: dict[str, float | int] = {"BA": hit / n, "n_test": n}
    if attack is not None:
        if n_trig == 0:
            raise BanscanError("no test image has a label the attack changes (all are of the target class)")
        share = to_class.double() / not_class.clamp(min=1).double()
        out.update(ASR=asr_hit / n_trig, RA=ra_hit / n_trig, ASR_any=float(share.max()),
                   ASR_any_class=int(share.argmax()), n_triggered=n_trig)
    return out


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
        r = _rates(m, test_data, attack, resolve_device(device, m), batch_size)
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


def _prepare_log(path: Path) -> set[tuple[str, str]]:
    """(model, method) pairs already recorded; a torn last line (interrupted write) is cut off so that appended
    records never follow a broken one."""
    if not path.is_file():
        return set()
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    done, keep = set(), []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1 or all(not s.strip() for s in lines[i + 1:]):
                log.warning("%s: dropping a torn last line", path)
                continue
            raise BanscanError(f"{path}, line {i + 1}: not a JSON record; fix or delete that line") from None
        keep.append(line)
        if isinstance(rec, dict) and "model" in rec and "method" in rec:
            done.add((str(rec["model"]), str(rec["method"])))
    fixed = "".join(line + "\n" for line in keep)
    if fixed != text:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(fixed, encoding="utf-8")
        os.replace(tmp, path)
    return done


def mitigate_zoo(zoo_dir: str | os.PathLike, methods: Sequence[str] = ("ban",), out: str | os.PathLike = "RESULTS",
                 params: Mapping[str, Mapping[str, Any]] | None = None, ids: Sequence[str] | None = None,
                 seed: int = 0, device: str | torch.device | None = None, data_dir: str | os.PathLike | None = None,
                 save_models: bool = False, resume: bool = True, n_images: int | None = None,
                 verify: str | None = None, verify_params: Mapping[str, Any] | None = None
                 ) -> list[dict[str, Any]]:
    """Repair every backdoored model of a zoo with each method; append records to ``OUT/mitigation.jsonl``.

    Args:
        zoo_dir: a zoo written by ``banscan zoo build``.
        methods: registered mitigation names.
        out: results folder (``mitigation.jsonl`` is appended to, one flushed line per record; with
            ``save_models`` the repaired weights go to ``OUT/mitigated/<id>.<method>.safetensors``).
        params: per-method hyperparameters, e.g. ``{"ban": {"epochs": 10}}``.
        ids: restrict to these model ids.
        n_images: repair with a seeded, stratified subset of this many defender images (the BAN paper uses
            5% of the training set, 2,500 CIFAR-10 images); ``None`` uses the whole defender split.
        seed: the mitigations' seed.
        resume: skip (model, method) pairs already in the file.
        verify: a detector name: scan every model before and after its repair on the repair images
            (:func:`verify_repair`, the check a user without the trigger can make) and record it as ``verify``;
            ``verify_params`` are that detector's hyperparameters.

    Returns the records written by this call. Only cards with an attack and status ``"ok"`` are used: the
    defender's clean split (``banscan.zoo.defender_data``) repairs, the test split (``test_data``) evaluates.
    """
    from ..attacks import attack_from_card
    from ..checkpoints import save_weights
    from ..detectors import get_detector
    from ..zoo import defender_data, load_manifest, load_zoo_model, test_data

    params = dict(params or {})
    unknown = [m for m in list(methods) + list(params) if m not in _registered()]
    if unknown:
        raise BanscanError(f"unknown mitigation(s) {unknown}; expected some of {_registered()}")
    if verify is not None:
        get_detector(verify, **dict(verify_params or {}))  # bad names/parameters fail before the first repair
    manifest = load_manifest(zoo_dir)
    cards = [c for c in manifest["models"] if c.get("attack") and c.get("status", "ok") == "ok"]
    if ids is not None:
        known = {c["id"] for c in cards}
        missing = [i for i in ids if i not in known]
        if missing:
            raise BanscanError(f"{missing} are not backdoored models of {zoo_dir}")
        cards = [c for c in cards if c["id"] in set(ids)]
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "mitigation.jsonl"
    done = _prepare_log(path)
    if not resume:
        done = set()
    defend, test = defender_data(zoo_dir, data_dir), test_data(zoo_dir, data_dir)
    if n_images is not None and n_images < len(defend):
        defend, _ = defend.split(n_images, seed=seed)
    records = []
    for card in cards:
        todo = [m for m in methods if (card["id"], m) not in done]
        if not todo:
            continue
        model = load_zoo_model(zoo_dir, card, device=device)
        dev = resolve_device(device, model)
        attack = attack_from_card(zoo_dir, card, device=dev)
        scan_before = None  # the verification scan of the unrepaired model, shared by the methods
        for method in todo:
            mit = get_mitigation(method, **with_seed(params.get(method), seed, f"mitigation {method!r}"))
            t0 = time.perf_counter()
            res = mit.repair(model, defend, device=dev)
            elapsed = time.perf_counter() - t0
            ev = evaluate_mitigation(model, res.model, test, attack, device=dev)
            ver = None
            if verify is not None:
                ver = verify_repair(model, res.model, defend, verify, verify_params, method, seed, dev, scan_before)
                scan_before = ver["before"]
            run = {"model": card["id"], "method": method, "attack": card["attack"], "time_s": round(elapsed, 3),
                   "n_images": len(defend), "device": str(dev), "params": json_safe(mit.get_params()),
                   "stats": res.stats, "timings": res.timings, "versions": res.versions, "verify": ver}
            rec = {k: run[k] if k in run else ev[k] for k in RECORD_FIELDS}  # the rates come from `ev`
            with open(path, "a") as fh:
                fh.write(json.dumps(rec, sort_keys=False) + "\n")
                fh.flush()
            if save_models:
                save_weights(res.model, out_dir / "mitigated" / f"{card['id']}.{method}.safetensors",
                             metadata={"source": card["file"], "method": method, "config": res.config})
            log.info("%s %s: BA %.3f -> %.3f, ASR %.3f -> %.3f (%.1fs)", card["id"], method, rec["BA_before"],
                     rec["BA_after"], rec["ASR_before"], rec["ASR_after"], elapsed)
            records.append(rec)
    return records


def _registered() -> list[str]:
    from . import list_mitigations

    return list_mitigations()
