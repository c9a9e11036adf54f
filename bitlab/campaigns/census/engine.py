"""Fast exact single-bit census: the relative accuracy drop (RAD) of every single-bit flip.

Pranto et al. 2025 measure a model's sensitivity to parameter corruption by flipping each bit of
each parameter on its own and recording RAD = (acc_clean - acc_flipped) / acc_clean. The naive
loop (:func:`bitlab.campaigns.census.naive_bit_census`: flip, full forward, restore) costs one forward
pass per flip. :func:`bit_census` returns *the same frame* (same rows, same accuracy floats,
NaN/Inf flips included) much faster, by sharing work across flips.

How (for models that are an ``nn.Sequential`` chain, nested ones included):

1. The clean activations at every layer are computed once, with the same calls on the same
   batches as the naive forward (so they are bit for bit what the naive loop sees before the
   corrupted layer), and kept per batch, each in its own allocation like the naive run's tensors.
2. One changed weight moves one output unit (Linear) or one output channel (Conv2d) of its layer,
   by ``delta * x[:, i]`` or ``delta * (one plane of the unfolded input patches)``: a rank-1
   update. It stays in that channel through ReLU / max-pooling / Flatten, and the next
   Linear/Conv2d sees it as a rank-1 update again. Thousands of flips are handled at once.
3. **Exactness.** Floating-point sums in another order are not bit-identical to the naive
   forward (checked here: Linear rows are not batch-invariant on MKL, nor is a one-row recompute),
   so the fast path never pretends to reproduce float32 values. Instead it *certifies* outcomes.
   A float32 dot product of n terms in any order is within ``gamma_n * (sum|w||x| + |b|)`` of the
   exact one (Higham, *Accuracy and Stability of Numerical Algorithms*, eq. 3.5; we use
   2 x gamma_n plus underflow and float64 slack); ReLU and max-pooling are monotone and
   1-Lipschitz. Per flip and sample:

   a. *screen* (:func:`_bounds`): per sample and class the flipped naive logits are within
      ``|delta| A + B`` of the clean naive ones, where ``A`` carries the weight's inputs |x| through
      |W| of every later layer and ``B`` both runs' rounding bounds. ``A`` and ``B`` depend on the
      weight, not on the bit, so all bits of a weight are screened by one comparison per sample:
      the outcome is the clean one when ``e_y + e_k`` stays below the clean gap ``z_y - z_k`` for
      every class ``k`` (mirrored for a clean-wrong sample); overflow is excluded per flip. Where
      the screen leaves most samples open (a first layer: |W| bounds compound layer by layer; a
      probe on four weights decides, :func:`_screen_pays`) it is skipped;
   b. *row path* (:func:`_rows`) for the samples the screen leaves open, when they are few: the
      exact change of the logits in float64 (rank-1 through the next mixing layer, then dense),
      with the radius ``B + G |delta| A`` around it: certainly right / certainly wrong;
   c. every flip with a sample still open gets the **exact input of the next mixing layer**: its
      layer is called with the naive shapes (flips in different output channels share one call:
      each output element reads only its own weights) and the changed channel goes through the
      exact per-channel ops (ReLU, max-pooling). Flips whose changed channel is bit for bit the
      same share everything from here on;
   d. *recheck* (:func:`_recheck`): from that exact input the rest of the network runs in float32
      on many flips at once, in any shapes, and the naive run's logits are within a rounding
      radius of ours (both runs compute the same dot products of the same inputs at the next
      layer; at every later layer the radius grows by ``|W| d (1 + g) + 2 g S'``). A sample whose
      input did not change keeps its clean outcome exactly;
   e. what is still open (near-ties closer than the radius, possible Inf/NaN or overflow) is
      **recomputed exactly**: the changed channel is spliced into the cached clean input of the
      next layer, and the rest of the network runs per flip on the naive batches -- the same
      calls on the same shapes as the naive loop.

   An element whose dot product does not involve the changed weight with a nonzero input is
   bit-identical to the clean run (same kernel, same shapes, the changed term is an exact zero),
   so samples that never touch the weight keep their clean outcome.

A layer whose suffix holds a module the bounds do not cover (e.g. BatchNorm) takes the exact path
(3c, 3e) for every flip; a parameter of any other module of a Sequential reruns the network from its
module on the cached input; any other model (not a Sequential) runs the full forward per flip,
like the naive loop but without its per-flip bookkeeping. Codecs whose check spans several words
(one flip changes several weights) are delegated to the naive loop. As in the naive census the
model is evaluated in eval mode (BatchNorm uses its running statistics) and handed back in the
mode it came in.

Assumptions (the same the naive loop makes when it trusts one clean run): kernels are deterministic
for given shapes and strides, and each output element of a Linear/Conv2d call is a dot product of
its own inputs and weights (MKL GEMM, oneDNN direct convolution; not Winograd/FFT), so changing one
weight leaves every other element of the call bit for bit as it was. Reduced-precision matmuls
(``torch.set_float32_matmul_precision`` other than "highest") switch the bounds off.
"""
from __future__ import annotations

import hashlib
import math
import os
import pickle
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...codecs.base import Codec, Identity
from ...evaluate import correct, eval_mode, materialize
from ...faults import BitErrorRate
from ...formats import FP32, Format, resolve_bits
from ...inject import Store
from ...params import ParamSelection, select_params
from ...progress import bar as progress_bar
from .naive import naive_bit_census
from .plan import flipped_values, weight_plan

__all__ = ["bit_census", "count_above"]

F32_MAX = float(torch.finfo(torch.float32).max)
SAFE_MAX = F32_MAX * (1.0 - 2.0 ** -12)  # no naive partial sum can overflow below this
SAFETY = 2.0  # multiplies the classical gamma_n bound
U32 = 2.0 ** -24  # unit roundoff of float32
TINY = 2.0 ** -125  # per-term absolute slack for underflow / flushed subnormals
ELEMENTS_PER_CHUNK = 1 << 24  # memory budget of one vectorized step (float64 elements)
CACHE_ELEMENTS = 1 << 19  # float64 elements per vectorized screen / row step (4 MB: stays in the heap
#                           that _heap_headroom keeps; fresh pages cost several times the arithmetic)
RECHECK_ELEMENTS = 1 << 21  # float32 elements of the widest activation per step of the recheck's rerun

#: counts of the last :func:`bit_census` call: flips certified by bounds (``rechecked`` of them from the
#: next layer's exact input), flips recomputed exactly
LAST_STATS: dict[str, int] = {}

ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
MIXING = (nn.Linear, nn.Conv2d)


# ----------------------------------------------------------------------------------------- plan

def _leaves(model: nn.Module) -> list[nn.Module] | None:
    """The modules an ``nn.Sequential`` (nested ones flattened) calls in order, or None."""
    if type(model).forward is not nn.Sequential.forward:
        return None
    out: list[nn.Module] = []
    for m in model:
        if isinstance(m, nn.Sequential):
            sub = _leaves(m)
            if sub is None:
                return None
            out += sub
        else:
            out.append(m)
    return out


def _supported(m: nn.Module) -> bool:
    if isinstance(m, nn.Linear):
        return m.weight.dtype == torch.float32
    if isinstance(m, nn.Conv2d):
        return m.groups == 1 and m.padding_mode == "zeros" and not isinstance(m.padding, str) \
            and m.weight.dtype == torch.float32
    if isinstance(m, nn.MaxPool2d):
        return not m.return_indices
    if isinstance(m, nn.Flatten):
        return m.start_dim == 1 and m.end_dim == -1
    return isinstance(m, ELEMENTWISE)


def _gamma(n: int) -> float:
    nu = n * U32
    return SAFETY * nu / (1.0 - nu)


def _fan_in(m: nn.Module) -> int:
    w = m.weight
    return int(w[0].numel())


def _mix64(m: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The layer's op in float64 with the given weight and bias."""
    if isinstance(m, nn.Linear):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation)


def _pool(m: nn.MaxPool2d, x: Tensor) -> Tensor:
    """``m(x)``, the same value for every element (max is exact). The common 2x2 / stride 2 pool is
    taken as the maximum of strided slices (pairs of rows, then pairs of columns), 3-25x faster
    than ``F.max_pool2d`` on small planes on CPU; like it, it propagates NaN. (Where a window holds
    both -0.0 and +0.0 the sign of the zero may differ, which no later op can turn into a different
    class or finiteness.)"""
    two = (2, 2)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    if (pair(m.kernel_size) == two and pair(m.stride or m.kernel_size) == two and pair(m.padding) == (0, 0)
            and pair(m.dilation) == (1, 1) and not m.ceil_mode and x.dim() >= 3):
        H, W = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
        rows = torch.maximum(x[..., 0:H:2, :W], x[..., 1:H:2, :W])  # pairs of rows first: long inner runs
        return torch.maximum(rows[..., 0::2], rows[..., 1::2])
    return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)


@dataclass
class _Clean:
    """Clean activations of a chain: ``acts[l]`` is the input of layer ``l`` (``acts[-1]`` the logits)."""

    layers: list[nn.Module]
    acts: list[Tensor]
    bounds: list[tuple[int, int]]  # batch boundaries, as the naive forward splits the data
    batch_acts: list[list[Tensor]]  # acts[l] per batch, each its own allocation like the naive run's
    y: Tensor
    ok: Tensor  # bool per sample: finite logits and argmax == label
    cache: dict = field(default_factory=dict)

    def a64(self, l: int) -> Tensor:
        """``acts[l]`` in float64."""
        key = ("a64", l)
        if key not in self.cache:
            self.cache[key] = self.acts[l].double()
        return self.cache[key]

    def s_clean(self, l: int) -> Tensor:
        """sum |W||x| + |b| of the clean run at mixing layer ``l`` (float64, shape of its output)."""
        key = ("S", l)
        if key not in self.cache:
            m = self.layers[l]
            b = None if m.bias is None else m.bias.detach().double().abs()
            self.cache[key] = _mix64(m, self.a64(l).abs(), m.weight.detach().double().abs(), b)
        return self.cache[key]

    def cols(self, l: int) -> Tensor:
        """Input planes of mixing layer ``l``: (N, fan_in, positions) float64."""
        key = ("cols", l)
        if key not in self.cache:
            m, x = self.layers[l], self.a64(l)
            if isinstance(m, nn.Linear):
                self.cache[key] = x[:, :, None]
            else:
                self.cache[key] = F.unfold(x, m.kernel_size, m.dilation, m.padding, m.stride)
        return self.cache[key]


def _run_clean(layers: list[nn.Module], batches: list[tuple[Tensor, Tensor]]) -> _Clean:
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
    return _Clean(layers, acts, bounds, per_layer, y, ok)


def _owner(layers: list[nn.Module], model: nn.Module, name: str) -> tuple[int, str] | None:
    """(layer position, 'weight' | 'bias') of a parameter, if a chain layer owns it directly."""
    mod_name, _, attr = name.rpartition(".")
    mod = model.get_submodule(mod_name) if mod_name else model
    hits = [l for l, m in enumerate(layers) if m is mod]
    if len(hits) != 1:
        return None
    return hits[0], attr


def _certifiable(clean: _Clean, l: int, attr: str) -> bool:
    layers = clean.layers
    if attr not in ("weight", "bias") or not isinstance(layers[l], MIXING) or not _supported(layers[l]):
        return False
    if any(a.dim() != (2 if isinstance(m, nn.Linear) else 4)
           for m, a in zip(layers[l:], clean.acts[l:]) if isinstance(m, MIXING)):
        return False
    if any(not _supported(m) for m in layers[l:]):
        return False
    if torch.get_float32_matmul_precision() != "highest":
        return False  # reduced-precision matmuls would break the rounding bounds
    if any(a.dtype != torch.float32 for a in clean.acts[l:]):
        return False
    return all(bool(torch.isfinite(a).all()) for a in clean.acts[l:])


# ---------------------------------------------------------------------------------------- screen
#
# Every quantity below is float64 and a bound: a float32 dot product of n terms (bias included) in
# any order is within g = SAFETY * gamma_n * (sum|w||x| + |b|) of the exact one; 1e-9 relative
# factors cover our own float64 rounding.


def _route(clean: _Clean, l: int) -> tuple[list[int], int | None]:
    """Layers after ``l``: the elementwise ones before the next mixing layer, and that layer (or None)."""
    layers = clean.layers
    t = l + 1
    while t < len(layers) and isinstance(layers[t], ELEMENTWISE):
        t += 1
    return list(range(l + 1, t)), (None if t == len(layers) else t)


@dataclass
class _Bounds:
    """The screen's bounds for one chunk of flips (see :func:`_bounds`)."""

    settled: Tensor  # (K, N) bool: the sample's outcome is certainly the clean one
    A: Tensor  # (W, N, classes): logit change per unit |delta|, per distinct weight
    B: Tensor  # (C, N, classes): flip-independent rounding part, per output channel of the layer
    inv: Tensor  # (K,) flip -> distinct weight
    chans: Tensor  # (W,) output channel / unit of each distinct weight
    dabs: Tensor  # (K,) |delta|, rounded up
    safe: Tensor  # (K,) bool: no partial sum of the flipped run can overflow
    G: float  # sum of the gammas of the mixing layers from the flipped one on


def _spread(clean: _Clean, l: int, chans: Tensor, e: Tensor, rounding: bool, planes: Tensor | None = None
            ) -> tuple[Tensor, Tensor]:
    """Propagate per-sample bounds on |change| from output channel/unit ``chans[i]`` of mixing layer
    ``l`` to the logits, through |W| (every later op is monotone and 1-Lipschitz, or linear).

    ``e``: (rows, N, P) nonnegative bounds on one channel of layer ``l``'s output (P positions);
    item ``i`` reads row ``planes[i]`` (or row ``i``): channels that share an input plane share its
    elementwise ops. With ``rounding`` the propagated quantity is the flip-independent part ``B``
    (both runs' rounding bounds 2 g S + underflow slack at every later mixing layer); without it,
    ``A`` (the part proportional to |delta|, times (1 + g) at every mixing layer). Returns the bound
    on the logits (items, N, classes) and the largest bound anywhere on the way (items,)."""
    return _follow(clean, l, chans, e, None, rounding, planes)


def _follow(clean: _Clean, l: int, chans: Tensor, e: Tensor, nn_: Tensor | None, rounding: bool = False,
            planes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Follow a change of output channel/unit ``chans[i]`` of mixing layer ``l`` to the logits.

    Two modes share the routing. ``nn_ is None``: ``e`` holds nonnegative *bounds* (see
    :func:`_spread`). Otherwise ``e`` (R, 1, P) is the *change* itself for sample ``nn_[i]``
    (float64): through an elementwise op ``phi`` it becomes ``phi(v + e) - phi(v)`` with ``v`` the
    clean activation, through a mixing layer ``W e`` (no bias). Returns the logits' bound or change
    (items, N, classes) and, for bounds, the largest value on the way (items,)."""
    change = nn_ is not None
    layers = clean.layers
    items, N = len(chans), e.shape[1]
    m = layers[l]
    kind = "chan" if isinstance(m, nn.Conv2d) else "feat"
    spatial = tuple(clean.acts[l + 1].shape[2:])
    start = chans
    top = None
    if not change:
        top = e.flatten(1).amax(1)
        top = top if planes is None else top[planes]
    elem, t = _route(clean, l)
    rows = e.shape[0]

    def here(u: int) -> Tensor:  # clean input of layer u, the changed slice of each row, (R, 1, len)
        a = clean.a64(u)
        if kind == "chan":
            return a.reshape(a.shape[0], a.shape[1], -1)[nn_, chans][:, None]
        return a.reshape(a.shape[0], -1)[nn_[:, None], start[:, None] + torch.arange(e.shape[-1])][:, None]

    for u in elem:  # the change lives in one channel (or a run of features)
        mu = layers[u]
        if isinstance(mu, nn.Flatten):
            if kind == "chan":
                start, kind = chans * math.prod(spatial), "feat"
        elif isinstance(mu, nn.MaxPool2d):
            if kind != "chan":  # a pool over a run of features cannot be tracked per channel
                raise _Untracked
            pool = lambda z: _pool(mu, z.reshape((rows * N, 1) + spatial))  # noqa: E731
            if change:
                v = here(u)
                z = pool(v + e) - pool(v)
            else:
                z = pool(e)
            spatial = tuple(z.shape[2:])
            e = z.reshape(rows, N, -1)
        elif isinstance(mu, nn.ReLU) and change:
            v = here(u)
            e = (v + e).clamp_min(0.0) - v.clamp_min(0.0)
        # ReLU on a bound, Identity, Dropout: |change| does not grow
    if planes is not None:
        e = e.index_select(0, planes)
    length = e.shape[-1]
    if t is None:  # the flipped layer feeds the logits directly
        if kind != "feat":
            raise _Untracked
        out = torch.zeros(items, N, clean.acts[-1].shape[1], dtype=torch.float64)
        cols = start[:, None] + torch.arange(length)[None, :]
        out.scatter_(2, cols[:, None, :].expand(items, N, length), e)
        return out, top
    mt = layers[t]
    g = _gamma(_fan_in(mt) + 2)
    W = mt.weight.detach().double()
    W = W if change else W.abs()
    if isinstance(mt, nn.Linear):  # each item's run of features is read by its own columns of W
        runs = W.reshape(W.shape[0], -1, length)  # (out, runs, length): the runs tile the features
        out = torch.bmm(e, runs[:, start // length].permute(1, 2, 0))
    else:
        out = torch.empty((items, N) + tuple(clean.acts[t + 1].shape[1:]), dtype=torch.float64)
        for o in chans.unique().tolist():  # a conv reads channel o through W[:, o]
            if kind != "chan":
                raise _Untracked
            sel = (chans == o).nonzero().flatten()
            z = F.conv2d(e[sel].reshape((len(sel) * N, 1) + spatial), W[:, o:o + 1], None, mt.stride,
                         mt.padding, mt.dilation)
            out[sel] = z.reshape((len(sel), N) + tuple(z.shape[1:]))
    if not change:
        out = _next_bound(clean, t, out.mul_(1 + g), g, rounding)
        top = torch.maximum(top, out.flatten(1).amax(1))
    e = out.reshape((items * N,) + tuple(out.shape[2:]))
    for u in range(t + 1, len(layers)):  # dense from here on
        mu = layers[u]
        if isinstance(mu, MIXING) and change:
            e = _mix64(mu, e, mu.weight.detach().double(), None)
        elif isinstance(mu, MIXING):
            g = _gamma(_fan_in(mu) + 2)
            z = _mix64(mu, e, mu.weight.detach().double().abs(), None).mul_(1 + g)
            z = _next_bound(clean, u, z.reshape((items, N) + tuple(z.shape[1:])), g, rounding)
            top = torch.maximum(top, z.flatten(1).amax(1))
            e = z.reshape((items * N,) + tuple(z.shape[2:]))
        elif change and isinstance(mu, (nn.ReLU, nn.MaxPool2d)):
            e = _call_elementwise(mu, clean.a64(u)[nn_] + e) - clean.a64(u + 1)[nn_]
        elif isinstance(mu, (nn.MaxPool2d, nn.Flatten)):  # ReLU etc. leave a bound >= 0 as it is
            e = _call_elementwise(mu, e)
    return e.reshape(items, N, -1), top


class _Untracked(Exception):
    """The change cannot be followed as one channel through this chain (the screen then abstains)."""


def _next_bound(clean: _Clean, u: int, e: Tensor, g: float, rounding: bool) -> Tensor:
    """Add both runs' rounding bounds of mixing layer ``u`` (2 g S + underflow slack) to ``e``
    (items, N, ...) when propagating the flip-independent part."""
    if not rounding:
        return e
    n = _fan_in(clean.layers[u]) + 2
    return e.add_(clean.s_clean(u)[None], alpha=2 * g).add_(2 * TINY * n)


def _width(clean: _Clean, l: int) -> int:
    """The widest bound per sample that :func:`_spread` carries for one weight of layer ``l``: one
    channel of its output, then whole activations from the next mixing layer on."""
    _, t = _route(clean, l)
    plane = clean.acts[l + 1][0].numel() // clean.acts[l + 1].shape[1]
    dense = [a[0].numel() for a in clean.acts[t + 1:]] if t is not None else []
    return max([plane] + dense) + 16


def _bounds(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor) -> _Bounds:
    """The screen: bounds on how far the flipped naive logits can be from the clean naive logits,
    and the (flip, sample) pairs whose outcome they settle (certainly the clean one). Raises
    :class:`_Untracked` if the chain cannot be followed.

    Per sample and class the change is at most ``e = |delta| A + B``: ``A`` propagates the
    flipped weight's inputs |x| through |W| of every later layer (ReLU and max-pooling are
    1-Lipschitz), each mixing layer times (1 + g); ``B`` propagates both runs' rounding bounds
    2 g S (Higham eq. 3.5, ``S = sum |w||x| + |b|``). Both are computed once per weight and shared
    by all its bits, so a flip is screened by one comparison per sample: the outcome is unchanged
    when ``e_y + e_k`` is below the clean gap ``z_y - z_k`` for every class ``k`` (for a clean right
    sample; for a wrong one, when some ``k`` stays above ``y``). Overflow is excluded per flip from
    the largest bound on the way. Samples whose inputs to the flipped weight are all zero are
    unchanged (exact zero terms)."""
    layers = clean.layers
    m = layers[l]
    N = clean.y.shape[0]
    flat = getattr(m, attr).detach().reshape(-1)
    dabs = (new.double() - flat[idx].double()).abs() * (1 + 1e-12)  # (K,)
    uw, inv = idx.unique(return_inverse=True)
    fan = 1 if attr == "bias" else _fan_in(m)
    chans = uw // fan
    C = clean.acts[l + 1].shape[1]
    P = clean.s_clean(l)[0].numel() // C
    if attr == "bias":
        planes, X = torch.zeros(len(uw), dtype=torch.int64), torch.ones(1, N, P, dtype=torch.float64)
    else:  # the distinct input planes of the weights (shared by all output channels)
        uq, planes = (uw % fan).unique(return_inverse=True)
        X = clean.cols(l).abs().index_select(1, uq).transpose(0, 1)  # (Q, N, P)
    untouched = (X.amax(2) == 0).index_select(0, planes)  # (W, N)
    g = _gamma(_fan_in(m) + 2)
    key = ("B", l)
    if key not in clean.cache:
        S = clean.s_clean(l).reshape(N, C, P).transpose(0, 1)
        clean.cache[key] = _spread(clean, l, torch.arange(C), S * (2 * g) + 2 * TINY * (_fan_in(m) + 2), True)
    Bfin, Btop = clean.cache[key]
    mixing = [u for u in range(l, len(layers)) if isinstance(layers[u], MIXING)]
    gammas = [_gamma(_fan_in(layers[u]) + 2) for u in mixing]
    # per weight and sample: the largest |delta| that certainly keeps the clean outcome. A clean
    # right sample stays right while |delta| (A_y + A_k) < (z_y - z_k) - (B_y + B_k) for every
    # k != y; a wrong one stays wrong while |delta| (A_y + A_k) < (z_k - z_y) - (B_y + B_k) for
    # some k. With s = +1 (right) / -1 (wrong) both are one minimum over s * room_k / A'_k, and the
    # threshold is s times it. 0/0 gives NaN, which compares false (not settled).
    key = ("rooms", l)
    if key not in clean.cache:
        z = clean.a64(len(layers))  # (N, classes)
        y = clean.y[:, None]
        gap = (z.gather(1, y) - z) * (1 - 1e-12)  # z_y - z_k
        Bw = Bfin * (1 + 1e-9)  # (C, N, classes)
        Bsum = Bw.gather(2, y[None].expand(C, N, 1)) + Bw
        right = (gap[None] - Bsum).scatter_(2, y[None].expand(C, N, 1), math.inf)
        wrong = (-gap[None] - Bsum).scatter_(2, y[None].expand(C, N, 1), -math.inf)
        sign = torch.where(clean.ok, 1.0, -1.0).double()
        clean.cache[key] = (torch.where(clean.ok[None, :, None], right, -wrong), sign)
    rooms, sign = clean.cache[key]
    X = X * (1 + g)
    n_cls = clean.acts[-1].shape[1]
    Afin = torch.empty(len(uw), N, n_cls, dtype=torch.float64)
    Atop = torch.empty(len(uw), dtype=torch.float64)
    T = torch.empty(len(uw), N, dtype=torch.float64)
    per = max(1, CACHE_ELEMENTS // (N * max(_width(clean, l), 4 * n_cls)))
    for s in range(0, len(uw), per):  # in small steps: big temporaries cost page faults
        a, Atop[s:s + per] = _spread(clean, l, chans[s:s + per], X, False, planes[s:s + per])
        Afin[s:s + per] = a
        D = a.add_(a.gather(2, clean.y[None, :, None].expand(a.shape[0], N, 1))).mul_(1 + 1e-9)
        T[s:s + per] = (rooms.index_select(0, chans[s:s + per]) / D).amin(2).mul_(sign[None])
    T.masked_fill_(untouched, math.inf)
    key = ("Stop", l)
    if key not in clean.cache:
        clean.cache[key] = max(float(clean.s_clean(u).max()) for u in mixing)
    # overflow: no naive partial sum of the flipped run may reach SAFE_MAX
    safe = (clean.cache[key] + dabs * Atop[inv] + Btop[chans][inv]) * (1 + max(gammas)) * (1 + 1e-9) < SAFE_MAX
    settled = ((dabs[:, None] < T[inv]) & safe[:, None]) | untouched[inv]
    return _Bounds(settled, Afin, Bfin, inv, chans, dabs, safe, sum(gammas))


def _change_rows(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor, nn_: Tensor) -> Tensor:
    """The change of the logits, in exact arithmetic on the clean naive activations (float64), of R
    (flip, sample) rows: row j is sample ``nn_[j]`` with weight ``idx[j]`` of layer ``l`` reading
    ``new[j]``. (R, classes)."""
    m = clean.layers[l]
    R = len(idx)
    delta = new.double() - getattr(m, attr).detach().reshape(-1)[idx].double()
    C = clean.acts[l + 1].shape[1]
    P = clean.acts[l + 1][0].numel() // C
    if attr == "bias":
        ch = idx
        e = delta[:, None].expand(R, P)
    else:
        ch, q = idx // _fan_in(m), idx % _fan_in(m)
        e = delta[:, None] * clean.cols(l)[nn_, q, :]  # (R, P)
    out, _ = _follow(clean, l, ch, e[:, None, :].contiguous(), nn_)
    return out[:, 0]


def _decide_rows(clean: _Clean, nn_: Tensor, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """(certainly right, certainly wrong) per row from logit bounds c +- r of shape (R, classes)."""
    return _decide(clean.y[nn_][:, None], c, r)


def _decide(y: Tensor, c: Tensor, r: Tensor, ymask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(certainly right, certainly wrong) from logit bounds ``c +- r`` (..., classes) and labels ``y``
    (..., 1); ``ymask``, the label positions as a boolean mask broadcastable to ``c``, saves building
    it when the caller has it. NaN anywhere leaves a row undecided."""
    if ymask is None:
        ymask = torch.zeros(c.shape, dtype=torch.bool).scatter_(-1, y, True)
    lo, hi = c - r, c + r
    hi_y = hi.gather(-1, y)[..., 0]
    right = lo.gather(-1, y)[..., 0] > hi.masked_fill_(ymask, -math.inf).amax(-1)
    wrong = lo.masked_fill_(ymask, -math.inf).amax(-1) > hi_y
    return right, wrong


def _rows(clean: _Clean, l: int, attr: str, bd: _Bounds, kk: Tensor, idx: Tensor, new: Tensor, nn_: Tensor
          ) -> tuple[Tensor, Tensor]:
    """(certainly right, certainly wrong) of the rows (flip ``kk[j]``, sample ``nn_[j]``).

    The flipped naive logits are within ``D = B + G |delta| A`` of ``c = z + change`` (``z`` the
    clean naive logits, ``change`` from :func:`_change_rows`): the naive flipped and clean runs
    differ from the exact change by their rounding only, and the flipped run's sums are at most
    ``S + |W| e`` (``e`` the screen's bound), which is what ``B`` and ``G |delta| A`` add up layer
    by layer. Flips that may overflow must not come here."""
    step = max(1, CACHE_ELEMENTS // _width(clean, l))
    change = torch.cat([_change_rows(clean, l, attr, idx[kk[s:s + step]], new[kk[s:s + step]], nn_[s:s + step])
                        for s in range(0, len(kk), step)])
    w = bd.inv[kk]
    c = clean.a64(len(clean.layers))[nn_] + change
    D = bd.B[bd.chans[w], nn_] * (1 + 1e-9) + (bd.G + 1e-9) * bd.dabs[kk, None] * bd.A[w, nn_]
    return _decide_rows(clean, nn_, c, D + 1e-12 * c.abs())


def _row_limit(clean: _Clean, l: int) -> int:
    """How many open samples a flip may send to the row path before recomputing it exactly is
    cheaper (a rough cost model in float64-element units; it decides speed only, never a result)."""
    N = clean.y.shape[0]
    layers = clean.layers
    _, t = _route(clean, l)
    plane = clean.acts[l + 1][0].numel() // clean.acts[l + 1].shape[1]
    row = 1000 + 3 * plane + 10 * clean.acts[-1].shape[1]
    exact = 100_000
    for u in range(l + 1, len(layers)):
        size = clean.acts[u + 1][0].numel()
        if isinstance(layers[u], MIXING):
            macs = size * _fan_in(layers[u])
            exact += N * macs // 8
            row += macs if u != t else (macs // clean.acts[u].shape[1])  # rank-1 at the next mixing layer
        else:
            exact += N * size
            row += 4 * size if t is not None and u > t else 0
    return max(8, exact // row)


def _screen_pays(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor) -> bool:
    """Whether the screen is worth running on this parameter's flips (speed only, never a result).
    It is not where it leaves most samples open (first layers of a deep chain: |W| bounds compound
    layer by layer), because then every flip goes to :func:`_recheck` anyway. Decided once per
    parameter from all the flips of four weights spread over it: the screen pays when it leaves
    them, on average, few enough open samples for the row path."""
    key = ("screen pays", l, attr)
    if key not in clean.cache:
        uw = idx.unique()
        pick = uw[torch.linspace(0, len(uw) - 1, min(len(uw), 4)).round().long()]
        probe = torch.isin(idx, pick)
        pays = True
        if len(idx) >= 64 and bool(probe.any()):
            bd = _bounds(clean, l, attr, idx[probe], new[probe])
            pays = float((~bd.settled).sum(1).double().mean()) <= _row_limit(clean, l)
        clean.cache[key] = pays
    return clean.cache[key]


def _certify(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor) -> tuple[list[int], Tensor, int]:
    """Correct-sample counts of K flips, which of them were recomputed exactly (K,) bool, and how many
    :func:`_recheck` settled.

    The screen (:func:`_bounds`) settles most (flip, sample) pairs; the row path (:func:`_rows`)
    decides most of the others from the exact change of the logits; flips with samples still open
    (too many to be worth the row path, near-ties, possible overflow, non-finite weights) go to
    :func:`_exact_packed`, which computes the next mixing layer's input exactly, settles what it can
    from there (:func:`_recheck`) and recomputes the rest exactly."""
    K, N = len(idx), clean.y.shape[0]
    finite = torch.isfinite(new)
    new0 = torch.where(finite, new, torch.zeros_like(new))
    counts = torch.full((K,), int(clean.ok.sum()), dtype=torch.int64)
    try:
        if not _screen_pays(clean, l, attr, idx, new0):
            raise _Untracked
        bd = _bounds(clean, l, attr, idx, new0)
        open_ = ~bd.settled
        rows_ok = finite & bd.safe & (open_.sum(1) <= _row_limit(clean, l))
        kk_all, nn_all = (open_ & rows_ok[:, None]).nonzero(as_tuple=True)
        step = max(1, ELEMENTS_PER_CHUNK // (4 * clean.acts[-1].shape[1]))
        for s in range(0, len(kk_all), step):  # bounded memory however many rows are open
            kk, nn_ = kk_all[s:s + step], nn_all[s:s + step]
            right, wrong = _rows(clean, l, attr, bd, kk, idx, new0, nn_)
            done = right | wrong
            counts.index_add_(0, kk[done], right[done].long() - clean.ok[nn_[done]].long())
            open_[kk[done], nn_[done]] = False
    except _Untracked:
        open_ = torch.ones(K, N, dtype=torch.bool)
    open_[~finite] = True  # the screen ran with a zero in place of a non-finite value (the row path skipped it)
    redo = open_.any(1)  # a sample still open: recheck from the next layer's exact input, or recompute
    rechecked = 0
    if redo.any():
        sel = redo.nonzero().flatten()
        got, exact = _exact_packed(clean, l, attr, idx[sel], new[sel], (open_[sel], counts[sel]))
        counts[sel] = torch.tensor(got, dtype=torch.int64)
        redo[sel] = torch.tensor(exact)
        rechecked = exact.count(False)
    return counts.tolist(), redo, rechecked


# ----------------------------------------------------------------------------------- exact path

@torch.no_grad()
def _exact(model: nn.Module, p: nn.Parameter, index: int, value: Tensor, clean: _Clean | None, start: int,
           batches: list[tuple[Tensor, Tensor]]) -> int:
    """Correct samples with ``p.view(-1)[index] = value``, computed as the naive loop does."""
    flat = p.data.view(-1)
    old = flat[index].clone()
    flat[index] = value
    try:
        if clean is None:
            return _count(model, batches)
        n_ok = 0
        for xb, (_, yb) in zip(clean.batch_acts[start], batches):
            logits = xb
            for m in clean.layers[start:]:
                logits = m(logits)
            n_ok += int(correct(logits, yb).sum())
        return n_ok
    finally:
        flat[index] = old


def _packable(clean: _Clean, l: int, attr: str) -> bool:
    """The packed exact path needs a Linear/Conv2d owner followed by exact per-channel ops."""
    layers = clean.layers
    if attr not in ("weight", "bias") or not isinstance(layers[l], MIXING) or not _supported(layers[l]):
        return False
    if clean.acts[l].dim() != (2 if isinstance(layers[l], nn.Linear) else 4):
        return False
    elem, _ = _route(clean, l)
    return all(_supported(layers[u]) for u in elem)


@torch.no_grad()
def _exact_packed(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor,
                  known: tuple[Tensor, Tensor] | None = None) -> tuple[list[int], list[bool]]:
    """Correct samples of each flip, computed exactly as the naive forward computes them, and which
    flips ran the rest of the network per flip (the others were settled by :func:`_recheck`).

    Flips that move different output units/channels share one call of the flipped layer (each
    output element of a Linear/Conv2d reads only its own weights, and the call has the naive
    shapes); ReLU / max-pooling / Flatten (exact, elementwise or per channel) then run on the
    changed channel only, which gives the next mixing layer's input exactly as the naive run has it.
    With ``known = (open_, counts)`` (what the screen and the row path left open, and the count they
    imply when every open sample keeps its clean outcome) that input is first checked by
    :func:`_recheck`; flips it settles are done. The others run the rest of the network on the
    naive batches, as the naive forward does."""
    layers = clean.layers
    m = layers[l]
    flat = getattr(m, attr).data.view(-1)
    fan = 1 if attr == "bias" else _fan_in(m)
    ch = (idx // fan).tolist()
    elem, t = _route(clean, l)
    counts, exact = [0] * len(idx), [True] * len(idx)
    pending: list[tuple[list[int], Tensor]] = []  # packs whose changed channels wait for the checks

    def flush() -> None:
        ks = [k for pack, _ in pending for k in pack]
        z = torch.cat([z for _, z in pending])
        pending.clear()
        first: dict[tuple[int, bytes], int] = {}  # flips whose changed channel is bit for bit the same
        same = [first.setdefault((ch[k], z[j].numpy().tobytes()), j) for j, k in enumerate(ks)]
        twins = [(ks[j], ks[i]) for j, i in enumerate(same) if i != j]  # run the same naive suffix
        keep = sorted(set(same))
        ks, z = [ks[j] for j in keep], z[keep]
        run(ks, z)
        for k, k0 in twins:
            counts[k], exact[k] = counts[k0], exact[k0]

    def run(ks: list[int], z: Tensor) -> None:
        if known is not None and t is not None:
            left = _recheck(clean, t, z, [ch[k] for k in ks], known[0][ks], known[1][ks])
            keep = [j for j, c in enumerate(left) if c is None]
            for k, c in zip(ks, left):
                counts[k], exact[k] = (0, True) if c is None else (c, False)
            ks, z = [ks[j] for j in keep], z[keep]
        if ks:
            for k, c in zip(ks, _finish(clean, t, z, [ch[k] for k in ks])):
                counts[k] = c

    queues: dict[int, list[int]] = {}  # per channel, its flips in order
    for k, c in enumerate(ch):
        queues.setdefault(c, []).append(k)
    rounds = max(len(q) for q in queues.values()) if queues else 0
    held = 0
    for r in range(rounds):  # pack r: the r-th flip of every channel that has one
        pack = sorted(q[r] for q in queues.values() if r < len(q))
        sel = idx[pack]
        old = flat[sel].clone()
        flat[sel] = new[pack].to(flat.dtype)
        try:
            outs = [m(xb) for xb in clean.batch_acts[l]]
        finally:
            flat[sel] = old
        pending.append((pack, _changed(clean, elem, outs, [ch[k] for k in pack])))
        held += pending[-1][1].numel()
        if held > ELEMENTS_PER_CHUNK // 8 or r == rounds - 1:
            flush()
            held = 0
    return counts, exact


def _changed(clean: _Clean, elem: list[int], outs: list[Tensor], chans: list[int]) -> Tensor:
    """The changed channels of a pack after the exact elementwise / per-channel modules up to the
    next mixing layer (ReLU, max-pooling, Identity, Dropout in eval give the same value for each
    element whatever the shape of the call): (flips, N, size), flip ``j`` holding channel
    ``chans[j]`` (or its run of features after Flatten) of the next mixing layer's input."""
    layers = clean.layers
    pick = torch.tensor(chans)
    z = outs[0] if len(outs) == 1 else torch.cat(outs)
    whole = 2 * len(chans) >= z.shape[1]  # most channels changed: no gather before the ops
    if not whole:
        z = z.index_select(1, pick)  # the pack's channels (N, flips, ...)
    for u in elem:
        if not isinstance(layers[u], nn.Flatten):  # the channel is written in flat layout anyway
            z = _call_elementwise(layers[u], z)
    if whole:
        z = z.index_select(1, pick)
    return z.transpose(0, 1).reshape(len(chans), z.shape[0], -1)


def _finish(clean: _Clean, t: int | None, z: Tensor, chans: list[int]) -> list[int]:
    """Correct samples of each flip of a pack, from the changed channels ``z`` (see :func:`_changed`)
    at the input of mixing layer ``t`` (None: they are logits). From ``t`` on, every module runs per
    flip and per batch on a tensor of the naive run's shape and strides (one buffer per batch: the
    changed channel is written in, and the clean one back after the flip), as the naive forward
    calls it."""
    layers = clean.layers
    size = z.shape[2]
    tt = len(layers) if t is None else t
    N, nf = clean.y.shape[0], len(chans)
    if tt == len(layers):  # the changed units are logits: splice all flips at once
        h = clean.acts[tt].reshape(N, -1)[None].repeat(nf, 1, 1)
        h.view(nf, N, -1, size)[torch.arange(nf), :, torch.tensor(chans)] = z
    else:
        bufs = [a.clone() for a in clean.batch_acts[tt]]  # one input per batch (same strides), reused
        outs = []
        for j, o in enumerate(chans):
            for b, (lo, hi) in enumerate(clean.bounds):
                x = bufs[b]
                part = x[:, o] if x.dim() > 2 else x[:, o * size:(o + 1) * size]  # channel o, or its run
                part.copy_(z[j, lo:hi].reshape(part.shape))
                for mu in layers[tt:]:
                    x = mu(x) if isinstance(mu, MIXING) else _call_elementwise(mu, x)
                outs.append(x)
                src = clean.batch_acts[tt][b]
                part.copy_(src[:, o] if src.dim() > 2 else src[:, o * size:(o + 1) * size])
        h = torch.cat(outs).reshape(nf, N, -1)  # (flips, N, classes)
    return correct(h.reshape(nf * N, -1), clean.y.repeat(nf)).reshape(nf, N).sum(1).tolist()


def _bound_step(clean: _Clean, u: int, e: Tensor) -> Tensor:
    """A bound ``e >= 0`` on |change| of layer ``u``'s input, carried to its output (no rounding
    part): |W| e (1 + g) through a mixing layer, the window maximum through max-pooling."""
    mu = clean.layers[u]
    if isinstance(mu, MIXING):
        return _mix64(mu, e, mu.weight.detach().double().abs(), None).mul_(1 + _gamma(_fan_in(mu) + 2))
    if isinstance(mu, nn.MaxPool2d):
        return _pool(mu, e)
    if isinstance(mu, nn.Flatten):
        return e.flatten(1)
    return e  # ReLU, Identity, Dropout: 1-Lipschitz


def _recheck_parts(clean: _Clean, t: int, size: int) -> dict:
    """The flip-independent parts of :func:`_recheck`'s bound, for changes entering mixing layer
    ``t`` through one input channel (or run of ``size`` features) ``o``.

    At ``t`` both runs compute the same dot products of the same inputs ``x'``, each within
    ``g S'`` of the exact ones, and ``S' = |W||x'| + |b| <= S + m w_o`` (``S`` the clean sums,
    ``m`` the largest change of channel ``o``, ``w_o`` the sum of |W| over the weights that read
    it): the two runs differ by at most ``E0 + m E1`` with ``E0 = 2 g S`` (+ underflow slack)
    and ``E1[o] = 2 g w_o``. Both are carried to the logits by :func:`_bound_step` (``e0``: (N,
    classes), ``e1``: (n_o, classes)); every later mixing layer adds the flip's own rounding part
    (see :func:`_rerun`). When ``t`` is the last layer (a Linear) the logits are computed as the
    clean ones plus the run's change, so ``e0``/``e1`` also hold the float64 slack on them."""
    key = ("recheck", t, size)
    if key in clean.cache:
        return clean.cache[key]
    layers = clean.layers
    mt = layers[t]
    g, n = _gamma(_fan_in(mt) + 2), _fan_in(mt) + 2
    W = mt.weight.detach().double().abs()
    a = clean.acts[t]
    N, n_o = a.shape[0], a[0].numel() // size
    if isinstance(mt, nn.Conv2d):
        w_o = W.sum((2, 3))  # (out channels, n_o)
    else:  # runs of features: one channel of a flattened (C, H, W) input, or one unit
        w_o = W.reshape(W.shape[0], n_o, size).sum(2)
    S = clean.s_clean(t)
    e0 = S * (2 * g) + 2 * TINY * n
    e1 = (2 * g) * w_o.T.reshape((n_o, w_o.shape[0]) + (1,) * (S.dim() - 2)).expand((n_o,) + tuple(S.shape[1:]))
    e0max, e1max = [e0.flatten(1).amax(1)], [e1.flatten(1).amax(1)]
    e0, e1 = e0.clone(), e1.contiguous()
    for u in range(t + 1, len(layers)):
        e0, e1 = _bound_step(clean, u, e0), _bound_step(clean, u, e1)
        if isinstance(layers[u], MIXING):
            e0.add_(4 * TINY * (_fan_in(layers[u]) + 2))  # underflow in both runs and in our sums
            e0max.append(e0.flatten(1).amax(1))
            e1max.append(e1.flatten(1).amax(1))
    e0, e1 = e0.reshape(N, -1), e1.reshape(n_o, -1)
    last = t == len(layers) - 1 and isinstance(mt, nn.Linear)
    runs = None
    if last:  # (n_o, size, out): the weights that read each run; float64 slack on z + change
        runs = mt.weight.detach().double().reshape(-1, n_o, size).permute(1, 2, 0).contiguous()
        e0 = e0 + 1e-12 * clean.a64(t + 1).abs()
        e1 = e1 + (1e-12 + 2.0 ** -23) * runs.abs().sum(1)  # the change is read in float32 (rounded)
    y = clean.y[None, :, None]
    parts = dict(e0=e0 * (1 + 1e-9), e1=e1 * (1 + 1e-9), e0max=e0max, e1max=e1max, wmax=w_o.amax(0),
                 smax=S.flatten(1).amax(1), g=g, base=a.contiguous().reshape(N, n_o, -1),
                 base_t=a.reshape(N, n_o, -1).transpose(0, 1).contiguous(), runs=runs,
                 last=last, y=y, ymask=torch.zeros(1, N, e0.shape[1], dtype=torch.bool).scatter_(2, y, True))
    clean.cache[key] = parts
    return parts


def _recheck(clean: _Clean, t: int, z: Tensor, chans: list[int], open_: Tensor, base: Tensor
             ) -> list[int | None]:
    """Settle flips from the exact input of mixing layer ``t`` without the naive per-flip suffix.

    ``z`` (flips, N, size): channel ``chans[j]`` of layer ``t``'s input in flip ``j``'s naive run,
    bit for bit (see :func:`_changed`); ``open_`` (flips, N): the samples not yet settled;
    ``base`` (flips,): the correct count if every open sample keeps its clean outcome. A sample
    whose input is unchanged keeps its clean outcome exactly. For the others the rest of the
    network runs here in float32 on several flips at once (any shapes), and the naive run's logits
    are within ``E0 + m E1 + D`` of ours (:func:`_recheck_parts`, :func:`_rerun`). When ``t`` is
    the last layer, ours are the clean logits plus the change of the run (read in float32, so
    rounded, which ``E1`` covers), in float64.
    Returns the count of each flip whose open samples are all settled, else None."""
    layers = clean.layers
    P = _recheck_parts(clean, t, z.shape[2])
    N, n_o, size = P["base"].shape
    o = torch.tensor(chans)
    diff = z - P["base_t"].index_select(0, o)  # (flips, N, size), float32: within 2^-24 relative
    m = diff.abs().amax(2).double().mul_(1 + 2.0 ** -22)  # >= the largest change; NaN stays NaN
    need = open_ & ~(m == 0)
    res, done = base.clone(), ~need.any(1)
    js = (~done).nonzero().flatten()
    if not len(js):
        return [int(c) for c in res.tolist()]
    o, m, need = o[js], m[js], need[js]
    last = P["last"]
    zs = diff.index_select(0, js).double() if last else z.index_select(0, js)
    width = clean.acts[-1][0].numel() if last else max(a[0].numel() for a in clean.acts[t:])
    step = max(1, min(len(js), (CACHE_ELEMENTS if last else RECHECK_ELEMENTS) // (N * width)))
    buf = None if last else torch.empty((step, N, n_o, size))
    g = P["g"]
    gain = torch.zeros(len(js), dtype=torch.int64)
    ok = torch.zeros(len(js), dtype=torch.bool)
    for s in range(0, len(js), step):  # a few flips at a time: bounded temporaries
        sl = slice(s, s + step)
        oj, mj = o[sl], m[sl]
        F_ = len(oj)
        # no partial sum at t overflows (S' <= S + m w_o), nor anything after it (see _rerun)
        safe = (P["smax"][None] + mj * P["wmax"][oj][:, None]) * ((1 + 2 * g) * (1 + g) * (1 + 1e-9)) < SAFE_MAX
        r = torch.addcmul(P["e0"][None], mj[..., None], P["e1"][oj][:, None])  # (F_, N, classes)
        if last:  # the run feeds the logits: the clean logits plus the run's change
            c = torch.baddbmm(clean.a64(t + 1)[None], zs[sl], P["runs"][oj])
        else:
            x = buf[:F_]
            x.copy_(P["base"].expand(F_, N, n_o, size))
            x[torch.arange(F_), :, oj] = zs[sl]
            c, d = _rerun(clean, t, x.view((F_ * N,) + tuple(clean.acts[t].shape[1:])), P, mj, oj, safe)
            c = c.view(F_, N, -1).double()
            r += d.view(F_, N, -1) if d is not None else c.abs().mul_(1e-12)
        right, wrong = _decide(P["y"].expand(F_, N, 1), c, r, P["ymask"])
        nj = need[sl]
        ok[sl] = ((right | wrong) & safe | ~nj).all(1)  # safe implies finite logits in both runs
        gain[sl] = ((right.long() - clean.ok.long()[None]) * nj).sum(1)
    res[js] += gain
    done[js] = ok
    return [int(c) if d else None for c, d in zip(res.tolist(), done.tolist())]


def _rerun(clean: _Clean, t: int, x: Tensor, P: dict, mj: Tensor, oj: Tensor, safe: Tensor
           ) -> tuple[Tensor, Tensor | None]:
    """Our float32 run from mixing layer ``t`` on the flips' exact inputs ``x`` (F N, ...): the
    logits and the per-flip part ``D`` of the bound (None if no mixing layer follows ``t``).
    At each later mixing layer ``|naive - ours| <= |W| d (1 + g) + 2 g S'``, ``S'`` the sums
    ``|W||x| + |b|`` of our run (Higham eq. 3.5 for both runs; the naive run's sums are at most
    ours plus ``|W| d``); ``D`` also holds the float64 slack 1e-12 |logits|. Clears ``safe``
    (F, N) where a naive partial sum could overflow."""
    layers = clean.layers
    F_, N = mj.shape
    x = layers[t](x)
    d, k, nonneg, u = None, 1, False, t + 1
    while u < len(layers):
        mu = layers[u]
        if isinstance(mu, MIXING):
            gu = _gamma(_fan_in(mu) + 2)
            x, sx = _values_and_sums(clean, u, x, nonneg)
            kappa = (2 * gu * (1 + gu) + 1e-12 * (1 + gu)) * (1 + 1e-9)
            dn = sx.double().mul_(kappa)  # >= 2 g S' (and the slack on |logits| <= S')
            top = sx.flatten(1).amax(1).double() * (1 + gu)
            if d is None:
                top = top * (1 + kappa)
            else:
                dn += _bound_step(clean, u, d)
                top = top + dn.flatten(1).amax(1)
            top = top.view(F_, N) + P["e0max"][k][None] + mj * P["e1max"][k][oj][:, None]
            safe &= top * ((1 + gu) * (1 + 1e-9)) < SAFE_MAX
            d, k, nonneg = dn, k + 1, False
        elif isinstance(mu, nn.ReLU) and u + 1 < len(layers) and isinstance(layers[u + 1], nn.MaxPool2d):
            x = torch.relu_(_pool(layers[u + 1], x))  # the same values, on a quarter of them
            d = None if d is None else _bound_step(clean, u + 1, d)
            nonneg, u = True, u + 1
        else:
            x = _call_elementwise(mu, x)
            d = None if d is None else _bound_step(clean, u, d)
            nonneg = nonneg or isinstance(mu, nn.ReLU)
        u += 1
    return x, d


def _values_and_sums(clean: _Clean, u: int, x: Tensor, nonneg: bool) -> tuple[Tensor, Tensor]:
    """Mixing layer ``u`` on ``x`` (float32, any shapes) and the sums ``|W||x| + |b|`` of its dot
    products; one call with the two weights stacked when ``x >= 0`` (after a ReLU)."""
    mu = clean.layers[u]
    W, b = mu.weight.detach(), None if mu.bias is None else mu.bias.detach()
    ba = None if b is None else b.abs()
    if not nonneg:
        return mu(x), _mix32(mu, x.abs(), W.abs(), ba)
    key = ("stacked", u)
    if key not in clean.cache:
        clean.cache[key] = (torch.cat([W, W.abs()]), None if b is None else torch.cat([b, ba]))
    both = _mix32(mu, x, *clean.cache[key])
    return both[:, :W.shape[0]], both[:, W.shape[0]:]


def _mix32(m: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """The layer's op with the given weight and bias, in the input's dtype."""
    if isinstance(m, nn.Linear):
        return F.linear(x, weight, bias)
    return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation)


def _call_elementwise(m: nn.Module, x: Tensor) -> Tensor:
    """An elementwise / per-window module applied as the naive forward applies it (values equal)."""
    return _pool(m, x) if isinstance(m, nn.MaxPool2d) else m(x)


def _count(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> int:
    """Correct samples of a full forward, counted as :func:`bitlab.campaign.batch_accuracy` does."""
    return sum(int(correct(model(x), yb).sum()) for x, yb in batches)


def _heap_headroom(nbytes: int = 30 << 20) -> None:
    """Allocate and free one block of ``nbytes``. glibc's malloc then serves blocks up to that size from
    its heap and keeps up to twice as much free memory there (its dynamic mmap and trim thresholds
    follow the largest block freed, up to 32 MB), instead of mapping fresh pages for every
    temporary over 128 kB: on a small CPU the page faults cost several times the arithmetic of
    the census's temporaries. Elsewhere it is a harmless allocation."""
    torch.empty(nbytes // 4, dtype=torch.float32)  # freed as soon as it is made


# ------------------------------------------------------------------------------- checkpointing

def _fingerprint(chosen, plan, positions, fmt, codec, batches) -> str:
    h = hashlib.sha256()
    h.update(repr((fmt.name, codec.name, positions)).encode())
    for (name, p), (_, idx) in zip(chosen, plan):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
        h.update(idx.numpy().tobytes())
    for x, y in batches:
        h.update(x.detach().cpu().contiguous().numpy().tobytes())
        h.update(y.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _load_checkpoint(path: str | os.PathLike | None, key: str) -> dict:
    if path is None or not os.path.exists(path):
        return {}
    with open(path, "rb") as f:
        state = pickle.load(f)
    if not isinstance(state, dict) or state.get("key") != key:
        raise ValueError(f"checkpoint: {os.fspath(path)!r} was written by a different census (model, data, "
                         "format, bits or sampling differ); delete it or pass another path")
    return state["done"]


def _save_checkpoint(path: str | os.PathLike, key: str, done: dict) -> None:
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        pickle.dump({"key": key, "done": done}, f)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------- public API

def _check_batch_flips(batch_flips: object) -> int:
    if isinstance(batch_flips, bool) or not isinstance(batch_flips, int) or batch_flips < 1:
        raise ValueError(f"batch_flips: {batch_flips!r}; allowed ints >= 1")
    return batch_flips


def bit_census(model: nn.Module, data: object, fmt: Format = FP32, bits: object = "all",
               params: ParamSelection = None, n_weights: int | None = None, seed: int = 0,
               checkpoint: str | os.PathLike | None = None, progress: bool | None = None,
               batch_flips: int = 2048, codec: Codec | None = None,
               on_chunk: Callable[[int], None] | None = None) -> pd.DataFrame:
    """Single-bit census of Pranto et al. 2025 (RAD of every single-bit flip), equal to
    :func:`bitlab.campaigns.census.naive_bit_census` row for row and float for float, but fast.

    Returns one row per (param, index, bit): ``value``, ``flipped``, ``accuracy`` and ``rad`` =
    (acc_clean - acc_flipped) / acc_clean; ``attrs["clean_accuracy"]``. ``n_weights`` samples that
    many weights per parameter (same draw as the naive census for the same ``seed``).
    ``checkpoint``: a file where finished chunks are saved; a rerun with the same arguments skips
    them (an interrupted census resumed gives the same frame as one run straight through).
    ``batch_flips``: flips evaluated together (memory vs. speed). ``on_chunk(n_done)`` is called
    after each chunk is saved. See the module docstring for how exactness is guaranteed.
    """
    batch_flips = _check_batch_flips(batch_flips)
    if n_weights is not None and (isinstance(n_weights, bool) or not isinstance(n_weights, int) or n_weights < 1):
        raise ValueError(f"n_weights: {n_weights!r}; allowed None or ints >= 1")
    codec = Identity() if codec is None else codec
    if not getattr(codec, "elementwise", True):  # one flip may change several weights: no shortcut
        return naive_bit_census(model, data, fmt=fmt, bits=bits, params=params, n_weights=n_weights,
                                seed=seed, codec=codec, progress=progress)
    chosen = select_params(model, params)
    positions = resolve_bits(bits, codec.width(fmt), codec.fields(fmt))
    batches = materialize(data)
    plan = weight_plan(chosen, n_weights, seed)
    key = _fingerprint(chosen, plan, positions, fmt, codec, batches)
    done = _load_checkpoint(checkpoint, key)
    nb = len(positions)
    values = {name: p.detach().reshape(-1)[idx].clone() for (name, p), (_, idx) in zip(chosen, plan)}
    flipped = {name: flipped_values(p, idx, positions, fmt, codec) for (name, p), (_, idx) in zip(chosen, plan)}
    lookup = dict(chosen)
    total = sum(len(idx) * nb for _, idx in plan)
    _heap_headroom()
    store = Store(model, fmt, codec, params)
    bar = progress_bar(total=total, desc="bit census", progress=progress)
    try:
        with eval_mode(model), store.corrupted(BitErrorRate(0.0)), torch.no_grad():
            layers = _leaves(model)
            clean = _run_clean(layers, batches) if layers is not None else None
            if clean is None:
                n_total = sum(len(b[1]) for b in batches)
                clean_correct = _count(model, batches)
            else:
                n_total = len(clean.y)
                clean_correct = int(clean.ok.sum())
            acc_clean = clean_correct / n_total
            n_new = 0
            LAST_STATS.clear()
            LAST_STATS.update(certified=0, rechecked=0, recomputed=0)
            steps: dict[str, int] = {}
            orders: dict[str, Tensor] = {}
            for name, idx in plan:
                p = lookup[name]
                owner = None if layers is None else _owner(layers, model, name)
                fast = owner is not None and _certifiable(clean, owner[0], owner[1])
                packed = owner is not None and _packable(clean, owner[0], owner[1])
                flat_new = flipped[name].reshape(-1)
                flat_idx = idx.repeat_interleave(nb)
                order = torch.arange(len(flat_idx))
                if packed:  # interleave output channels, so that a chunk's flips share layer calls
                    m_own = layers[owner[0]]
                    fan = 1 if owner[1] == "bias" else _fan_in(m_own)
                    n_ch = clean.acts[owner[0] + 1].shape[1]
                    bitpos = torch.arange(nb).repeat(len(idx))
                    rank = ((flat_idx % fan) * nb + bitpos) * n_ch + flat_idx // fan
                    order = torch.argsort(rank, stable=True)
                orders[name] = order
                step = batch_flips
                if fast:
                    per_flip = 16 * n_total  # the screen's (flips, samples) arrays; rows are sub-batched
                    step = max(1, min(batch_flips, ELEMENTS_PER_CHUNK // max(per_flip, 1)))
                steps[name] = step
                for s in range(0, len(flat_new), step):
                    cid = (name, s, step)
                    if cid in done:
                        bar.update(len(done[cid]))
                        continue
                    ii, vv = flat_idx[order[s:s + step]], flat_new[order[s:s + step]]
                    if fast or packed:
                        if fast:
                            counts, redone, rechecked = _certify(clean, owner[0], owner[1], ii, vv)
                            LAST_STATS["rechecked"] += rechecked
                        else:
                            counts, _ = _exact_packed(clean, owner[0], owner[1], ii, vv)
                            redone = torch.ones(len(ii), dtype=torch.bool)
                        LAST_STATS["certified"] += len(counts) - int(redone.sum())
                        LAST_STATS["recomputed"] += int(redone.sum())
                    else:
                        start = owner[0] if owner is not None else 0
                        use = clean if owner is not None else None
                        counts = [_exact(model, p, int(i), v, use, start, batches) for i, v in zip(ii, vv)]
                        LAST_STATS["recomputed"] += len(counts)
                    done[cid] = [c / n_total for c in counts]
                    if checkpoint is not None:
                        _save_checkpoint(checkpoint, key, done)
                    bar.update(len(counts))
                    n_new += 1
                    if on_chunk is not None:
                        on_chunk(n_new)
    finally:
        bar.close()
    frames = []
    for name, idx in plan:  # the naive census's rows, built column by column (same values and dtypes)
        step, order = steps[name], orders[name]
        accs = torch.empty(len(idx) * nb, dtype=torch.float64)
        for s in range(0, len(idx) * nb, step):
            accs[order[s:s + step]] = torch.tensor(done[(name, s, step)], dtype=torch.float64)
        acc = accs.numpy()
        rad = (acc_clean - acc) / acc_clean if acc_clean > 0 else np.full(len(acc), np.nan)
        frames.append(pd.DataFrame({
            "param": [name] * len(acc), "index": idx.repeat_interleave(nb).numpy(),
            "bit": np.tile(np.asarray(positions, dtype=np.int64), len(idx)),
            "value": values[name].double().repeat_interleave(nb).numpy(),
            "flipped": flipped[name].double().reshape(-1).numpy(), "accuracy": acc, "rad": rad}))
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs["clean_accuracy"] = acc_clean
    return df


def count_above(census: pd.DataFrame, thresholds: Sequence[float] = (0.1, 0.9), by: str | None = "param"
                ) -> pd.DataFrame:
    """Number of single-bit flips whose RAD exceeds each threshold (Pranto et al. 2025 report the
    bits with RAD > 10% and in 90-100%), per parameter (``by="param"``), per bit position
    (``by="bit"``) or in total (``by=None``). Columns: the group, ``flips`` and ``rad>t`` for each t."""
    if by not in ("param", "bit", None):
        raise ValueError(f"by: {by!r}; allowed 'param', 'bit' or None")
    missing = [c for c in ("rad",) + (() if by is None else (by,)) if c not in census.columns]
    if missing:
        raise ValueError(f"census: columns {missing} are missing; expected a bit_census frame")
    ts = [float(t) for t in thresholds]
    if not ts:
        raise ValueError("thresholds: empty; give at least one RAD threshold")
    flags = pd.DataFrame({f"rad>{t:g}": (census["rad"] > t).astype("int64") for t in ts})
    flags.insert(0, "flips", 1)
    if by is None:
        return flags.sum().to_frame().T.reset_index(drop=True)
    flags.insert(0, by, census[by].to_numpy())
    return flags.groupby(by, sort=(by == "bit")).sum().reset_index()
