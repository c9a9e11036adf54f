"""Argument checks shared by every public entry point: each raises ``TypeError``/``ValueError`` naming
the argument, the value given and the values allowed."""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["check_int", "check_number", "check_generator", "check_cpu_generator"]


def check_int(name: str, value: object, lo: int, hi: int | None = None) -> int:
    """``value`` as a Python int, if it is an integer (numpy integers too; not a bool) in ``lo..hi``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        allowed = f"ints {lo}..{hi}" if hi is not None else f"ints >= {lo}"
        raise ValueError(f"{name}: {v} is out of range; allowed {allowed}")
    return v


def check_number(
    name: str,
    value: object,
    lo: float | None = None,
    hi: float | None = None,
    *,
    open_lo: bool = False,
    open_hi: bool = False,
) -> float:
    """``value`` as a float, if it is a real number (not a bool, not NaN) within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise TypeError(f"{name}: expected a number, got {type(value).__name__} {value!r}")
    v = float(value)
    too_low = lo is not None and (v <= lo if open_lo else v < lo)
    too_high = hi is not None and (v >= hi if open_hi else v > hi)
    if math.isnan(v) or too_low or too_high:
        left = "(-inf" if lo is None else ("(" if open_lo else "[") + f"{lo:g}"
        right = "inf)" if hi is None else f"{hi:g}" + (")" if open_hi else "]")
        raise ValueError(f"{name}: {value!r}; allowed numbers in {left}, {right}")
    return v


def check_generator(name: str, generator: object) -> torch.Generator | None:
    """``generator`` if it is None or a ``torch.Generator`` (a seed is not: pass
    ``torch.Generator().manual_seed(seed)``)."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"{name}: expected None or a torch.Generator, got {type(generator).__name__} {generator!r} "
            "(for a seed, pass torch.Generator().manual_seed(seed))"
        )
    return generator


def check_cpu_generator(name: str, generator: object) -> torch.Generator | None:
    """``generator`` if it is None or a CPU ``torch.Generator`` (:func:`check_generator`, then the device):
    bitlab draws its random numbers on the CPU and moves them to each tensor's device."""
    g = check_generator(name, generator)
    if g is not None and g.device.type != "cpu":
        raise ValueError(
            f"{name}: a {g.device.type} generator; bitlab draws its random numbers (fault sites, probes, "
            "directions, augmentations) on the CPU, so pass a CPU torch.Generator() (the draws are moved to "
            "each tensor's device)"
        )
    return g
