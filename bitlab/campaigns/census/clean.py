"""The clean run over a chain: every layer's input and the logits, computed once with the naive
forward's calls and batches, and the per-layer quantities the later stages derive from them (cached
per layer: the float64 activations, the sums ``|W||x| + |b|``, the input planes, and any stage's own
per-layer result through :meth:`CleanRun.memo`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar, TypeVarTuple, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...evaluate import correct
from .rounding import bias_of, mix, weight_of

__all__ = ["CleanRun", "count_correct", "run_clean"]

V = TypeVar("V")
Ts = TypeVarTuple("Ts")


@dataclass(eq=False)
class CleanRun:
    """Clean activations of a chain: ``acts[l]`` is the input of layer ``l`` (``acts[-1]`` the logits)."""

    layers: list[nn.Module]
    acts: list[Tensor]
    batch_bounds: list[tuple[int, int]]  # (start, stop) of each batch, as the naive forward splits the data
    batch_acts: list[list[Tensor]]  # acts[l] per batch, each its own allocation like the naive run's
    y: Tensor
    ok: Tensor  # bool per sample: finite logits and argmax == label
    _acts64: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _abs_sums: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _planes: dict[int, Tensor] = field(default_factory=dict, repr=False)
    _signed_and_abs: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict, repr=False)
    _memo: dict[tuple[object, ...], object] = field(default_factory=dict, repr=False)

    def acts64(self, l: int) -> Tensor:
        """``acts[l]`` in float64."""
        got = self._acts64.get(l)
        if got is None:
            got = self._acts64[l] = self.acts[l].double()
        return got

    def abs_sums(self, l: int) -> Tensor:
        """sum |W||x| + |b| of the clean run at mixing layer ``l`` (float64, shape of its output)."""
        got = self._abs_sums.get(l)
        if got is None:
            m = self.layers[l]
            b = bias_of(m)
            b = None if b is None else b.double().abs()
            got = self._abs_sums[l] = mix(m, self.acts64(l).abs(), weight_of(m).double().abs(), b)
        return got

    def input_planes(self, l: int) -> Tensor:
        """Input planes of mixing layer ``l``: (N, fan_in, positions) float64."""
        got = self._planes.get(l)
        if got is None:
            m, x = self.layers[l], self.acts64(l)
            if isinstance(m, nn.Linear):
                got = x[:, :, None]
            else:
                assert isinstance(m, nn.Conv2d) and not isinstance(m.padding, str)
                got = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
            self._planes[l] = got
        return got

    def signed_and_abs(self, l: int) -> tuple[Tensor, Tensor | None]:
        """Weight and bias of mixing layer ``l`` stacked with their absolute values along the output
        dimension (float32): one call gives a layer's values and its sums ``|W||x| + |b|`` for ``x >= 0``."""
        got = self._signed_and_abs.get(l)
        if got is None:
            m = self.layers[l]
            W, b = weight_of(m), bias_of(m)
            got = (torch.cat([W, W.abs()]), None if b is None else torch.cat([b, b.abs()]))
            self._signed_and_abs[l] = got
        return got

    def memo(self, fn: Callable[[CleanRun, *Ts], V], *args: *Ts) -> V:
        """``fn(self, *args)``, computed once per run and arguments: a later stage's per-layer
        result (keyed by the function itself, typed by its return type)."""
        key = (fn, *args)
        if key in self._memo:
            return cast(V, self._memo[key])
        got = self._memo[key] = fn(self, *args)
        return got


def run_clean(layers: list[nn.Module], batches: list[tuple[Tensor, Tensor]]) -> CleanRun:
    """The clean run of the chain ``layers`` on the naive batches (call in ``torch.no_grad``)."""
    per_layer: list[list[Tensor]] = [[] for _ in range(len(layers) + 1)]
    bounds, start = [], 0
    with torch.no_grad():
        for x, _ in batches:
            h = x
            for l, m in enumerate(layers):
                # the batch itself for the first layer (as the naive run passes it); fresh copies of
                # the others (an in-place module must not touch the cache)
                per_layer[l].append(h if l == 0 else h.clone())
                h = m(h)
            per_layer[-1].append(h)
            bounds.append((start, start + len(x)))
            start += len(x)
    acts = [torch.cat(a) for a in per_layer]
    y = torch.cat([b[1] for b in batches])
    ok = correct(acts[-1], y)
    return CleanRun(layers, acts, bounds, per_layer, y, ok)


def count_correct(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> int:
    """Correct samples of a full forward, counted as :func:`bitlab.campaigns.batch_accuracy` does."""
    return sum(int(correct(model(x), yb).sum()) for x, yb in batches)
