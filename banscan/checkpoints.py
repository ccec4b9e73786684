"""Safe checkpoint I/O: safetensors or ``torch.load(weights_only=True)``, strict loading, clear errors.

A backdoor scanner loads hostile files, so nothing here unpickles arbitrary objects or imports code named
inside a file.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ._utils import BanscanError, write_atomic

__all__ = ["read_state_dict", "load_weights", "save_weights", "weights_bytes"]

_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model", "netC", "net", "module")


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside the containers people use, and drop ``module.`` prefixes."""
    seen = 0
    while isinstance(obj, Mapping) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _CONTAINER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            raise BanscanError(
                f"{path}: no state dict found; top-level keys are {sorted(map(str, obj))[:12]}, expected tensors "
                f"or one of the containers {list(_CONTAINER_KEYS)}"
            )
        seen += 1
        if seen > 4:
            raise BanscanError(f"{path}: containers nested too deeply")
    if not isinstance(obj, Mapping):
        raise BanscanError(f"{path}: holds a {type(obj).__name__}, expected a state dict of tensors")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or PyTorch file into a plain state dict, without unpickling objects."""
    p = Path(path)
    if not p.is_file():
        raise BanscanError(f"weights file not found: {p}")
    if p.stat().st_size == 0:
        raise BanscanError(f"weights file is empty: {p}")
    with open(p, "rb") as fh:
        head = fh.read(16)
    is_safetensors = p.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{")
    if is_safetensors:
        from safetensors.torch import load_file

        try:
            return _unwrap(load_file(str(p)), p)
        except BanscanError:
            raise
        except Exception as e:
            raise BanscanError(f"{p}: not a valid safetensors file ({type(e).__name__}: {e})") from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise BanscanError(
            f"{p}: refused to load: the file contains pickled objects beyond tensors and plain containers "
            f"(weights_only=True). banscan never unpickles code from a model file; re-save the weights as "
            f"a state dict or .safetensors. Detail: {first}"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise BanscanError(f"{p}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    return _unwrap(obj, p)


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights strictly into ``model`` (in place) and return it.

    Missing or unexpected keys and shape mismatches raise :class:`BanscanError` naming them; non-finite
    weights are refused, since they would silently make every verdict meaningless.
    """
    sd = read_state_dict(path)
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:5]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:5]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        hint = ""
        head_mismatch = [s for s in shapes if s.split(":")[0].rsplit(".", 1)[0] in _head_names(model)]
        if head_mismatch and len(shapes) == len(head_mismatch):
            hint = " The mismatch is only in the classifier: check the number of classes."
        conv = next((k for k in own if k in sd and sd[k].dim() == 4 and sd[k].shape != own[k].shape), None)
        if conv and not (missing or unexpected):  # same layers, other channel counts: another width
            hint = (f" The layers are the same but {conv} has {sd[conv].shape[0]} output channels in the file and "
                    f"{own[conv].shape[0]} in the model: the model was trained at another width; set the "
                    "architecture's width argument (--arch-kwargs; `banscan models` lists them).")
        raise BanscanError(
            f"{path} does not match architecture {type(model).__name__}: " + "; ".join(parts) + "." + hint
        )
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise BanscanError(f"{path}: non-finite (NaN/Inf) values in {len(bad)} tensors, e.g. {bad[:3]}")
    model.load_state_dict(sd, strict=True)
    return model


def _head_names(model: nn.Module) -> set[str]:
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return set(linears[-1:])


def weights_bytes(model: nn.Module | Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> bytes:
    """A model's (or a state dict's) ``.safetensors`` file as bytes; ``metadata`` is stored as JSON under
    ``"banscan"`` in the file's header."""
    from safetensors.torch import save

    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    meta = {"format": "pt"}
    if metadata:
        meta["banscan"] = json.dumps(metadata, sort_keys=True, default=str)
    return save({k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}, metadata=meta)


def save_weights(model: nn.Module | Mapping[str, torch.Tensor], path: str | os.PathLike,
                 metadata: Mapping[str, Any] | None = None) -> Path:
    """Write a ``.safetensors`` file atomically (a half-written file never appears under ``path``)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(p, weights_bytes(model, metadata))
    return p
