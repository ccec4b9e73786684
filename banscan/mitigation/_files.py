"""File-level mitigation: weights file in, repaired ``.safetensors`` plus a JSON model card out."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._utils import BanscanError, json_safe, write_atomic
from ..params import with_seed
from ..data import CIFAR10_MEAN, CIFAR10_STD, ImageData
from . import get_mitigation

CARD_SCHEMA = 1


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _load_defender_data(data: str | os.PathLike | ImageData, mean: Sequence[float], std: Sequence[float],
                        data_split: str) -> ImageData:
    if isinstance(data, ImageData):
        return data
    p = Path(data)
    if (p / "manifest.json").is_file():
        raise BanscanError(f"{p} is a zoo; pass its defender split, banscan.zoo.defender_data({str(p)!r}) (the "
                           "command line does this for a zoo folder given as --data)")
    from ..data import load_data

    return load_data(p, mean, std, split=data_split)


def mitigate_file(arch: str, weights: str | os.PathLike, data: str | os.PathLike | ImageData,
                  out: str | os.PathLike, method: str = "ban", arch_kwargs: Mapping[str, Any] | None = None,
                  num_classes: int = 10, mean: Sequence[float] = CIFAR10_MEAN, std: Sequence[float] = CIFAR10_STD,
                  params: Mapping[str, Any] | None = None, holdout: float = 0.1, seed: int = 0,
                  device: str | None = None, data_split: str = "test", input_size: int | None = None,
                  verify: str | None = None, verify_params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Repair the model in ``weights``; write ``out`` (.safetensors) and its model card ``out`` with ``.json``.

    Seventeen arguments: the library form of ``banscan mitigate``, one per option of that command (the model's
    description, the data's, the repair's and the verification's), each with a default but the first four.

    ``data`` (a data path as for :func:`banscan.load_data`, or :class:`ImageData`, e.g. a zoo's
    :func:`banscan.zoo.defender_data`; a zoo folder itself is refused) is split, stratified and seeded, into a part that repairs and a held-out ``holdout``
    share on which clean accuracy is measured before and after. The input file is only read. Returns the card.

    ``verify`` (a detector name, e.g. ``"nc"``) scans the model before and after the repair on the repair part
    (:func:`banscan.mitigation.evaluation.verify_repair`) and records it in the card as ``verification``: without
    the trigger, the only evidence a user has that the backdoor is gone.
    """
    from ..checkpoints import load_weights, save_weights
    from ..models import create_model
    from ..detectors import get_detector
    from .evaluation import evaluate_mitigation, verify_repair

    src, dst = Path(weights), Path(out)
    if dst.suffix != ".safetensors":
        raise BanscanError(f"output must be a .safetensors file, got {dst}")
    if dst.exists() and src.exists() and dst.resolve() == src.resolve():
        raise BanscanError(f"output {dst} is the input file; the input is never overwritten, choose another path")
    if not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise BanscanError(f"holdout must be a fraction in (0, 1), got {holdout!r}")
    mitigation = get_mitigation(method, **with_seed(params, seed, f"mitigation {method!r}"))
    if verify is not None:
        get_detector(verify, **dict(verify_params or {}))  # bad names and parameters fail before the repair
    model = create_model(arch, num_classes, **dict(arch_kwargs or {}))
    load_weights(model, src)
    sha_in = _sha256(src)
    if device:
        model = model.to(device)
    clean = _load_defender_data(data, mean, std, data_split)
    clean.check(num_classes=num_classes, input_size=input_size)
    n_hold = int(round(holdout * len(clean)))
    if n_hold < 1 or len(clean) - n_hold < 16:
        raise BanscanError(f"{len(clean)} clean images cannot be split into a repair part (>= 16 images) and a "
                           f"held-out {holdout:.0%}")
    held, fit = clean.split(n_hold, seed=seed)
    res = mitigation.repair(model, fit, device=device)
    ev = evaluate_mitigation(model, res.model, held, device=device)
    ver = (verify_repair(model, res.model, fit, verify, verify_params, method=method, seed=seed, device=device)
           if verify is not None else None)
    card = _card(dst, src, sha_in, arch, arch_kwargs, num_classes, clean, mitigation, res, seed, len(fit),
                 len(held), ev, ver)
    save_weights(res.model, dst, metadata={"source_sha256": sha_in, "method": method})
    card["sha256"] = _sha256(dst)
    if _sha256(src) != sha_in:  # cannot happen through banscan; a guard against a concurrent writer
        raise BanscanError(f"{src} changed while it was being repaired")
    write_atomic(dst.with_suffix(".json"), json.dumps(json_safe(card), indent=2, sort_keys=True).encode())
    return card


def _card(dst: Path, src: Path, sha_in: str, arch: str, arch_kwargs: Mapping[str, Any] | None, num_classes: int,
          clean: ImageData, mitigation: Any, res: Any, seed: int, n_repair: int, n_held: int,
          ev: Mapping[str, Any], ver: Mapping[str, Any] | None) -> dict[str, Any]:
    # Fourteen arguments: every fact the card records, gathered by mitigate_file; a plain record builder.
    return {
        "schema_version": CARD_SCHEMA,
        "kind": "banscan-mitigated-model",
        "file": dst.name,
        "source": {"path": str(src.resolve()), "sha256": sha_in},
        "arch": arch, "arch_kwargs": dict(arch_kwargs or {}), "num_classes": num_classes,
        "mean": list(clean.mean), "std": list(clean.std),
        "procedure": {"method": mitigation.name, "class": type(mitigation).__name__,
                      "summary": (type(mitigation).__doc__ or "").strip().splitlines()[0],
                      "module": type(mitigation).__module__},
        "config": res.config, "stats": res.stats, "timings": res.timings, "versions": res.versions,
        "device": res.device, "seed": seed,
        "data": {"source": clean.source, "n_images": len(clean), "n_repair": n_repair, "n_heldout": n_held,
                 "split_seed": seed},
        "evaluation": {"split": "held-out clean data", "BA_before": ev["BA_before"], "BA_after": ev["BA_after"],
                       "n": ev["n_test"]},
        "verification": ver,
    }
