"""Model registry: the CIFAR-style architectures backdoor papers use, plus users' own factories.

Every detector sees a model through one feature/head split (timm's ``forward_features``/``forward_head``);
see :class:`banscan.models.SplitModel`.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .._utils import BanscanError

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = fn
        return fn

    return deco


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def _resolve_factory(arch: str) -> Callable[..., nn.Module]:
    if arch in _REGISTRY:
        return _REGISTRY[arch]
    if ":" in arch:
        mod_name, _, attr = arch.partition(":")
        try:
            mod = importlib.import_module(mod_name)
        except ImportError as e:
            raise BanscanError(f"cannot import module {mod_name!r} for architecture {arch!r}: {e}") from None
        fn = getattr(mod, attr, None)
        if not callable(fn):
            raise BanscanError(f"{mod_name!r} has no callable {attr!r} (architecture {arch!r})")
        return fn
    raise BanscanError(
        f"unknown architecture {arch!r}; expected one of {', '.join(list_models())} or 'package.module:factory'"
    )


def create_model(arch: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build a registered architecture (or ``package.module:factory``) with ``num_classes`` outputs.

    Extra keyword arguments go to the factory (``base_width`` for the ResNets, ``width`` for VGG,
    ``width_mult`` for MobileNetV2, ``growth_rate`` for DenseNet).
    """
    fn = _resolve_factory(arch)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise BanscanError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    params = inspect.signature(fn).parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = [k for k in kwargs if k not in params and not accepts_any]
    if unknown:
        valid = [k for k in params if k != "num_classes"]
        raise BanscanError(f"architecture {arch!r} does not take {unknown}; it takes {valid}")
    if "num_classes" in params or accepts_any:
        kwargs["num_classes"] = num_classes
    try:
        model = fn(**kwargs)
    except (TypeError, ValueError) as e:
        raise BanscanError(f"could not build architecture {arch!r} with {kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise BanscanError(f"factory for {arch!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def parse_kwargs(text: str | None) -> dict[str, Any]:
    """Parse ``"base_width=16,flag=true,name=x"`` into typed keyword arguments."""
    out: dict[str, Any] = {}
    if not text:
        return out
    for item in text.split(","):
        if not item.strip():
            continue
        if "=" not in item:
            raise BanscanError(f"bad keyword argument {item!r}: expected key=value pairs separated by commas")
        k, v = (s.strip() for s in item.split("=", 1))
        low = v.lower()
        if low in ("true", "false"):
            out[k] = low == "true"
        else:
            for cast in (int, float):
                try:
                    out[k] = cast(v)
                    break
                except ValueError:
                    continue
            else:
                out[k] = v
    return out


from . import densenet, mobilenetv2, preact_resnet, resnet, vgg  # noqa: E402,F401  (registration)
from ._split import SplitModel, norm_layers  # noqa: E402

__all__ = ["create_model", "list_models", "register_model", "parse_kwargs", "SplitModel", "norm_layers"]
