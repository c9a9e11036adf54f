"""Random probe vectors of the stochastic estimators: Rademacher vectors (Hutchinson 1989) drawn from a
checked CPU ``torch.Generator``, and the integer-argument check the estimators share."""

from __future__ import annotations

import torch
from torch import Tensor

from ..validate import check_cpu_generator

__all__ = ["check_generator", "rademacher"]


def check_generator(generator: object) -> torch.Generator | None:
    """``generator`` itself if it is a CPU ``torch.Generator`` or None (torch's global generator): TypeError
    for another object, ValueError for a CUDA (non-CPU) generator, as the probes are drawn on the CPU."""
    return check_cpu_generator("generator", generator)


def rademacher(n: int, generator: torch.Generator | None, cols: int | None = None) -> Tensor:
    """Rademacher vector(s): one of length ``n``, or ``cols`` of them as the columns of an (n, cols) matrix,
    drawn one vector after another (the same draws as ``cols`` single calls)."""
    shape = (n,) if cols is None else (cols, n)
    z = torch.randint(0, 2, shape, generator=generator).to(torch.float64).mul_(2).sub_(1)
    return z if cols is None else z.T
