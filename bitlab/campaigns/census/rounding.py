"""Float32 rounding constants of the census's bounds (Higham's gamma_n with a safety factor, underflow
slack, the overflow limit) and the mixing-layer arithmetic they bound: fan-in and the layer's op."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "F32_MAX",
    "SAFETY",
    "SAFE_MAX",
    "TINY",
    "U32",
    "bias_of",
    "dot_gamma",
    "fan_in",
    "gamma",
    "mix",
    "weight_of",
]

F32_MAX = float(torch.finfo(torch.float32).max)
SAFE_MAX = F32_MAX * (1.0 - 2.0**-12)  # no naive partial sum can overflow below this
SAFETY = 2.0  # multiplies the classical gamma_n bound
U32 = 2.0**-24  # unit roundoff of float32
TINY = 2.0**-125  # per-term absolute slack for underflow / flushed subnormals


def gamma(n: int) -> float:
    """``SAFETY * gamma_n``: a float32 dot product of ``n`` terms in any order is within this times
    ``sum |w||x|`` of the exact one (Higham eq. 3.5)."""
    nu = n * U32
    return SAFETY * nu / (1.0 - nu)


def weight_of(m: nn.Module) -> Tensor:
    """The weight of Linear/Conv2d ``m``, detached."""
    w = m.weight
    assert isinstance(w, Tensor)
    return w.detach()


def bias_of(m: nn.Module) -> Tensor | None:
    """The bias of Linear/Conv2d ``m``, detached, or None."""
    b = m.bias
    assert b is None or isinstance(b, Tensor)
    return None if b is None else b.detach()


def fan_in(m: nn.Module) -> int:
    """Inputs per output element of a Linear/Conv2d (its weights per output unit/channel)."""
    return int(weight_of(m)[0].numel())


def dot_gamma(m: nn.Module) -> float:
    """The rounding factor of one output element of mixing layer ``m``: its fan-in, the bias and one
    more term of slack."""
    return gamma(fan_in(m) + 2)


def mix(m: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The op of Linear/Conv2d ``m`` with the given weight and bias, in the dtype of the arguments
    (float64 for the bounds, float32 for the recheck's rerun)."""
    if isinstance(m, nn.Linear):
        return F.linear(x, weight, bias)
    assert isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)  # see layers.supported
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation)
