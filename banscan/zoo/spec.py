"""Zoo specs: read and validate a spec (TOML/YAML file, mapping or shipped name), expand it into one entry per
model."""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._utils import BanscanError, json_safe, toml_loads

_SPEC_DIR = Path(__file__).resolve().parent.parent / "specs"
_TOP_KEYS = {"name", "description", "dataset", "defender", "train", "gate", "models"}
_DATASET_KEYS = {"name", "path", "n_train", "n_test", "num_classes", "size", "seed", "task_seed", "noise",
                 "test_fraction"}
_GROUP_KEYS = {"name", "arch", "arch_kwargs", "attack", "attack_params", "targets", "poison_rates", "seeds",
               "train", "gate"}


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
            spec = toml_loads(text)
        except ValueError as e:  # TOMLDecodeError
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
    from ..attacks import list_attacks
    from ..models import list_models
    from ..train import TrainConfig

    unknown = set(spec) - _TOP_KEYS
    if unknown:
        raise BanscanError(f"spec: unknown sections {sorted(unknown)}; expected {sorted(_TOP_KEYS)}")
    ds = spec.get("dataset")
    if not isinstance(ds, dict) or ds.get("name") not in ("synthetic", "cifar10", "gtsrb"):
        raise BanscanError("spec: [dataset] needs name = 'synthetic', 'cifar10' or 'gtsrb'")
    bad = set(ds) - _DATASET_KEYS
    if bad:
        raise BanscanError(f"spec: unknown [dataset] keys {sorted(bad)}; expected {sorted(_DATASET_KEYS)}")
    test_frac = ds.get("test_fraction", 0.2)
    if not isinstance(test_frac, (int, float)) or not 0 < test_frac < 1:
        raise BanscanError(f"spec: [dataset] test_fraction must be in (0, 1), got {test_frac!r}")
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
    from ..attacks import get_attack
    from ..train import TrainConfig

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
