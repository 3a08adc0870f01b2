"""Checks of integer settings, written once so every setting refuses the same values.

``bool`` is an ``int`` in Python, so ``True`` would pass for 1: it is refused everywhere. The error
names the setting and the value it got; config code passes ``error=ConfigError``.
"""

from __future__ import annotations


def positive_int(name: str, value, error: type[Exception] = ValueError) -> int:
    """``value`` if it is an int >= 1 (not a bool); else ``error`` naming ``name`` and ``value``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise error(f"{name} must be a positive int, got {value!r}")
    return value


def non_negative_int(name: str, value, error: type[Exception] = ValueError) -> int:
    """``value`` if it is an int >= 0 (not a bool); else ``error`` naming ``name`` and ``value``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise error(f"{name} must be a non-negative int, got {value!r}")
    return value
