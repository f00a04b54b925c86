"""Typed values read from a recipe or a head spec (YAML, or a run's model card): hostile input,
checked with one-line errors whose quoted values stay short."""

from __future__ import annotations

import math

from transferlab.errors import TransferlabError
from transferlab.safe_yaml import short_repr


def finite_number(where: str, name: str, value, optional: bool = False) -> float | None:
    """A finite number. YAML 1.1 reads `1e-3` (no dot) as a string: accept what float() reads."""
    if value is None and optional:
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value):
        raise TransferlabError(f"{where}: {name} must be a number, got {short_repr(value)}")
    return float(value)


def _finite(value: float) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an integer too large for a float: YAML and JSON read any number of digits
        return False
