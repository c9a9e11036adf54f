"""The chain a fast census walks: the modules an ``nn.Sequential`` calls in order, which of them the
bounds cover, and the elementwise / per-channel ops applied as the naive forward applies them."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ELEMENTWISE",
    "FLOAT_DTYPES",
    "MIXING",
    "apply_elementwise",
    "chain_layers",
    "max_pool",
    "owner",
    "route",
    "supported",
]

ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
MIXING = (nn.Linear, nn.Conv2d)
#: the weight dtypes of the mixing layers the exact per-channel path runs in (their own arithmetic)
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def chain_layers(model: nn.Module) -> list[nn.Module] | None:
    """The modules an ``nn.Sequential`` (nested ones flattened) calls in order, or None."""
    if not isinstance(model, nn.Sequential) or type(model).forward is not nn.Sequential.forward:
        return None
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Sequential):
            sub = chain_layers(m)
            if sub is None:
                return None
            out += sub
        else:
            out.append(m)
    return out


def supported(m: nn.Module) -> bool:
    """Whether the exact per-channel path covers module ``m`` (any of :data:`FLOAT_DTYPES`; the
    bounds also need float32 on the CPU, see :func:`~.screen.uncertified_reason`)."""
    if isinstance(m, nn.Linear):
        return m.weight.dtype in FLOAT_DTYPES
    if isinstance(m, nn.Conv2d):
        return (
            m.groups == 1
            and m.padding_mode == "zeros"
            and not isinstance(m.padding, str)
            and m.weight.dtype in FLOAT_DTYPES
        )
    if isinstance(m, nn.MaxPool2d):
        return not m.return_indices
    if isinstance(m, nn.Flatten):
        return m.start_dim == 1 and m.end_dim == -1
    return isinstance(m, ELEMENTWISE)


def _pair(v: int | tuple[int, ...]) -> tuple[int, ...]:
    return (v, v) if isinstance(v, int) else tuple(v)


def max_pool(m: nn.MaxPool2d, x: Tensor) -> Tensor:
    """``m(x)``, the same value for every element (max is exact). The common 2x2 / stride 2 pool is
    taken as the maximum of strided slices (pairs of rows, then pairs of columns), 3-25x faster
    than ``F.max_pool2d`` on small planes on CPU; like it, it propagates NaN. (Where a window holds
    both -0.0 and +0.0 the sign of the zero may differ, which no later op can turn into a different
    class or finiteness.)"""
    two = (2, 2)
    if (
        _pair(m.kernel_size) == two
        and _pair(m.stride or m.kernel_size) == two
        and _pair(m.padding) == (0, 0)
        and _pair(m.dilation) == (1, 1)
        and not m.ceil_mode
        and x.dim() >= 3
    ):
        H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        rows = torch.maximum(x[..., 0:H:2, :W], x[..., 1:H:2, :W])  # pairs of rows first: long inner runs
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])
    return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


def apply_elementwise(m: nn.Module, x: Tensor) -> Tensor:
    """An elementwise / per-window module applied as the naive forward applies it (values equal)."""
    return max_pool(m, x) if isinstance(m, nn.MaxPool2d) else m(x)


def route(layers: list[nn.Module], l: int) -> tuple[list[int], int | None]:
    """Layers after ``l``: the elementwise ones before the next mixing layer, and that layer (or None)."""
    t = l + 1
    while t < len(layers) and isinstance(layers[t], ELEMENTWISE):
        t += 1
    return list(range(l + 1, t)), (None if t == len(layers) else t)


def owner(layers: list[nn.Module], model: nn.Module, name: str) -> tuple[int, str] | None:
    """(layer position, 'weight' | 'bias' | ...) of a parameter, if exactly one chain layer owns it directly."""
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    hits = [l for l, m in enumerate(layers) if m is mod]
    if len(hits) != 1:
        return None
    return hits[0], attr
