"""Argument checks shared by every public entry point: each raises ``TypeError``/``ValueError`` naming
the argument, the value given and the values allowed."""

from __future__ import annotations

import numpy as np

__all__ = ["check_int"]


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` as a Python int, if it is an integer (numpy integers too; not a bool) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        allowed = f"ints {lo}..{hi}" if hi is not None else f"ints >= {lo}"
        raise ValueError(f"{name}: {v} is out of range; allowed {allowed}")
    return v
