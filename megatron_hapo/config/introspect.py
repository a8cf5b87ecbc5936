"""Walks the schema dataclasses: every key with its type, default and help.

Used by the key reference (``help_config``, ``docs/config.md``) and by the loader's "did you mean"
suggestions, so both always agree with the schema.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from omegaconf import MISSING

from megatron_hapo.config.schema import RootConfig


@dataclass(frozen=True)
class KeyInfo:
    """One schema key.

    path: dotted key (``algorithm.loss.clip_low``); type: readable type (``float``, ``a|b``, ``int|null``);
    default: the default rendered as YAML-ish text (``???`` = required); help: the one-line meaning;
    is_section: True for nested sections (their keys follow as separate entries).
    """

    path: str
    type: str
    default: str
    help: str
    is_section: bool


def _type_name(hint: Any) -> str:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return "|".join(parts) + ("|null" if type(None) in args else "")
    if origin in (list, tuple, dict):
        inner = ", ".join("..." if a is Ellipsis else _type_name(a) for a in args)
        return f"{origin.__name__}[{inner}]"
    if hint is Any:
        return "any"
    return getattr(hint, "__name__", str(hint))


def format_value(value: Any) -> str:
    """Render a default the way it would be written in YAML (inline)."""
    if value is MISSING:
        return "???"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return MISSING


def iter_keys(cls: type = RootConfig, prefix: str = "") -> Iterator[KeyInfo]:
    """Yield every key of the schema rooted at ``cls``, depth first, in declaration order."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        path = f"{prefix}{f.name}"
        hint = hints[f.name]
        help_text = f.metadata.get("help", "")
        if dataclasses.is_dataclass(hint):
            yield KeyInfo(path, hint.__name__, "", help_text, True)
            default = _default_of(f)
            yield from _iter_section(hint, default, path + ".")
        else:
            yield KeyInfo(path, _type_name(hint), format_value(_default_of(f)), help_text, False)


def _iter_section(cls: type, instance: Any, prefix: str) -> Iterator[KeyInfo]:
    # A section's default instance may differ from the class defaults (sampling.val); report the instance's.
    for info in iter_keys(cls, prefix):
        if info.is_section:
            yield info
            continue
        rel = info.path[len(prefix) :].split(".")
        value = instance
        for part in rel:
            value = getattr(value, part)
        yield dataclasses.replace(info, default=format_value(value))


@functools.cache
def all_paths() -> tuple[str, ...]:
    """Every dotted key of the root schema (sections included)."""
    return tuple(info.path for info in iter_keys())


def children(path: str) -> list[str]:
    """Names of the keys directly under section ``path`` ("" = the root); [] if ``path`` is not a section."""
    depth = 0 if not path else path.count(".") + 1
    prefix = f"{path}." if path else ""
    return [p.split(".")[depth] for p in all_paths() if p.startswith(prefix) and p.count(".") == depth]
