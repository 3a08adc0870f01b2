"""Typed configs from nested mappings: one builder and one error for every config the jobs read.

:func:`build` turns a mapping (a loaded YAML or JSON file) into a dataclass, field by field from its
type hints: nested dataclasses, ``list[...]``, ``tuple[...]``, ``X | None``, ``int`` / ``float`` /
``str`` / ``bool`` / ``dict``. An unknown key, a missing setting or a wrong type is a
:class:`ConfigError` naming its dotted path (``train.batch_size``), the path an override would use.
A class with a ``from_mapping(raw, path)`` classmethod builds itself (for flat sections that hold
another settings class). Fields with ``init=False`` are not settings and are never read.
"""

from __future__ import annotations

import dataclasses
import types
import typing


class ConfigError(ValueError):
    """A config file or an override that cannot be used; the message names the file or key."""


def build(cls, raw, path: str = "", label: str | None = None):
    """An instance of the dataclass ``cls`` from the mapping ``raw``; ``path`` is its dotted
    prefix (``"train."``), ``label`` how messages name the section (default: the path)."""
    if hasattr(cls, "from_mapping"):
        return cls.from_mapping(raw, path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path.rstrip('.') or 'the config'} must be a mapping, got {type(raw).__name__}")
    settings = [f for f in dataclasses.fields(cls) if f.init]
    names = {f.name for f in settings}
    unknown = sorted(set(raw) - names)
    if unknown:
        label = label or path.rstrip(".")
        section = f"{label}: unknown keys {unknown}" if label else "unknown top-level keys"
        raise ConfigError(
            f"unknown setting(s) {[path + k for k in unknown]} ({section}); known: {sorted(names)}"
        )
    hints = typing.get_type_hints(cls)
    values = {}
    for f in settings:
        if f.name in raw:
            values[f.name] = _value(hints[f.name], raw[f.name], path + f.name)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing setting {path + f.name!r}")
    return cls(**values)


def _value(hint, value, path: str):
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (hint,) = [a for a in args if a is not type(None)]
        return _value(hint, value, path)
    if dataclasses.is_dataclass(hint):
        name = value.get("name") if isinstance(value, dict) else None
        label = f"{path} ({name})" if isinstance(name, str) else None  # list items show their name
        return build(hint, value, path + ".", label)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return [_value(args[0], v, f"{path}.{i}") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{path} must be a list of {len(args)} values, got {value!r}")
        return tuple(_value(a, v, f"{path}.{i}") for i, (a, v) in enumerate(zip(args, value)))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 5e-5 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if hint is dict and isinstance(value, dict):
        return dict(value)
    if hint in (int, str, bool) and isinstance(value, hint) and not (hint is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{path} must be {getattr(hint, '__name__', hint)}, got {value!r}")
