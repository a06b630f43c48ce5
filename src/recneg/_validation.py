"""Declarative parameter checks with a single message shape.

``require_int("n_candidates", cfg, low=1)`` raises
``ConfigError("n_candidates of DNSConfig must be an int >= 1, got 0")``.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from recneg.errors import ConfigError


def _owner(obj: Any) -> str:
    return type(obj).__name__ if obj is not None else "argument"


def _range_text(low, high, low_open=False, high_open=False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high}")
    return " and ".join(parts)


def require_int(name: str, obj: Any, low: int | None = None, high: int | None = None, value=None) -> int:
    v = getattr(obj, name) if value is None else value
    if isinstance(v, bool) or not isinstance(v, Integral):
        raise ConfigError(f"{name} of {_owner(obj)} must be an int, got {v!r}")
    n = int(v)
    if (low is not None and n < low) or (high is not None and n > high):
        raise ConfigError(f"{name} of {_owner(obj)} must be an int {_range_text(low, high)}, got {n}")
    return n


def require_float(
    name: str,
    obj: Any,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    value=None,
) -> float:
    v = getattr(obj, name) if value is None else value
    if isinstance(v, bool) or not isinstance(v, Real):
        raise ConfigError(f"{name} of {_owner(obj)} must be a number, got {v!r}")
    v = float(v)
    bad = not math.isfinite(v)
    if low is not None:
        bad |= v <= low if low_open else v < low
    if high is not None:
        bad |= v >= high if high_open else v > high
    if bad:
        rng = _range_text(low, high, low_open, high_open)
        raise ConfigError(f"{name} of {_owner(obj)} must be a finite number {rng}".rstrip() + f", got {v}")
    return v


def require_choice(name: str, obj: Any, choices, value=None):
    v = getattr(obj, name) if value is None else value
    if v not in choices:
        raise ConfigError(f"{name} of {_owner(obj)} must be one of {sorted(choices)}, got {v!r}")
    return v


def require_bool(name: str, obj: Any, value=None) -> bool:
    v = getattr(obj, name) if value is None else value
    if not isinstance(v, bool):
        raise ConfigError(f"{name} of {_owner(obj)} must be true or false, got {v!r}")
    return v
