"""Repair every backdoored model of a zoo and record how well each repair worked (``RESULTS/mitigation.jsonl``).

The record schema lives here only (:class:`MitigationRecord`): rates are fractions in ``[0, 1]``, always. One
model's repairs are one job, :func:`repair_model` (pure: card, weights, trigger state and data in, records out),
run here or as a Ray task; only this process reads the zoo and writes the records.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import torch

from .._utils import BanscanError, json_safe, resolve_device
from ..jsonl import append_jsonl, check_schema, read_jsonl, repair_tail
from ..params import with_seed
from .io import MITIGATION_NAME, check_same_weights, weights_sha256

__all__ = ["MitigationRecord", "mitigate_zoo", "repair_model", "read_mitigation_records"]
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MitigationRecord:
    """One (model, repair) of a zoo. Rates (``BA_*``, ``ASR_*``, ``RA_after``, ``ASR_any_after``) are fractions in
    ``[0, 1]``; ``ASR_*`` are ``None`` for a clean model. ``stats`` are the repair's own (e.g. the class
    ``ban_scan`` aimed at); ``ASR_any_*``: the triggered images' most collected wrong class, which catches a backdoor
    moved to a new label; ``verify``: ``None``, or :func:`banscan.mitigation.verify_repair`'s result."""

    schema_version: ClassVar[int] = 1
    model: str
    method: str
    attack: str | None
    BA_before: float
    BA_after: float
    ASR_before: float | None
    ASR_after: float | None
    RA_after: float | None
    ASR_any_after: float | None
    ASR_any_class_after: int | None
    time_s: float
    n_images: int
    device: str
    params: dict[str, Any]
    stats: dict[str, Any]
    timings: dict[str, float]
    versions: dict[str, str]
    verify: dict[str, Any] | None
    weights_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {**asdict(self), "schema_version": self.schema_version}
        return json_safe({k: v for k, v in d.items() if not (k == "weights_sha256" and v is None)})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MitigationRecord:
        """Read a record; records written before the schema was versioned carry no ``schema_version`` (v1)."""
        check_schema(d, cls.schema_version, f"mitigation record {d.get('model', '?')}")
        names = [f.name for f in fields(cls)]
        required = ("model", "method", "BA_before", "BA_after", "ASR_before", "ASR_after", "RA_after", "time_s")
        missing = [k for k in required if k not in d]
        if missing:
            raise BanscanError(f"mitigation record lacks {missing}; expected the fields {names}")
        rates = ("BA_before", "BA_after", "ASR_before", "ASR_after", "RA_after", "ASR_any_after")
        bad = [k for k in rates if d.get(k) is not None and not 0 <= d[k] <= 1]
        if bad:
            raise BanscanError(f"mitigation record {d['model']}/{d['method']}: {bad} are not fractions in [0, 1]")
        return cls(**{k: d.get(k) for k in names})


def read_mitigation_records(path: str | os.PathLike) -> list[MitigationRecord]:
    """The records of a ``mitigation.jsonl``, in file order."""
    out = []
    for i, r in enumerate(read_jsonl(path)):
        try:
            out.append(MitigationRecord.from_dict(r))
        except BanscanError as e:
            raise BanscanError(f"{path}: record {i + 1}: {e}") from None
        except TypeError as e:
            raise BanscanError(f"{path}: record {i + 1} is not a mitigation record ({e})") from None
    return out


def repair_model(card: Mapping[str, Any], weights: Any, attack_state: Any, methods: Sequence[str],
                 defend: Any, test: Any, params: Mapping[str, Mapping[str, Any]], seed: int,
                 device: str | torch.device | None = None, verify: str | None = None,
                 verify_params: Mapping[str, Any] | None = None, zoo_dir: str | None = None,
                 keep_weights: bool = False) -> list[dict[str, Any]]:
    """Repair one zoo model with each of ``methods``; returns ``{"record": MitigationRecord dict, "weights":
    repaired safetensors bytes or None}`` per method (weights with ``keep_weights``).

    ``weights`` is the model's safetensors file or its bytes, ``attack_state`` the trigger state's bytes (or
    ``None``: read from ``zoo_dir``). Thirteen arguments: one job's complete inputs, so that it can run as a Ray
    task with nothing read from disk.
    """
    from .. import attacks
    from ..mitigation import evaluate_mitigation, get_mitigation, verify_repair
    from ..zoo.store import model_from_card

    sha = weights_sha256(weights)
    model = model_from_card(card, weights, device)
    dev = resolve_device(device, model)
    if attack_state is None:
        attack = attacks.attack_from_card(zoo_dir, card, device=dev)
    else:
        attack = attacks.attack_from_card(None, card, device=dev, state=attack_state)
    scan_before = None  # the verification scan of the unrepaired model, shared by the methods
    out = []
    for method in methods:
        mit = get_mitigation(method, **with_seed(params.get(method), seed, f"mitigation {method!r}"))
        t0 = time.perf_counter()
        res = mit.repair(model, defend, device=dev)
        elapsed = time.perf_counter() - t0
        ev = evaluate_mitigation(model, res.model, test, attack, device=dev)
        ver = None
        if verify is not None:
            ver = verify_repair(model, res.model, defend, verify, verify_params, method, seed, dev, scan_before)
            scan_before = ver["before"]
        rec = MitigationRecord(
            model=card["id"], method=method, attack=card["attack"], BA_before=ev["BA_before"], BA_after=ev["BA_after"],
            ASR_before=ev.get("ASR_before"), ASR_after=ev.get("ASR_after"), RA_after=ev.get("RA_after"),
            ASR_any_after=ev.get("ASR_any_after"), ASR_any_class_after=ev.get("ASR_any_class_after"),
            time_s=round(elapsed, 3), n_images=len(defend), device=str(dev), params=json_safe(mit.get_params()),
            stats=res.stats, timings=res.timings, versions=res.versions, verify=ver, weights_sha256=sha)
        log.info("%s %s: BA %.3f -> %.3f, ASR %.3f -> %.3f (%.1fs)", card["id"], method, rec.BA_before,
                 rec.BA_after, rec.ASR_before, rec.ASR_after, elapsed)
        out.append({"record": rec.to_dict(), "weights": _state_bytes(res) if keep_weights else None})
    return out


def _state_bytes(res: Any) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().cpu().contiguous().clone() for k, v in res.model.state_dict().items()})


def _ray_repair(**kw: Any) -> list[dict[str, Any]]:
    """One Ray task of ``mitigate_zoo``: :func:`repair_model` on the task's device (a GPU when it has one)."""
    if kw.get("device") is None and torch.cuda.is_available():
        kw["device"] = "cuda"
    return repair_model(**kw)


def mitigate_zoo(zoo_dir: str | os.PathLike, methods: Sequence[str] = ("ban",), out: str | os.PathLike = "RESULTS",
                 params: Mapping[str, Mapping[str, Any]] | None = None, ids: Sequence[str] | None = None,
                 seed: int = 0, device: str | torch.device | None = None, data_dir: str | os.PathLike | None = None,
                 save_models: bool = False, resume: bool = True, n_images: int | None = None,
                 verify: str | None = None, verify_params: Mapping[str, Any] | None = None, ray: Any = None
                 ) -> list[dict[str, Any]]:
    """Repair every backdoored model of a zoo with each method; append records to ``OUT/mitigation.jsonl``.

    Fourteen keyword-style arguments: this is the library form of ``banscan bench --mitigate``, one argument per
    option of that command; each is documented below and has a default.

    Args:
        zoo_dir: a zoo written by ``banscan zoo build``.
        methods: registered mitigation names.
        out: results folder (``mitigation.jsonl`` is appended to, one fsync'd line per record; with
            ``save_models`` the repaired weights go to ``OUT/mitigated/<id>.<method>.safetensors``).
        params: per-method hyperparameters, e.g. ``{"ban": {"epochs": 10}}``.
        ids: restrict to these model ids.
        n_images: repair with a seeded, stratified subset of this many defender images (the BAN paper uses
            5% of the training set, 2,500 CIFAR-10 images); ``None`` uses the whole defender split.
        seed: the mitigations' seed.
        resume: skip (model, method) pairs already in the file.
        verify: a detector name: scan every model before and after its repair on the repair images
            (:func:`banscan.mitigation.verify_repair`) and record it as ``verify``; ``verify_params`` are that
            detector's hyperparameters.
        ray: a :class:`banscan.distributed.RayConfig`: each model's repairs are one Ray task.

    Returns the records written by this call (as dicts). Only cards with an attack and status ``"ok"`` are used:
    the defender's clean split (``banscan.zoo.defender_data``) repairs, the test split (``test_data``) evaluates.
    """
    from .. import zoo
    from ..detectors import get_detector
    from ..mitigation import list_mitigations

    params = dict(params or {})
    unknown = [m for m in list(methods) + list(params) if m not in list_mitigations()]
    if unknown:
        raise BanscanError(f"unknown mitigation(s) {unknown}; expected some of {list_mitigations()}")
    if verify is not None:
        get_detector(verify, **dict(verify_params or {}))  # bad names/parameters fail before the first repair
    cards = _backdoored_cards(zoo.load_manifest(zoo_dir), ids, zoo_dir)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / MITIGATION_NAME
    repair_tail(path)
    old = read_mitigation_records(path) if resume else []
    check_same_weights({r.model: r.weights_sha256 for r in old}, cards, Path(zoo_dir), path)
    done = {(r.model, r.method) for r in old}
    defend, test = zoo.defender_data(zoo_dir, data_dir), zoo.test_data(zoo_dir, data_dir)
    if n_images is not None and n_images < len(defend):
        defend, _ = defend.split(n_images, seed=seed)
    todo = [(c, [m for m in methods if (c["id"], m) not in done]) for c in cards]
    todo = [(c, ms) for c, ms in todo if ms]
    records: list[dict[str, Any]] = []
    write = _writer(path, out_dir, {c["id"]: c for c, _ in todo}, save_models, records)
    common = {"defend": defend, "test": test, "params": params, "seed": seed, "verify": verify,
              "verify_params": None if verify_params is None else dict(verify_params)}
    if ray is None:
        for card, ms in todo:
            write(card["id"], repair_model(card, Path(zoo_dir) / card["file"], None, ms, device=device,
                                           zoo_dir=str(zoo_dir), keep_weights=save_models, **common))
    else:
        _repair_on_ray(todo, Path(zoo_dir), ray, write, {**common, "device": None if device is None else str(device)},
                       save_models)
    return records


def _writer(path: Path, out_dir: Path, cards: Mapping[str, Mapping[str, Any]], save_models: bool,
            records: list[dict[str, Any]]) -> Any:
    """The driver's writer of one model's repair results: records (fsync'd) and, if asked, repaired weights."""
    from ..checkpoints import save_weights

    def write(card_id: Any, results: list[dict[str, Any]]) -> None:
        for r in results:
            append_jsonl(path, r["record"])
            method = r["record"]["method"]
            if save_models and r["weights"] is not None:
                from safetensors.torch import load

                save_weights(load(r["weights"]), out_dir / "mitigated" / f"{card_id}.{method}.safetensors",
                             metadata={"source": cards[card_id]["file"], "method": method})
            records.append(r["record"])

    return write


def _repair_on_ray(todo: list[tuple[dict[str, Any], list[str]]], zoo_dir: Path, ray: Any, write: Any,
                   shared: Mapping[str, Any], keep_weights: bool) -> None:
    """Each model's repairs as one Ray task; the weights and trigger state travel as bytes, read here lazily."""
    from ..distributed import run_tasks

    def jobs():
        for card, ms in todo:
            f = zoo_dir / f"{card['id']}.attack.safetensors"
            yield card["id"], {"card": card, "weights": (zoo_dir / card["file"]).read_bytes(),
                               "attack_state": f.read_bytes() if f.is_file() else None, "methods": ms,
                               "keep_weights": keep_weights, "zoo_dir": None}

    run_tasks(_ray_repair, jobs(), ray, write, total=len(todo), desc="mitigate", shared=shared)


def _backdoored_cards(manifest: Mapping[str, Any], ids: Sequence[str] | None, zoo_dir: Any) -> list[dict[str, Any]]:
    cards = [c for c in manifest["models"] if c.get("attack") and c.get("status", "ok") == "ok"]
    if ids is not None:
        known = {c["id"] for c in cards}
        missing = [i for i in ids if i not in known]
        if missing:
            raise BanscanError(f"{missing} are not backdoored models of {zoo_dir}")
        cards = [c for c in cards if c["id"] in set(ids)]
    return cards
