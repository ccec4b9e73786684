"""Build a zoo: train every model of a spec, resumably, with a quality gate; re-evaluate a built zoo.

A model is trained by :func:`train_entry` (entry and data in, card and tensors out; it runs in the driver or in a
Ray task) and written by :func:`write_model` on the driver, card last (atomically), so a model counts as finished
exactly when its card exists: an interrupted build resumes where it stopped and never retrains a finished model.
Without Ray, the model in training also resumes from its last finished epoch (``<id>.train-state.pt``, removed
once the model is written). Models below the spec's BA/ASR floors are recorded with ``status: "failed"`` and
their numbers.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .._utils import BanscanError, json_safe, progress, resolve_device, versions, write_atomic
from ..checkpoints import weights_bytes
from ..data import ImageData
from .spec import _plan, load_spec
from .store import (SCHEMA_VERSION, ZooCard, _datasets, _fingerprint, _split, _write_json, load_manifest,
                    load_zoo_model, test_data)

log = logging.getLogger(__name__)


def _ba_asr(model: nn.Module, data: ImageData, attack: Any,
            device: str | torch.device | None = None) -> tuple[float, float | None]:
    """Clean accuracy and (given an attack) ASR from one fp32 pass over ``data``; ASR is NaN when no test image's
    label is changed by the trigger."""
    from ..attacks.metrics import attack_metrics

    usable = attack is not None and bool(attack.asr_mask(data.y).any())
    m = attack_metrics(model, data, attack if usable else None, device)
    asr = None if attack is None else float(m["ASR"]) if usable else float("nan")
    return float(m["BA"]), asr


def attack_success_rate(model: nn.Module, data: ImageData, attack: Any,
                        device: str | torch.device | None = None) -> float:
    """Share of the triggered test images (those whose label the trigger changes) classified as the target."""
    return _ba_asr(model, data, attack, device)[1]


def _same_recipe(card: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    keys = ("arch", "arch_kwargs", "attack", "attack_params", "seed", "train")
    return all(json_safe(card.get(k) or None) == json_safe(entry.get(k) or None) for k in keys)


def train_entry(entry: Mapping[str, Any], train: ImageData, test: ImageData, info: Mapping[str, Any],
                device: str | torch.device | None = None,
                checkpoint: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train and gate one model of the plan; returns ``{"card": dict, "weights": bytes, "attack": bytes | None}``
    (safetensors bytes), writing nothing but the per-epoch ``checkpoint`` of :func:`banscan.train.train_model`
    (none on Ray), so that a Ray task can run it and the driver write the result."""
    from ..attacks import get_attack
    from ..models import create_model
    from ..train import TrainConfig, train_model

    dev = resolve_device(device)
    with torch.random.fork_rng(devices=[]):  # seeded initial weights, global RNG state left as it was
        torch.manual_seed(int(entry["seed"]))
        model = create_model(entry["arch"], int(info["num_classes"]), **entry["arch_kwargs"])
    model.to(dev)
    attack = None
    hook, extra, data = None, None, train
    if entry["attack"]:
        attack = get_attack(entry["attack"], **entry["attack_params"])
        data = attack.prepare(train, dev)
        hook, extra = attack.poison_batch, attack.extra_parameters()
    stats = train_model(model, data, TrainConfig(**entry["train"]), batch_hook=hook, extra_params=extra, device=dev,
                        checkpoint=checkpoint)
    ba, asr = _ba_asr(model, test, attack, dev)
    gate = entry["gate"]
    fails = []
    if not ba >= gate["min_ba"]:
        fails.append(f"BA {ba:.4f} < floor {gate['min_ba']}")
    if attack is not None and not (asr is not None and asr >= gate["min_asr"]):
        fails.append(f"ASR {asr:.4f} < floor {gate['min_asr']}")
    mid, p = entry["id"], entry["attack_params"]
    card = ZooCard(
        id=mid, file=f"{mid}.safetensors", arch=entry["arch"], arch_kwargs=entry["arch_kwargs"],
        num_classes=int(info["num_classes"]), image_shape=info["image_shape"], dataset=info["name"],
        attack=entry["attack"], attack_params=p if attack else None, attack_info=attack.describe() if attack else None,
        target=p.get("target") if attack else None, poison_rate=p.get("poison_rate") if attack else None,
        victim=p.get("victim") if attack else None, seed=entry["seed"], BA=round(ba, 5),
        ASR=None if asr is None else round(asr, 5), status="failed" if fails else "ok",
        failure="; ".join(fails) or None, gate=gate, train=entry["train"], train_time_s=stats["train_time_s"],
        images_per_s=stats["images_per_s"], device=stats["device"], amp=stats["amp"], versions=versions(),
        mean=list(train.mean), std=list(train.std))
    state = attack.state_dict() if attack is not None else {}
    return {"card": card.to_dict(), "weights": weights_bytes(model, {"id": mid, "arch": entry["arch"]}),
            "attack": weights_bytes(state) if state else None}


def write_model(out: Path, result: Mapping[str, Any]) -> dict[str, Any]:
    """Write :func:`train_entry`'s result into the zoo folder: weights, trigger state, then the card (last)."""
    card = result["card"]
    mid = card["id"]
    weights = Path(out) / card["file"]
    write_atomic(weights, result["weights"])
    if result.get("attack"):
        write_atomic(Path(out) / f"{mid}.attack.safetensors", result["attack"])
    _write_json(Path(out) / f"{mid}.json", card)  # written last: its presence marks the model as finished
    return card


def _prepare(spec: Mapping[str, Any], out: Path) -> tuple[ImageData, ImageData, dict[str, Any], dict[str, Any]]:
    """(training set without the defender split, test set, dataset info, manifest skeleton) of a build into
    ``out``; refuses a folder that holds a zoo of other data."""
    full, test, info = _datasets(spec["dataset"])
    dfd = spec.get("defender", {})
    fraction, dseed = float(dfd.get("fraction", 0.1)), int(dfd.get("seed", 0))
    defender, train = _split(full, fraction, dseed)
    split_info = {"fraction": fraction, "seed": dseed, "size": len(defender), "n_train_used": len(train),
                  "stratified": True, "sha256": _fingerprint(defender),
                  "note": "held out of the training set before any model is trained; no zoo model saw it"}
    if (out / "manifest.json").is_file():
        prev = load_manifest(out)
        if prev.get("defender_split", {}).get("sha256") != split_info["sha256"]:
            raise BanscanError(f"{out} holds a zoo built on other data or another defender split; use a new --out")
    manifest = {"schema_version": SCHEMA_VERSION, "spec": spec, "dataset": info, "defender_split": split_info,
                "models": [], "complete": False}
    return train, test, info, manifest


# 61 lines: plan, resume check, then the sequential loop or Ray; each step is a call.
def build_zoo(spec: str | os.PathLike | Mapping[str, Any], out: str | os.PathLike,
              device: str | torch.device | None = None, retry_failed: bool = False,
              on_model: Callable[[int, int, dict[str, Any], bool], None] | None = None,
              shard: tuple[int, int] | None = None, ray: Any = None,
              only: Sequence[str] | None = None) -> dict[str, Any]:
    """Build (or resume building) the zoo a spec describes into ``out``; returns the manifest.

    Args:
        spec: spec mapping, ``.toml``/``.yaml`` path or shipped spec name.
        out: output folder.
        device: training device (default CPU; on Ray, each task's: ``cuda`` where the task has a GPU).
        retry_failed: retrain models whose card says ``failed`` (finished ``ok`` models are never retrained).
        on_model: called as ``on_model(i, n, card, reused)`` after each model, for progress reports (``i`` counts
            models in completion order on Ray).
        shard: ``(i, n)`` trains only the models whose position in the plan is ``i`` modulo ``n``, so that ``n``
            processes sharing the folder build one zoo together (a final run without ``shard`` checks and trains
            whatever is still missing). ``ray`` does the same without a shared folder.
        ray: a :class:`banscan.distributed.RayConfig`: every model to train is one Ray task
            (:func:`train_entry`); the tasks return weights and cards and this process writes them.
        only: model ids: train only these (e.g. to rebuild a few models of a zoo whose weights were lost, or a
            subset for a costly benchmark); the others are not trained, and the manifest lists whichever models
            are on disk.
    """
    spec = load_spec(spec)
    plan = _plan(spec)
    if only is not None:
        unknown = sorted(set(only) - {e["id"] for e in plan})
        if unknown:
            raise BanscanError(f"only: {', '.join(unknown)} not in the spec's models (its ids: "
                               f"{', '.join(e['id'] for e in plan[:6])}{', ...' if len(plan) > 6 else ''})")
    if shard is not None:
        k, n_shards = shard
        if not (isinstance(k, int) and isinstance(n_shards, int) and 0 <= k < n_shards):
            raise BanscanError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
        if ray is not None:
            raise BanscanError("--shard and --ray exclude each other: Ray spreads the models itself")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train, test, info, manifest = _prepare(spec, out)
    mpath = out / "manifest.json"

    def finished() -> list[dict[str, Any]]:  # every model on disk, also those other shards finished meanwhile
        return [c for c in (_finished_card(out, e, False) for e in plan) if c is not None]

    n = len(plan)
    t_start = time.perf_counter()
    todo = []
    for i, entry in enumerate(plan, 1):
        card = _finished_card(out, entry, retry_failed)
        if card is not None:
            if on_model is not None:
                on_model(i, n, card, True)
        elif (shard is None or (i - 1) % shard[1] == shard[0]) and (only is None or entry["id"] in only):
            todo.append((i, entry))
    if ray is not None:
        _build_on_ray(todo, train, test, info, out, device, ray, lambda: {**manifest, "models": finished()},
                      on_model, n)
    else:
        dev = resolve_device(device)
        for i, entry in progress(todo, "zoo", total=len(todo)):
            log.info("training %s (%d/%d)", entry["id"], i, n)
            state = out / f"{entry['id']}.train-state.pt"  # per-epoch: a stopped build resumes mid-model
            card = write_model(out, train_entry(entry, train, test, info, dev, checkpoint=state))
            state.unlink(missing_ok=True)
            _write_json(mpath, {**manifest, "models": finished()})
            if on_model is not None:
                on_model(i, n, card, False)
    manifest["models"] = finished()
    manifest["complete"] = len(manifest["models"]) == n
    manifest["build_time_s"] = round(time.perf_counter() - t_start, 1)
    _write_json(mpath, manifest)
    return manifest


def _ray_train(entry: Mapping[str, Any], train: ImageData, test: ImageData, info: Mapping[str, Any],
               device: str | None) -> dict[str, Any]:
    """One Ray task of a zoo build: :func:`train_entry` on the task's device (a GPU when the task was given one)."""
    if device is None and torch.cuda.is_available():
        device = "cuda"  # Ray sets CUDA_VISIBLE_DEVICES to the task's GPU; without a GPU it hides them all
    return train_entry(entry, train, test, info, device)


def _build_on_ray(todo: list[tuple[int, dict[str, Any]]], train: ImageData, test: ImageData,
                  info: Mapping[str, Any], out: Path, device: Any, ray: Any,
                  manifest: Callable[[], dict[str, Any]], on_model: Callable[..., None] | None, n: int) -> None:
    # Ten arguments: the build's state, passed rather than captured so that build_zoo stays one readable page.
    from ..distributed import run_tasks

    done = [0]

    def write(key: Any, result: dict[str, Any]) -> None:
        card = write_model(out, result)
        _write_json(out / "manifest.json", manifest())
        done[0] += 1
        if on_model is not None:
            on_model(key, n, card, False)

    jobs = [(i, {"entry": entry, "device": None if device is None else str(device)}) for i, entry in todo]
    run_tasks(_ray_train, jobs, ray, write, shared={"train": train, "test": test, "info": dict(info)},
              desc="zoo")


def _finished_card(out: Path, entry: dict[str, Any], retry_failed: bool) -> dict[str, Any] | None:
    """The card of a finished model of this recipe, or None (not built, half written, or failed and retried)."""
    cf = out / f"{entry['id']}.json"
    if not (cf.is_file() and (out / f"{entry['id']}.safetensors").is_file()):
        return None
    try:
        card = json.loads(cf.read_text())
    except json.JSONDecodeError:
        return None
    if not _same_recipe(card, entry):
        raise BanscanError(f"{cf} was built with other settings than the spec now asks for; use a new "
                           "--out or delete that model's files")
    if retry_failed and card.get("status") == "failed":
        return None
    return card


def evaluate_zoo(zoo_dir: str | os.PathLike, device: str | torch.device | None = None,
                 data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Recompute BA and ASR of every model in a zoo; returns one row per model with the card's values beside."""
    from ..attacks import attack_from_card

    m = load_manifest(zoo_dir)
    test = test_data(zoo_dir, data_dir)
    dev = resolve_device(device)
    rows = []
    for card in m["models"]:
        model = load_zoo_model(zoo_dir, card, dev)
        ba, asr = _ba_asr(model, test, attack_from_card(zoo_dir, card, dev) if card.get("attack") else None, dev)
        rows.append({"id": card["id"], "attack": card.get("attack"), "status": card.get("status"), "BA": ba,
                     "ASR": asr, "card_BA": card.get("BA"), "card_ASR": card.get("ASR")})
    return rows
