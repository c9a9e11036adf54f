"""Random probe vectors of the stochastic estimators: Rademacher vectors (Hutchinson 1989) drawn on the CPU
(their generators checked by :func:`bitlab.validate.check_cpu_generator`)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["rademacher"]


def rademacher(n: int, generator: torch.Generator | None, cols: int | None = None) -> Tensor:
    """Rademacher vector(s): one of length ``n``, or ``cols`` of them as the columns of an (n, cols) matrix,
    drawn one vector after another (the same draws as ``cols`` single calls)."""
    shape = (n,) if cols is None else (cols, n)
    z = torch.randint(0, 2, shape, generator=generator).to(torch.float64).mul_(2).sub_(1)
    return z if cols is None else z.T
