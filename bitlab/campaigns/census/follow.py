"""Following one changed output channel/unit of a mixing layer to the logits: as nonnegative
*bounds* on the change (the screen's ``A`` and ``B``) or as the *change* itself, in float64 on the
clean activations (the row path). The change stays in its channel (or run of features) up to the
next mixing layer, which sees it as a rank-1 update; from there on it is dense.

Every bound here is float64: a float32 dot product of n terms (bias included) in any order is within
``g = SAFETY * gamma_n * (sum|w||x| + |b|)`` of the exact one; 1e-9 relative factors cover our own
float64 rounding."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .clean import CleanRun
from .layers import MIXING, apply_elementwise, max_pool, route
from .rounding import TINY, dot_gamma, fan_in, mix, weight_of

__all__ = ["Untracked", "follow_change", "next_bound", "spread_bounds"]


class Untracked(Exception):
    """The change cannot be followed as one channel through this chain (the screen then abstains)."""


def spread_bounds(
    clean: CleanRun, l: int, chans: Tensor, e: Tensor, rounding: bool, planes: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Propagate per-sample bounds on |change| from output channel/unit ``chans[i]`` of mixing layer
    ``l`` to the logits, through |W| (every later op is monotone and 1-Lipschitz, or linear).

    ``e``: (rows, N, P) nonnegative bounds on one channel of layer ``l``'s output (P positions);
    item ``i`` reads row ``planes[i]`` (or row ``i``): channels that share an input plane share its
    elementwise ops. With ``rounding`` the propagated quantity is the flip-independent part ``B``
    (both runs' rounding bounds 2 g S + underflow slack at every later mixing layer); without it,
    ``A`` (the part proportional to |delta|, times (1 + g) at every mixing layer). Returns the bound
    on the logits (items, N, classes) and the largest bound anywhere on the way (items,)."""
    layers = clean.layers
    items, N = len(chans), e.shape[1]
    in_channel = isinstance(layers[l], nn.Conv2d)  # else a run of features
    spatial = tuple(clean.acts[l + 1].shape[2:])
    start = chans
    top = e.flatten(1).amax(1)
    top = top if planes is None else top[planes]
    elem, t = route(layers, l)
    rows = e.shape[0]
    for u in elem:  # ReLU on a bound, Identity, Dropout: |change| does not grow
        mu = layers[u]
        if isinstance(mu, nn.Flatten) and in_channel:
            start, in_channel = chans * math.prod(spatial), False
        elif isinstance(mu, nn.MaxPool2d):
            if not in_channel:  # a pool over a run of features cannot be tracked per channel
                raise Untracked
            z = max_pool(mu, e.reshape((rows * N, 1) + spatial))
            spatial = tuple(z.shape[2:])
            e = z.reshape(rows, N, -1)
    if planes is not None:
        e = e.index_select(0, planes)
    if t is None:  # the flipped layer feeds the logits directly
        return _into_logits(clean, in_channel, start, e), top
    g = dot_gamma(layers[t])
    out = _into_next_mixing(clean, t, chans, in_channel, start, spatial, e, weight_of(layers[t]).double().abs())
    out = next_bound(clean, t, out.mul_(1 + g), g, rounding)
    top = torch.maximum(top, out.flatten(1).amax(1))
    e = out.reshape((items * N,) + tuple(out.shape[2:]))
    for u in range(t + 1, len(layers)):  # dense from here on
        mu = layers[u]
        if isinstance(mu, MIXING):
            g = dot_gamma(mu)
            z = mix(mu, e, weight_of(mu).double().abs(), None).mul_(1 + g)
            z = next_bound(clean, u, z.reshape((items, N) + tuple(z.shape[1:])), g, rounding)
            top = torch.maximum(top, z.flatten(1).amax(1))
            e = z.reshape((items * N,) + tuple(z.shape[2:]))
        elif isinstance(mu, (nn.MaxPool2d, nn.Flatten)):  # ReLU etc. leave a bound >= 0 as it is
            e = apply_elementwise(mu, e)
    return e.reshape(items, N, -1), top


def follow_change(clean: CleanRun, l: int, chans: Tensor, e: Tensor, samples: Tensor) -> Tensor:
    """The change of the logits caused by a change ``e`` (R, 1, P) of output channel/unit
    ``chans[i]`` of mixing layer ``l`` in sample ``samples[i]`` (float64, exact up to float64
    rounding): through an elementwise op ``phi`` it becomes ``phi(v + e) - phi(v)`` with ``v`` the
    clean activation, through a mixing layer ``W e`` (no bias). Returns (R, 1, classes)."""
    layers = clean.layers
    items, N = len(chans), e.shape[1]
    in_channel = isinstance(layers[l], nn.Conv2d)  # else a run of features
    spatial = tuple(clean.acts[l + 1].shape[2:])
    start = chans
    elem, t = route(layers, l)
    rows = e.shape[0]
    for u in elem:  # the change lives in one channel (or a run of features)
        mu = layers[u]
        if isinstance(mu, nn.Flatten) and in_channel:
            start, in_channel = chans * math.prod(spatial), False
        elif isinstance(mu, nn.MaxPool2d):
            if not in_channel:
                raise Untracked
            v = _clean_slice(clean, u, samples, chans, in_channel, start, e.shape[-1])
            shape = (rows * N, 1) + spatial
            z = max_pool(mu, (v + e).reshape(shape)) - max_pool(mu, v.reshape(shape))
            spatial = tuple(z.shape[2:])
            e = z.reshape(rows, N, -1)
        elif isinstance(mu, nn.ReLU):
            v = _clean_slice(clean, u, samples, chans, in_channel, start, e.shape[-1])
            e = (v + e).clamp_min(0.0) - v.clamp_min(0.0)
    if t is None:
        return _into_logits(clean, in_channel, start, e)
    out = _into_next_mixing(clean, t, chans, in_channel, start, spatial, e, weight_of(layers[t]).double())
    e = out.reshape((items * N,) + tuple(out.shape[2:]))
    for u in range(t + 1, len(layers)):  # dense from here on
        mu = layers[u]
        if isinstance(mu, MIXING):
            e = mix(mu, e, weight_of(mu).double(), None)
        elif isinstance(mu, (nn.ReLU, nn.MaxPool2d)):
            e = apply_elementwise(mu, clean.acts64(u)[samples] + e) - clean.acts64(u + 1)[samples]
        elif isinstance(mu, nn.Flatten):
            e = apply_elementwise(mu, e)
    return e.reshape(items, N, -1)


def _clean_slice(
    clean: CleanRun, u: int, samples: Tensor, chans: Tensor, in_channel: bool, start: Tensor, length: int
) -> Tensor:
    """The clean input of layer ``u`` where each row's change lives: (R, 1, length)."""
    a = clean.acts64(u)
    if in_channel:
        return a.reshape(a.shape[0], a.shape[1], -1)[samples, chans][:, None]
    return a.reshape(a.shape[0], -1)[samples[:, None], start[:, None] + torch.arange(length)][:, None]


def _into_logits(clean: CleanRun, in_channel: bool, start: Tensor, e: Tensor) -> Tensor:
    """Runs of features ``e`` (items, N, length) starting at ``start`` placed in zero logits."""
    if in_channel:
        raise Untracked
    items, N, length = e.shape
    out = torch.zeros(items, N, clean.acts[-1].shape[1], dtype=torch.float64)
    cols = start[:, None] + torch.arange(length)[None, :]
    out.scatter_(2, cols[:, None, :].expand(items, N, length), e)
    return out


def _into_next_mixing(
    clean: CleanRun,
    t: int,
    chans: Tensor,
    in_channel: bool,
    start: Tensor,
    spatial: tuple[int, ...],
    e: Tensor,
    weight: Tensor,
) -> Tensor:
    """Mixing layer ``t`` with ``weight`` (|W| for bounds, W for a change, no bias) applied to
    changes that live in one input channel / run of features each: (items, N, ...) its output."""
    mt = clean.layers[t]
    items, N, length = e.shape
    if isinstance(mt, nn.Linear):  # each item's run of features is read by its own columns of W
        runs = weight.reshape(weight.shape[0], -1, length)  # (out, runs, length): the runs tile the features
        return torch.bmm(e, runs[:, start // length].permute(1, 2, 0))
    assert isinstance(mt, nn.Conv2d) and not isinstance(mt.padding, str)
    out = torch.empty((items, N) + tuple(clean.acts[t + 1].shape[1:]), dtype=torch.float64)
    for o in chans.unique().tolist():  # a conv reads channel o through W[:, o]
        if not in_channel:
            raise Untracked
        sel = (chans == o).nonzero().flatten()
        z = F.conv2d(
            e[sel].reshape((len(sel) * N, 1) + spatial), weight[:, o : o + 1], None, mt.stride, mt.padding, mt.dilation
        )
        out[sel] = z.reshape((len(sel), N) + tuple(z.shape[1:]))
    return out


def next_bound(clean: CleanRun, u: int, e: Tensor, g: float, rounding: bool) -> Tensor:
    """Add both runs' rounding bounds of mixing layer ``u`` (2 g S + underflow slack) to ``e``
    (items, N, ...) when propagating the flip-independent part."""
    if not rounding:
        return e
    n = fan_in(clean.layers[u]) + 2
    return e.add_(clean.abs_sums(u)[None], alpha=2 * g).add_(2 * TINY * n)
