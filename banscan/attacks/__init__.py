"""Attack registry. Adding an attack: one module with ``@register_attack("name")`` and one import below."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .._utils import BanscanError, Registry
from ._base import Attack

_REGISTRY = Registry("attack")


def register_attack(name: str) -> Callable[[type[Attack]], type[Attack]]:
    return _REGISTRY.register(name)


def list_attacks() -> list[str]:
    return _REGISTRY.names()


def get_attack(name: str, **params: Any) -> Attack:
    """Instantiate a registered attack by name with keyword hyperparameters (unknown ones are refused)."""
    return _REGISTRY.create(name, **params)


def attack_from_card(zoo_dir: str | os.PathLike | None, card: Mapping[str, Any], device: Any = None,
                     state: Mapping[str, Any] | None = None) -> Attack:
    """Rebuild a zoo model's attack (trigger state included) from its card.

    The trigger state is read from ``ZOO/<id>.attack.safetensors``, or given as ``state`` (tensors, or that file's
    bytes: what a Ray task receives; ``zoo_dir`` may then be ``None``). Returns a built :class:`Attack` with
    ``apply(x01, y) -> x01`` and ``target_labels(y)``.
    """
    from safetensors.torch import load_file

    if not card.get("attack"):
        raise BanscanError(f"model {card.get('id')!r} is clean; it has no attack")
    attack = get_attack(card["attack"], **dict(card.get("attack_params") or {}))
    shape = card.get("image_shape")
    if not shape:
        raise BanscanError(f"card of {card.get('id')!r} has no image_shape; rebuild the zoo")
    attack.build(tuple(shape), int(card["num_classes"]), device)
    if state is not None and attack.state_dict():
        if isinstance(state, (bytes, bytearray)):
            from safetensors.torch import load

            state = load(bytes(state))
        attack.load_state_dict(dict(state))
        return attack
    f = Path(zoo_dir or ".") / f"{card['id']}.attack.safetensors"
    if attack.state_dict():
        if not f.is_file():
            raise BanscanError(f"{f} is missing: attack {card['attack']!r} needs its saved trigger state")
        try:
            state = load_file(str(f))
        except Exception as e:
            raise BanscanError(f"{f}: not a valid safetensors file ({type(e).__name__}: {e})") from None
        attack.load_state_dict(state)
    return attack


from .adap_blend import AdapBlend  # noqa: E402
from .badnets import BadNets  # noqa: E402
from .blend import Blend  # noqa: E402
from .bpp import Bpp  # noqa: E402
from .iad import IAD  # noqa: E402
from .lc import LabelConsistent  # noqa: E402
from .sig import SIG  # noqa: E402
from .ssdt import SSDT  # noqa: E402
from .wanet import WaNet  # noqa: E402

__all__ = ["Attack", "AdapBlend", "BadNets", "Blend", "Bpp", "IAD", "LabelConsistent", "SIG", "SSDT", "WaNet",
           "attack_from_card", "get_attack", "list_attacks", "register_attack"]
