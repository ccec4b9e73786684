"""A zoo on disk: its data and defender split, ``manifest.json``, model cards and weights (layout in
``docs/CONTRACTS.md``). Only the driver of a build or a benchmark reads and writes these files."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .._utils import BanscanError, json_safe, write_atomic
from ..data import CIFAR10_MEAN, CIFAR10_STD, ImageData, load_data
from ..jsonl import check_schema

SCHEMA_VERSION = 1
_CACHE: dict[str, ImageData] = {}


def _default_data_dir() -> Path:
    env = os.environ.get("BANSCAN_DATA_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _npz(root: Path, rel: str, what: str) -> ImageData:
    f = root / rel
    key = str(f.resolve())
    if key not in _CACHE:
        if not f.is_file():
            raise BanscanError(f"{what} file {f} not found; set BANSCAN_DATA_DIR or the spec's dataset.path to the "
                               f"folder holding {rel}")
        _CACHE[key] = load_data(f, CIFAR10_MEAN, CIFAR10_STD)
    return _CACHE[key]


def _proportional_split(data: ImageData, fraction: float, seed: int) -> tuple[ImageData, ImageData]:
    """Seeded split keeping each class's share: ``round(fraction * n_c)`` of class ``c`` go to the first part.

    (:meth:`ImageData.split` takes classes in turns, which balances the first part; on imbalanced data such as
    GTSRB that would drain the small classes from the second.)
    """
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(int(seed)))
    y = data.y[perm]
    first = torch.cat([perm[y == c][:round(fraction * int((y == c).sum()))] for c in torch.unique(y)])
    rest = torch.ones(len(data), dtype=torch.bool)
    rest[first] = False
    return data.subset(first.sort().values), data.subset(torch.nonzero(rest).flatten())


def _channel_stats(data: ImageData) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of ``data``'s pixels in ``[0, 1]``."""
    x = data.x.double().div_(255).transpose(0, 1).flatten(1)
    return tuple(x.mean(1).tolist()), tuple(x.std(1).tolist())


def _datasets(ds: Mapping[str, Any]) -> tuple[ImageData, ImageData, dict[str, Any]]:
    """(full training set, test set, JSON description) for a spec's or manifest's dataset section."""
    root = Path(ds["path"]) if ds.get("path") else _default_data_dir()
    if ds["name"] == "synthetic":
        from ..synthetic import make_synthetic

        kw = {"num_classes": int(ds.get("num_classes", 4)), "size": int(ds.get("size", 16)),
              "task_seed": int(ds.get("task_seed", 0)), "noise": float(ds.get("noise", 0.12))}
        seed = int(ds.get("seed", 0))
        train = make_synthetic(int(ds.get("n_train", 2000)), seed=seed, **kw)
        test = make_synthetic(int(ds.get("n_test", 1000)), seed=seed + 1, **kw)
        info = {"name": "synthetic", "path": None, "n_train": len(train), "n_test": len(test), "seed": seed, **kw}
    elif ds["name"] == "gtsrb":
        # Only GTSRB's official test set is at hand (12,630 images, 43 classes): a seeded, stratified share of it is
        # the zoo's test set, the rest its training set, normalised with the training part's own channel statistics.
        full = _npz(root, "gtsrb/test.npz", "GTSRB")
        frac, seed = float(ds.get("test_fraction", 0.2)), int(ds.get("seed", 0))
        test, train = _proportional_split(full, frac, seed)
        mean, std = _channel_stats(train)
        train, test = (replace(d, mean=mean, std=std) for d in (train, test))
        info = {"name": "gtsrb", "path": str(root.resolve()), "n_train": len(train), "n_test": len(test),
                "num_classes": full.num_classes, "seed": seed, "test_fraction": frac}
    else:
        train, test = _npz(root, "cifar10/train.npz", "CIFAR-10"), _npz(root, "cifar10/test.npz", "CIFAR-10")
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


def _write_json(path: Path, obj: Any) -> None:
    write_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=True).encode())


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
    if isinstance(card, str):
        cards = {c["id"]: c for c in load_manifest(zoo_dir)["models"]}
        if card not in cards:
            raise BanscanError(f"no model {card!r} in {zoo_dir}; it has {sorted(cards)[:10]}...")
        card = cards[card]
    return model_from_card(card, Path(zoo_dir) / card["file"], device)


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


@dataclass(frozen=True)
class ZooCard:
    """One zoo model's card (``<id>.json`` and the manifest's ``models``); JSON-safe, versioned like
    :class:`banscan.detectors.DetectionResult`. Rates (``BA``, ``ASR``) are fractions in ``[0, 1]``."""

    schema_version: ClassVar[int] = 1
    id: str
    file: str
    arch: str
    arch_kwargs: dict[str, Any]
    num_classes: int
    image_shape: list[int]
    dataset: str
    attack: str | None
    attack_params: dict[str, Any] | None
    attack_info: dict[str, Any] | None
    target: int | None
    poison_rate: float | None
    victim: int | None
    seed: int
    BA: float
    ASR: float | None
    status: str  # "ok" | "failed"
    failure: str | None
    gate: dict[str, float]
    train: dict[str, Any]
    train_time_s: float
    images_per_s: float
    device: str
    amp: bool
    versions: dict[str, str]
    mean: list[float]
    std: list[float]
    extra: dict[str, Any] = field(default_factory=dict)  # keys of newer writers, kept on a round trip

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        return json_safe({**extra, **d, "schema_version": self.schema_version})

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ZooCard:
        """Read a card; cards written before the schema was versioned carry no ``schema_version`` and are v1."""
        check_schema(d, cls.schema_version, f"zoo card {d.get('id', '?')}")
        names = {f.name for f in fields(cls)} - {"extra"}
        missing = sorted(k for k in names if k not in d and k not in ("attack_info", "victim", "amp"))
        if missing:
            raise BanscanError(f"zoo card {d.get('id', '?')} lacks {missing}")
        kw = {k: d.get(k) for k in names}
        return cls(**kw, extra={k: v for k, v in d.items() if k not in names and k != "schema_version"})


def model_from_card(card: Mapping[str, Any], weights: bytes | str | os.PathLike,
                    device: str | torch.device | None = None) -> nn.Module:
    """The model a card describes, with its weights from a safetensors file or that file's bytes (what a Ray task
    receives), in eval mode."""
    from ..checkpoints import load_weights
    from ..models import create_model

    model = create_model(card["arch"], int(card["num_classes"]), **dict(card.get("arch_kwargs") or {}))
    if isinstance(weights, bytes):
        from safetensors.torch import load

        sd = load(weights)
        model.load_state_dict(sd, strict=True)
    else:
        load_weights(model, weights)
    if device is not None:
        model.to(device)
    return model.eval()
