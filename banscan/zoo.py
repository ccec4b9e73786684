"""Model zoo: build clean and backdoored models from a spec, resumably, with a quality gate.

``banscan zoo build SPEC --out DIR`` trains every model a spec lists (architectures, widths, attacks with their
parameters, targets, poison rates, seeds, clean models) and writes one ``<id>.safetensors`` and one ``<id>.json``
card per model, ``<id>.attack.safetensors`` for attacks with trigger state, and ``DIR/manifest.json``.
A card is written last (atomically), so a model counts as finished exactly when its card exists: an interrupted
build resumes where it stopped and never retrains a finished model. Models below the spec's BA/ASR floors are
recorded with ``status: "failed"`` and their numbers.

The defender's clean data is a seeded, stratified hold-out of the training set (10% by default, as in the BAN
paper) that no zoo model ever trains on; :func:`defender_data` rebuilds it and checks its fingerprint.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._utils import BanscanError, json_safe, progress, resolve_device, versions
from .data import CIFAR10_MEAN, CIFAR10_STD, ImageData, load_data

__all__ = ["load_spec", "build_zoo", "evaluate_zoo", "load_manifest", "load_zoo_model", "defender_data",
           "test_data", "attack_success_rate", "shipped_specs"]
log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_SPEC_DIR = Path(__file__).parent / "specs"
_TOP_KEYS = {"name", "description", "dataset", "defender", "train", "gate", "models"}
_DATASET_KEYS = {"name", "path", "n_train", "n_test", "num_classes", "size", "seed", "task_seed", "noise"}
_GROUP_KEYS = {"name", "arch", "arch_kwargs", "attack", "attack_params", "targets", "poison_rates", "seeds",
               "train", "gate"}
_CACHE: dict[tuple[str, str], ImageData] = {}


# ---------------------------------------------------------------------------------------------- specs
def shipped_specs() -> list[str]:
    """Names of the specs shipped in ``banscan/specs``."""
    return sorted(p.stem for p in _SPEC_DIR.glob("*.toml"))


def _read_spec_file(p: Path) -> dict[str, Any]:
    text = p.read_text()
    if p.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise BanscanError(f"{p}: YAML specs need pyyaml (pip install 'banscan[yaml]'); or use TOML") from None
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise BanscanError(f"{p}: invalid YAML: {e}") from None
    else:
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            import tomli as tomllib  # type: ignore[no-redef]
        try:
            spec = tomllib.loads(text)
        except tomllib.TOMLDecodeError as e:
            raise BanscanError(f"{p}: invalid TOML: {e}") from None
    if not isinstance(spec, dict):
        raise BanscanError(f"{p}: a spec must be a mapping of sections, got {type(spec).__name__}")
    return spec


def load_spec(spec: str | os.PathLike | Mapping[str, Any]) -> dict[str, Any]:
    """Read and validate a spec: a mapping, a ``.toml``/``.yaml`` file, or a shipped spec's name (``tiny``)."""
    if isinstance(spec, Mapping):
        raw = copy.deepcopy(dict(spec))
    else:
        p = Path(spec)
        if p.is_file():
            raw = _read_spec_file(p)
        elif (_SPEC_DIR / f"{spec}.toml").is_file():
            raw = _read_spec_file(_SPEC_DIR / f"{spec}.toml")
        else:
            raise BanscanError(f"spec {str(spec)!r} is neither a file nor a shipped spec ({', '.join(shipped_specs())})")
    _validate_spec(raw)
    return raw


def _validate_spec(spec: dict[str, Any]) -> None:
    from .attacks import list_attacks
    from .models import list_models
    from .train import TrainConfig

    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise BanscanError(f"spec: unknown sections {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    ds = spec.get("dataset")
    if not isinstance(ds, dict) or ds.get("name") not in ("synthetic", "cifar10"):
        raise BanscanError("spec: [dataset] needs name = 'synthetic' or 'cifar10'")
    bad = set(ds) - _DATASET_KEYS
    if bad:
        raise BanscanError(f"spec: unknown [dataset] keys {sorted(bad)}; expected {sorted(_DATASET_KEYS)}")
    frac = spec.get("defender", {}).get("fraction", 0.1)
    if not isinstance(frac, (int, float)) or not 0 < frac < 1:
        raise BanscanError(f"spec: defender fraction must be in (0, 1), got {frac!r}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for where, tr in [("[train]", spec.get("train", {}))] + [
            (f"models[{i}].train", g.get("train", {})) for i, g in enumerate(spec.get("models", []))]:
        bad = set(tr) - fields
        if bad:
            raise BanscanError(f"spec: unknown {where} keys {sorted(bad)}; expected {sorted(fields)}")
    for where, gate in [("[gate]", spec.get("gate", {}))] + [
            (f"models[{i}].gate", g.get("gate", {})) for i, g in enumerate(spec.get("models", []))]:
        bad = set(gate) - {"min_ba", "min_asr"}
        if bad:
            raise BanscanError(f"spec: unknown {where} keys {sorted(bad)}; expected ['min_asr', 'min_ba']")
    groups = spec.get("models")
    if not isinstance(groups, list) or not groups:
        raise BanscanError("spec: needs at least one [[models]] entry")
    for i, g in enumerate(groups):
        if not isinstance(g, dict):
            raise BanscanError(f"spec: models[{i}] must be a table")
        bad = set(g) - _GROUP_KEYS
        if bad:
            raise BanscanError(f"spec: unknown models[{i}] keys {sorted(bad)}; expected {sorted(_GROUP_KEYS)}")
        if g.get("arch") not in list_models():
            raise BanscanError(f"spec: models[{i}].arch {g.get('arch')!r} is not one of {list_models()}")
        att = g.get("attack")
        if att not in (None, "", "none", "clean") and att not in list_attacks():
            raise BanscanError(f"spec: models[{i}].attack {att!r} is not one of {list_attacks()} (or omit it for "
                               "clean models)")
        seeds = g.get("seeds", [0])
        if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
            raise BanscanError(f"spec: models[{i}].seeds must be a non-empty list of integers, got {seeds!r}")


def _fmt(v: float) -> str:
    return f"{v:g}".replace(".", "p")


def _plan(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Expand the spec's model groups into one entry per model, with a unique id."""
    from .attacks import get_attack
    from .train import TrainConfig

    base_train = dict(spec.get("train", {}))
    base_gate = {"min_ba": 0.0, "min_asr": 0.0, **spec.get("gate", {})}
    plan, seen = [], set()
    for i, g in enumerate(spec["models"]):
        attack = g.get("attack")
        attack = None if attack in (None, "", "none", "clean") else attack
        kw = dict(g.get("arch_kwargs", {}))
        width = kw.get("base_width", kw.get("width", kw.get("growth_rate")))
        prefix = g.get("name") or f"{attack or 'clean'}-{g['arch']}" + (f"-w{width}" if width else "")
        params = dict(g.get("attack_params", {}))
        targets = g.get("targets", [params.get("target", 0)]) if attack else [None]
        rates = g.get("poison_rates", [params["poison_rate"]] if "poison_rate" in params else [None]) if attack \
            else [None]
        for target in targets:
            for rate in rates:
                for seed in g.get("seeds", [0]):
                    mid = prefix
                    if len(targets) > 1:
                        mid += f"-t{target}"
                    if len(rates) > 1:
                        mid += f"-p{_fmt(rate)}"
                    mid += f"-s{seed}"
                    if mid in seen:
                        raise BanscanError(f"spec: model id {mid!r} appears twice (models[{i}]); give the group a "
                                           "distinct name")
                    seen.add(mid)
                    p = dict(params)
                    if attack:
                        p["target"] = target
                        if rate is not None:
                            p["poison_rate"] = rate
                        p.setdefault("seed", seed)
                        p = get_attack(attack, **p).get_params()  # full parameters, defaults included
                    cfg = TrainConfig(**{**base_train, **g.get("train", {}), "seed": seed})
                    plan.append({"id": mid, "arch": g["arch"], "arch_kwargs": kw, "attack": attack,
                                 "attack_params": json_safe(p) if attack else {}, "seed": seed,
                                 "train": cfg.to_dict(), "gate": {**base_gate, **g.get("gate", {})}})
    return plan


# ---------------------------------------------------------------------------------------------- data
def _default_data_dir() -> Path:
    env = os.environ.get("BANSCAN_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _cifar10(root: Path, split: str) -> ImageData:
    f = root / "cifar10" / f"{split}.npz"
    key = (str(f.resolve()), split)
    if key not in _CACHE:
        if not f.is_file():
            raise BanscanError(f"CIFAR-10 file {f} not found; set BANSCAN_DATA_DIR or the spec's dataset.path to a "
                               "folder holding cifar10/train.npz and cifar10/test.npz")
        _CACHE[key] = load_data(f, CIFAR10_MEAN, CIFAR10_STD)
    return _CACHE[key]


def _datasets(ds: Mapping[str, Any]) -> tuple[ImageData, ImageData, dict[str, Any]]:
    """(full training set, test set, JSON description) for a spec's or manifest's dataset section."""
    if ds["name"] == "synthetic":
        from .synthetic import make_synthetic

        kw = {"num_classes": int(ds.get("num_classes", 4)), "size": int(ds.get("size", 16)),
              "task_seed": int(ds.get("task_seed", 0)), "noise": float(ds.get("noise", 0.12))}
        seed = int(ds.get("seed", 0))
        train = make_synthetic(int(ds.get("n_train", 2000)), seed=seed, **kw)
        test = make_synthetic(int(ds.get("n_test", 1000)), seed=seed + 1, **kw)
        info = {"name": "synthetic", "path": None, "n_train": len(train), "n_test": len(test), "seed": seed, **kw}
    else:
        root = Path(ds["path"]) if ds.get("path") else _default_data_dir()
        train, test = _cifar10(root, "train"), _cifar10(root, "test")
        info = {"name": "cifar10", "path": str(root.resolve()), "n_train": len(train), "n_test": len(test),
                "num_classes": 10}
    info.update({"mean": list(train.mean), "std": list(train.std), "image_shape": list(train.image_shape),
                 "classes": list(train.classes) if train.classes else None})
    return train, test, info


def _fingerprint(data: ImageData) -> str:
    h = hashlib.sha256()
    h.update(data.x.numpy().tobytes())
    h.update(data.y.numpy().tobytes())
    return h.hexdigest()


def _split(train: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    n_def = int(round(fraction * len(train)))
    if n_def < 1 or n_def >= len(train):
        raise BanscanError(f"defender fraction {fraction} of {len(train)} training images leaves no split")
    return train.split(n_def, seed=seed)


# ---------------------------------------------------------------------------------------------- io
def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # per process: shards of one build write side by side
    tmp.write_text(json.dumps(json_safe(obj), indent=2, sort_keys=True))
    os.replace(tmp, path)


def load_manifest(zoo_dir: str | os.PathLike) -> dict[str, Any]:
    """The zoo's ``manifest.json`` (spec, dataset, defender split and every model's card)."""
    f = Path(zoo_dir) / "manifest.json"
    if not f.is_file():
        raise BanscanError(f"{zoo_dir} is not a zoo: no manifest.json (build one with `banscan zoo build`)")
    try:
        m = json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise BanscanError(f"{f}: invalid JSON ({e})") from None
    if m.get("schema_version") != SCHEMA_VERSION:
        raise BanscanError(f"{f}: schema_version {m.get('schema_version')!r}, expected {SCHEMA_VERSION}")
    return m


def load_zoo_model(zoo_dir: str | os.PathLike, card: Mapping[str, Any] | str,
                   device: str | torch.device | None = None) -> nn.Module:
    """Load a zoo model (by card or id) in eval mode."""
    from .checkpoints import load_weights
    from .models import create_model

    if isinstance(card, str):
        cards = {c["id"]: c for c in load_manifest(zoo_dir)["models"]}
        if card not in cards:
            raise BanscanError(f"no model {card!r} in {zoo_dir}; it has {sorted(cards)[:10]}...")
        card = cards[card]
    model = create_model(card["arch"], int(card["num_classes"]), **dict(card.get("arch_kwargs") or {}))
    load_weights(model, Path(zoo_dir) / card["file"])
    if device is not None:
        model.to(device)
    return model.eval()


def _manifest_data(zoo_dir: str | os.PathLike, data_dir: str | os.PathLike | None):
    m = load_manifest(zoo_dir)
    ds = dict(m["dataset"])
    if data_dir is not None:
        ds["path"] = str(data_dir)
    return m, _datasets(ds)


def defender_data(zoo_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> ImageData:
    """The defender's clean hold-out of the training set (never used to train any zoo model)."""
    m, (train, _, _) = _manifest_data(zoo_dir, data_dir)
    sp = m["defender_split"]
    defender, _ = _split(train, float(sp["fraction"]), int(sp["seed"]))
    if _fingerprint(defender) != sp["sha256"]:
        raise BanscanError(f"the defender split rebuilt from {m['dataset'].get('path') or 'synthetic data'} does not "
                           f"match the one recorded in {zoo_dir}/manifest.json (different data?)")
    return defender


def test_data(zoo_dir: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> ImageData:
    """The zoo's test set (BA and ASR are measured on it)."""
    return _manifest_data(zoo_dir, data_dir)[1][1]


test_data.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# ---------------------------------------------------------------------------------------------- metrics
def attack_success_rate(model: nn.Module, data: ImageData, attack: Any,
                        device: str | torch.device | None = None) -> float:
    """Share of the triggered test images (those whose label the trigger changes) classified as the target."""
    from .train import predict

    mask = attack.asr_mask(data.y)
    idx = torch.nonzero(mask).flatten()
    if len(idx) == 0:
        return float("nan")
    sub = data.subset(idx)
    pred = predict(model, sub, transform=attack.apply, device=device)
    return float((pred == attack.target_labels(sub.y).cpu()).float().mean())


# ---------------------------------------------------------------------------------------------- build
def _same_recipe(card: Mapping[str, Any], entry: Mapping[str, Any]) -> bool:
    keys = ("arch", "arch_kwargs", "attack", "attack_params", "seed", "train")
    return all(json_safe(card.get(k) or None) == json_safe(entry.get(k) or None) for k in keys)


def _save_attack_state(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(path.name + ".tmp")
    save_file({k: v.detach().cpu().contiguous().clone() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def _train_one(entry: dict[str, Any], train: ImageData, test: ImageData, info: dict[str, Any], out: Path,
               dev: torch.device) -> dict[str, Any]:
    from .attacks import get_attack
    from .checkpoints import save_weights
    from .models import create_model
    from .train import TrainConfig, accuracy, train_model

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
    stats = train_model(model, data, TrainConfig(**entry["train"]), batch_hook=hook, extra_params=extra, device=dev)
    ba = accuracy(model, test, device=dev)
    asr = attack_success_rate(model, test, attack, device=dev) if attack else None
    gate = entry["gate"]
    fails = []
    if not ba >= gate["min_ba"]:
        fails.append(f"BA {ba:.4f} < floor {gate['min_ba']}")
    if attack is not None and not (asr is not None and asr >= gate["min_asr"]):
        fails.append(f"ASR {asr:.4f} < floor {gate['min_asr']}")
    mid = entry["id"]
    save_weights(model, out / f"{mid}.safetensors", metadata={"id": mid, "arch": entry["arch"]})
    if attack is not None and attack.state_dict():
        _save_attack_state(out / f"{mid}.attack.safetensors", attack.state_dict())
    p = entry["attack_params"]
    card = {
        "id": mid, "file": f"{mid}.safetensors", "arch": entry["arch"], "arch_kwargs": entry["arch_kwargs"],
        "num_classes": int(info["num_classes"]), "image_shape": info["image_shape"], "dataset": info["name"],
        "attack": entry["attack"], "attack_params": p if attack else None,
        "attack_info": attack.describe() if attack else None,
        "target": p.get("target") if attack else None, "poison_rate": p.get("poison_rate") if attack else None,
        "victim": p.get("victim") if attack else None,
        "seed": entry["seed"], "BA": round(ba, 5), "ASR": None if asr is None else round(asr, 5),
        "status": "failed" if fails else "ok", "failure": "; ".join(fails) or None,
        "gate": gate, "train": entry["train"], "train_time_s": stats["train_time_s"],
        "images_per_s": stats["images_per_s"], "device": stats["device"], "amp": stats["amp"],
        "versions": versions(), "mean": list(train.mean), "std": list(train.std),
    }
    _write_json(out / f"{mid}.json", card)  # written last: its presence marks the model as finished
    return card


def build_zoo(spec: str | os.PathLike | Mapping[str, Any], out: str | os.PathLike,
              device: str | torch.device | None = None, retry_failed: bool = False,
              on_model: Callable[[int, int, dict[str, Any], bool], None] | None = None,
              shard: tuple[int, int] | None = None) -> dict[str, Any]:
    """Build (or resume building) the zoo a spec describes into ``out``; returns the manifest.

    Args:
        spec: spec mapping, ``.toml``/``.yaml`` path or shipped spec name.
        out: output folder.
        device: training device (default CPU).
        retry_failed: retrain models whose card says ``failed`` (finished ``ok`` models are never retrained).
        on_model: called as ``on_model(i, n, card, reused)`` after each model, for progress reports.
        shard: ``(i, n)`` trains only the models whose position in the plan is ``i`` modulo ``n``, so that ``n``
            processes (on one GPU, or several machines sharing the folder) build one zoo together. Models of
            other shards already on disk are listed; the manifest is ``complete`` once every model is there
            (a final run without ``shard`` checks that and trains whatever is still missing).
    """
    spec = load_spec(spec)
    plan = _plan(spec)
    if shard is not None:
        k, n_shards = shard
        if not (isinstance(k, int) and isinstance(n_shards, int) and 0 <= k < n_shards):
            raise BanscanError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    dev = resolve_device(device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    full, test, info = _datasets(spec["dataset"])
    dfd = spec.get("defender", {})
    fraction, dseed = float(dfd.get("fraction", 0.1)), int(dfd.get("seed", 0))
    defender, train = _split(full, fraction, dseed)
    split_info = {"fraction": fraction, "seed": dseed, "size": len(defender), "n_train_used": len(train),
                  "stratified": True, "sha256": _fingerprint(defender),
                  "note": "held out of the training set before any model is trained; no zoo model saw it"}
    old = out / "manifest.json"
    if old.is_file():
        prev = load_manifest(out)
        if prev.get("defender_split", {}).get("sha256") != split_info["sha256"]:
            raise BanscanError(f"{out} holds a zoo built on other data or another defender split; use a new --out")
    manifest: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "spec": spec, "dataset": info,
                                "defender_split": split_info, "models": [], "complete": False}
    def finished() -> list[dict[str, Any]]:  # every model on disk, also those other shards finished meanwhile
        return [c for c in (_finished_card(out, e, False) for e in plan) if c is not None]

    n = len(plan)
    t_start = time.perf_counter()
    for i, entry in enumerate(progress(plan, "zoo", total=n), 1):
        card = _finished_card(out, entry, retry_failed)
        reused = card is not None
        if card is None and shard is not None and (i - 1) % shard[1] != shard[0]:
            continue  # another shard's model, not built yet
        if card is None:
            log.info("training %s (%d/%d)", entry["id"], i, n)
            card = _train_one(entry, train, test, info, out, dev)
        _write_json(old, {**manifest, "models": finished()})
        if on_model is not None:
            on_model(i, n, card, reused)
    manifest["models"] = finished()
    manifest["complete"] = len(manifest["models"]) == n
    manifest["build_time_s"] = round(time.perf_counter() - t_start, 1)
    _write_json(old, manifest)
    return manifest


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
    from .attacks import attack_from_card
    from .train import accuracy

    m = load_manifest(zoo_dir)
    test = test_data(zoo_dir, data_dir)
    dev = resolve_device(device)
    rows = []
    for card in m["models"]:
        model = load_zoo_model(zoo_dir, card, dev)
        ba = accuracy(model, test, device=dev)
        asr = None
        if card.get("attack"):
            asr = attack_success_rate(model, test, attack_from_card(zoo_dir, card, dev), device=dev)
        rows.append({"id": card["id"], "attack": card.get("attack"), "status": card.get("status"), "BA": ba,
                     "ASR": asr, "card_BA": card.get("BA"), "card_ASR": card.get("ASR")})
    return rows
