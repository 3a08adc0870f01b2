"""YAML job configs with ``key=value`` overrides from the command line, shared by the jobs.

``load_config("job.yaml", ["model.path=ckpt", "tasks.0.sample_cap=10"])`` reads the YAML file and
applies each override: the key is a dotted path through mappings (by key) and lists (by index, or
``-1`` for the last item); the value is parsed as YAML (``10`` is an int, ``true`` a bool, ``null``
None, ``[a, b]`` a list, anything else a str). ``save_config`` writes the resolved config beside a
job's outputs so a run can be repeated exactly.
"""

from __future__ import annotations

import os
from typing import Any

import yaml

from tte_fast.settings.schema import ConfigError


def load_config(path: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """The mapping in the YAML file ``path`` with ``overrides`` (``key=value`` strings) applied."""
    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({err})") from None
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(config).__name__}")
    return apply_overrides(config, overrides)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"a.b.0=3"`` -> (``["a", "b", "0"]``, ``3``); the value is parsed as YAML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form key=value")
    parts = key.strip().split(".")
    if any(not p for p in parts):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def apply_overrides(config: dict, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """``config`` (changed in place and returned) with each ``key=value`` override set.

    Missing mapping keys are created; a list index must exist, or equal the list's length to append.
    """
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = config
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            where = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                index = _list_index(node, part, where, text)
                if index == len(node):
                    node.append(value if last else {})
                elif last:
                    node[index] = value
                node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                parent = ".".join(parts[:depth]) or "(top)"
                raise ConfigError(
                    f"override {text!r}: {parent} is a {type(node).__name__}, not a mapping or list"
                )
    return config


def _list_index(node: list, part: str, where: str, text: str) -> int:
    try:
        index = int(part)
    except ValueError:
        raise ConfigError(f"override {text!r}: {where} indexes a list, so it must be an integer") from None
    if index < 0:
        index += len(node)
    if not 0 <= index <= len(node):
        raise ConfigError(f"override {text!r}: index {part} out of range (the list has {len(node)} items)")
    return index


def save_config(config: dict, path: str) -> str:
    """Write ``config`` as YAML (keys in their given order) to ``path``; returns the path."""
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False, allow_unicode=True)
    return path
