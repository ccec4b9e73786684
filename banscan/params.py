"""Algorithm parameters as every command takes them: ``--preset NAME``, ``--params FILE``, ``--param KEY=VALUE``.

An algorithm's parameters are its constructor's keyword arguments. ``--param`` values are typed from the
constructor (annotation, else default): ``int``, ``float``, ``bool`` (true/false/yes/no/1/0/on/off), ``str``,
``None`` (none/null); other types are read as JSON, else as text. A class may define ``presets: dict[str, dict]``.
Later sources win: preset < params file < the command's older flags < ``--param``. The seed is never a
parameter: it is the command's ``--seed`` (the library functions' ``seed`` argument), one rule everywhere.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ._utils import BanscanError, toml_loads

_TRUE, _FALSE, _NONE = ("true", "yes", "on", "1"), ("false", "no", "off", "0"), ("none", "null")


def accepted(cls: type) -> dict[str, inspect.Parameter]:
    """The keyword parameters of ``cls``'s constructor."""
    return {k: p for k, p in inspect.signature(cls.__init__).parameters.items()
            if k != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}


def reject_seed(params: Mapping[str, Any], what: str) -> None:
    if "seed" in params:
        raise BanscanError(f"{what}: 'seed' is not a parameter; set the seed with --seed (the seed argument)")


def with_seed(params: Mapping[str, Any] | None, seed: int, what: str) -> dict[str, Any]:
    """``params`` plus ``seed``, refusing a ``seed`` inside ``params`` (the library's form of the rule)."""
    reject_seed(params or {}, what)
    return {**dict(params or {}), "seed": seed}


def check_keys(cls: type, params: Mapping[str, Any], what: str) -> None:
    """Refuse ``seed`` and any key the constructor does not take, listing the valid ones."""
    reject_seed(params, what)
    valid = sorted(set(accepted(cls)) - {"seed"})
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise BanscanError(f"{what} does not take {unknown}; valid keys: {', '.join(valid)}")


def _types(p: inspect.Parameter) -> list[str]:
    ann = p.annotation
    if isinstance(ann, type):
        ann = ann.__name__
    if isinstance(ann, str) and ann:
        return [t.strip() for t in re.sub(r"^Optional\[(.*)\]$", r"\1 | None", ann).split("|")]
    if p.default is None:
        return ["None", "any"]
    return [type(p.default).__name__] if p.default is not p.empty else ["any"]


def parse_value(cls: type, key: str, text: str, what: str) -> Any:
    """``text`` as the type ``cls``'s constructor declares for ``key``."""
    check_keys(cls, {key: None}, what)
    types, low = _types(accepted(cls)[key]), text.strip().lower()
    if "None" in types and low in _NONE:
        return None
    for t in types:
        if t == "bool" and low in _TRUE + _FALSE:
            return low in _TRUE
        if t in ("int", "float"):
            try:
                return int(text) if t == "int" else float(text)
            except ValueError:
                continue
        if t == "str":
            return text
    if all(t in ("int", "float", "bool", "str", "None") for t in types):
        raise BanscanError(f"{what}: {key}={text!r} is not a {' or '.join(types)}")
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def split_pair(item: str, flag: str = "--param") -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise BanscanError(f"{flag} takes KEY=VALUE, got {item!r}")
    return key.strip(), value.strip()


def read_file(path: str | Path, flag: str = "--params") -> dict[str, Any]:
    """A TOML (``.toml``) or JSON file holding one table of parameters (or one table per method)."""
    p = Path(path)
    if not p.is_file():
        raise BanscanError(f"{flag} {path}: no such file")
    try:
        if p.suffix == ".toml":
            out = toml_loads(p.read_text())
        else:
            out = json.loads(p.read_text())
    except ValueError as e:  # TOMLDecodeError and json.JSONDecodeError are ValueErrors
        raise BanscanError(f"{flag} {path} is not valid {'TOML' if p.suffix == '.toml' else 'JSON'}: {e}") from None
    if not isinstance(out, dict):
        raise BanscanError(f"{flag} {path} must hold a table of parameters")
    return out


def resolve(cls: type, what: str, preset: str | None = None, file: Mapping[str, Any] | None = None,
            aliases: Mapping[str, Any] | None = None, pairs: Iterable[str] = ()) -> dict[str, Any]:
    """Merge one algorithm's parameters: preset < file < aliases (older flags) < ``KEY=VALUE`` pairs."""
    out: dict[str, Any] = {}
    if preset is not None:
        presets = getattr(cls, "presets", None) or {}
        if preset not in presets:
            raise BanscanError(f"{what} has no preset {preset!r}; available: {', '.join(sorted(presets)) or 'none'}")
        out.update(presets[preset])
    for src in (file, aliases):
        if src is not None and not isinstance(src, Mapping):
            raise BanscanError(f"{what}: parameters must be a table, got {src!r}")
        out.update(src or {})
    for item in pairs:
        key, text = split_pair(item)
        out[key] = parse_value(cls, key, text, what)
    check_keys(cls, out, what)
    return out


def resolve_many(classes: Mapping[str, type], presets: Sequence[str] = (), file: Mapping[str, Any] | None = None,
                 aliases: Mapping[str, Mapping[str, Any]] | None = None, pairs: Sequence[str] = (),
                 prefix: str = "") -> dict[str, dict[str, Any]]:
    """:func:`resolve` for several methods at once (``banscan bench``): ``pairs`` are ``METHOD.KEY=VALUE``,
    ``presets`` ``METHOD.NAME`` or a bare ``NAME`` for every method, ``file`` one table per method; only
    methods with parameters appear in the result. ``prefix`` (e.g. ``"mitigate."``) precedes each method name in
    ``pairs`` and ``presets``, not in ``file``."""
    names = {prefix + m: m for m in classes}

    def method_of(item: str, flag: str) -> tuple[str, str]:
        head, _, rest = item.rpartition(".") if flag == "--preset" else item.partition("=")[0].rpartition(".")
        if head not in names:
            raise BanscanError(f"{flag} {item!r} must start with a method's name and a dot, one of "
                               f"{', '.join(sorted(names))}")
        return names[head], item[len(head) + 1:]

    file = dict(file or {})
    extra = sorted(set(file) - set(classes))
    if extra:
        raise BanscanError(f"--params names {extra}, which are not among the methods {sorted(classes)}")
    chosen: dict[str, str] = {}
    for item in presets:
        if "." in item:
            m, name = method_of(item, "--preset")
            chosen[m] = name
        else:
            chosen.update({m: item for m in classes})
    per_pairs: dict[str, list[str]] = {}
    for item in pairs:
        m, rest = method_of(item, "--param")
        per_pairs.setdefault(m, []).append(rest)
    out = {}
    for full, m in names.items():
        p = resolve(classes[m], full, chosen.get(m), file.get(m), (aliases or {}).get(m), per_pairs.get(m, ()))
        if p:
            out[m] = p
    return out
