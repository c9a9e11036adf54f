"""Fast exact single-bit census: the relative accuracy drop (RAD) of every single-bit flip.

Pranto et al. 2025 measure a model's sensitivity to parameter corruption by flipping each bit of
each parameter on its own and recording RAD = (acc_clean - acc_flipped) / acc_clean. The naive
loop (:func:`bitlab.campaign.naive_bit_census`: flip, full forward, restore) costs one forward
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

   a. *screen*: a Lipschitz bound on how far the flipped naive logits can be from the clean naive
      logits; below half the clean margin the outcome (finite, argmax == label) is the clean one;
   b. *interval bounds* (float64 value +- radius containing the naive float32 value, propagated
      through the rank-1 layers and then densely) for the few samples the screen leaves open;
      certainly right / certainly wrong, with overflow to Inf excluded;
   c. every flip with a sample still open (near-ties, possible Inf/NaN, a non-finite weight, or too
      many open samples to be worth bounding) is **recomputed exactly**: its layer is called with
      the naive shapes (flips in different output channels share one call: each output element
      reads only its own weights), the changed channel goes through the exact per-channel ops,
      is spliced into the cached clean input of the next layer, and the rest of the network runs
      per flip on the naive batches -- the same calls on the same shapes as the naive loop.

   An element whose dot product does not involve the changed weight with a nonzero input is
   bit-identical to the clean run (same kernel, same shapes, the changed term is an exact zero),
   so samples that never touch the weight keep their clean outcome.

A layer whose suffix holds a module the bounds do not cover (e.g. BatchNorm) takes the exact path
(3c) for every flip; a parameter of any other module of a Sequential reruns the network from its
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

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .faults import BitErrorRate
from .formats import FP32, Format, resolve_bits
from .inject import ParamSelection, Store, select_params
from .progress import bar as progress_bar
from .protect import Codec, Identity, subset_state

__all__ = ["bit_census", "count_above"]

F32_MAX = float(torch.finfo(torch.float32).max)
SAFE_MAX = F32_MAX * (1.0 - 2.0 ** -12)  # no naive partial sum can overflow below this
SAFETY = 2.0  # multiplies the classical gamma_n bound
U32 = 2.0 ** -24  # unit roundoff of float32
TINY = 2.0 ** -125  # per-term absolute slack for underflow / flushed subnormals
ELEMENTS_PER_CHUNK = 1 << 24  # memory budget of one vectorized step (float64 elements)

#: counts of the last :func:`bit_census` call: flips certified by the bounds, flips recomputed exactly
LAST_STATS: dict[str, int] = {}

ELEMENTWISE = (nn.ReLU, nn.MaxPool2d, nn.Flatten, nn.Identity, nn.Dropout, nn.Dropout2d)
MIXING = (nn.Linear, nn.Conv2d)


# ----------------------------------------------------------------------------------------- plan

def weight_plan(chosen: list[tuple[str, nn.Parameter]], n_weights: int | None, seed: int
                ) -> list[tuple[str, Tensor]]:
    """The weights a census visits per parameter: all of them, or ``n_weights`` drawn without
    replacement (seeded) and sorted. Shared by the naive and the fast census."""
    g = torch.Generator().manual_seed(seed)
    plan = []
    for name, p in chosen:
        idx = torch.arange(p.numel())
        if n_weights is not None and n_weights < p.numel():
            idx = torch.randperm(p.numel(), generator=g)[:n_weights].sort().values
        plan.append((name, idx))
    return plan


def _flipped_values(orig: Tensor, idx: Tensor, positions: tuple[int, ...], fmt: Format,
                    codec: Codec) -> Tensor:
    """What each selected weight reads back as with each bit flipped: shape (len(idx), n_bits)."""
    flat = orig.detach().reshape(-1)
    state = codec.fit(orig.detach(), fmt)
    sub = subset_state(state, idx, flat.numel())
    words = codec.encode(flat[idx], fmt, sub)
    masks = torch.ones(len(positions), dtype=torch.int64).bitwise_left_shift(
        torch.tensor(positions, dtype=torch.int64))
    faulty = words[:, None] ^ masks[None, :]
    sub_rep = subset_state(state, idx.repeat_interleave(len(positions)), flat.numel())
    out = codec.decode(faulty.reshape(-1), fmt, sub_rep).to(orig.dtype)
    return out.reshape(len(idx), len(positions))


# ------------------------------------------------------------------------------- chain analysis

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


def _elementwise(m: nn.Module, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Bounds through a monotone elementwise module (lo, hi of shape (rows, ...))."""
    if isinstance(m, nn.ReLU):
        return lo.clamp_min(0.0), hi.clamp_min(0.0)
    if isinstance(m, nn.MaxPool2d):
        pool = lambda t: F.max_pool2d(t, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)  # noqa: E731
        return pool(lo), pool(hi)
    if isinstance(m, nn.Flatten):
        return lo.flatten(1), hi.flatten(1)
    return lo, hi  # Identity, Dropout in eval mode


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
    logits = acts[-1]
    ok = torch.isfinite(logits).all(dim=1) & (logits.argmax(dim=1) == y)
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


# ------------------------------------------------------------------------------- certified path
#
# Every quantity below is float64. For each activation of a flipped run we keep (c, r): the naive
# float32 value lies in [c - r, c + r]; r == 0 means c *is* the naive value. A float32 dot product of
# n terms (bias included) in any order is within g = SAFETY * gamma_n of sum|w||x| + |b| of the exact
# one; 1e-12 relative terms cover our own float64 rounding.

EPS64 = 1e-12


def _route(clean: _Clean, l: int) -> tuple[list[int], int | None, list[int]]:
    """Layers after ``l``: the elementwise ones before the next mixing layer, that layer (or None),
    and the mixing layers after it."""
    layers = clean.layers
    t = l + 1
    while t < len(layers) and isinstance(layers[t], ELEMENTWISE):
        t += 1
    if t == len(layers):
        return list(range(l + 1, t)), None, []
    return list(range(l + 1, t)), t, [u for u in range(t + 1, len(layers)) if isinstance(layers[u], MIXING)]


def _margin(clean: _Clean) -> Tensor:
    """How far each clean sample is from changing its outcome: (true logit - best other) if right,
    (best other - true logit) if wrong; 0 on a tie."""
    key = ("margin",)
    if key not in clean.cache:
        z = clean.a64(len(clean.layers))
        zy = z.gather(1, clean.y[:, None])[:, 0]
        other = z.scatter(1, clean.y[:, None], -math.inf).amax(1)
        clean.cache[key] = torch.where(clean.ok, zy - other, other - zy).clamp_min(0.0)
    return clean.cache[key]


def _smax(clean: _Clean, t: int) -> Tensor:
    """Per sample: the largest sum|w||x| + |b| over the outputs of mixing layer ``t`` (clean run)."""
    key = ("smax", t)
    if key not in clean.cache:
        clean.cache[key] = clean.s_clean(t).flatten(1).amax(1)
    return clean.cache[key]


def _screen(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor) -> Tensor:
    """(K, N) bool: the sample's outcome is certainly the clean one.

    A per-sample Lipschitz bound ``e`` on how far the flipped naive logits can be from the clean
    naive logits: the change of the flipped unit (plus both runs' rounding bounds), times the largest
    absolute row sum of each later mixing layer (plus its rounding bounds). The outcome is unchanged
    when ``e`` is below half the clean margin. The chain is affine, ``e = G_k * e0 + H_n`` with
    per-flip ``G_k`` and per-sample ``H_n``; overflow is excluded per flip with the largest values.
    Samples whose inputs to the flipped weight are all zero are unchanged (exact zero terms)."""
    layers = clean.layers
    m = layers[l]
    N = clean.y.shape[0]
    old = getattr(m, attr).detach().reshape(-1)[idx].double()
    dabs = (new.double() - old).abs()  # (K,)
    if attr == "bias":
        ch = idx
        xmax = torch.ones(len(idx), N, dtype=torch.float64)
    else:
        key = ("xmaxT", l)
        if key not in clean.cache:
            clean.cache[key] = clean.cols(l).abs().amax(2).T.contiguous()  # (fan_in, N)
        ch, q = idx // _fan_in(m), idx % _fan_in(m)
        xmax = clean.cache[key].index_select(0, q)  # (K, N)
    key = ("smaxLT", l)
    if key not in clean.cache:
        clean.cache[key] = clean.s_clean(l).reshape(N, clean.acts[l + 1].shape[1], -1).amax(2).T.contiguous()
    s_l = clean.cache[key].index_select(0, ch)  # (K, N)
    g = _gamma(_fan_in(m) + 2)
    # e0 = (1 + g) |delta| xmax + 2 g s_l, the bound at the flipped layer
    e0 = torch.addcmul(s_l, xmax, ((1 + g) / (2 * g)) * dabs[:, None]).mul_(2 * g)
    e0_max = (1 + g) * dabs * xmax.amax(1) + 2 * g * s_l.amax(1)  # (K,)
    ok = (s_l.amax(1) + dabs * xmax.amax(1)) * (1 + g) < SAFE_MAX
    G = torch.ones(len(idx), dtype=torch.float64)
    H = torch.zeros(N, dtype=torch.float64)
    _, t, rest = _route(clean, l)
    if t is not None:
        W2 = layers[t].weight.detach().double().abs()
        if isinstance(layers[t], nn.Conv2d):
            lip = W2.sum((2, 3)).amax(0)[ch]  # (K,)
        else:  # the slice is unit ch of a Linear, or channel ch flattened into a run of features
            C = clean.acts[l + 1].shape[1]
            lip = W2.reshape(W2.shape[0], C, -1).sum(2).amax(0)[ch]
        e_max = e0_max
        for u, gain in [(t, lip)] + [(u, None) for u in rest]:
            mu = layers[u]
            if gain is None:
                gain = mu.weight.detach().double().abs().flatten(1).sum(1).amax()
            g = _gamma(_fan_in(mu) + 2)
            sm = _smax(clean, u)
            ok &= (sm.amax() + gain * (e_max + H.amax())) * (1 + g) < SAFE_MAX
            # e <- (1 + g) gain e + 2 g sm
            G = (1 + g) * gain * G
            # H is still zero at the first (per-flip gain) layer; later gains are global
            H = 2 * g * sm if u == t else (1 + g) * gain * H + 2 * g * sm
            e_max = G * e0_max
    # certain when 2 e (1 + slack) < margin, i.e. G e0 < margin / (2 (1 + slack)) - H
    room = _margin(clean) / (2 * (1 + 1e-9)) - H * (1 + 1e-9)
    certain = (e0 * (G * (1 + 1e-9))[:, None] < room[None, :]) & ok[:, None]
    return certain | (xmax == 0)


def _certify_rows(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor, nn_: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Interval bounds for R (flip, sample) rows: row j is sample ``nn_[j]`` with weight ``idx[j]``
    of layer ``l`` reading ``new[j]``. Returns (certainly right, certainly wrong, unsafe), (R,) bool."""
    layers = clean.layers
    m = layers[l]
    R = len(idx)
    old = getattr(m, attr).detach().reshape(-1)[idx].double()
    new64 = new.double()
    delta, dabs = new64 - old, (new64.abs() - old.abs()).clamp_min(0.0)
    N = clean.y.shape[0]
    out = clean.a64(l + 1).reshape(N, clean.acts[l + 1].shape[1], -1)  # (N, out, P)
    S = clean.s_clean(l).reshape(out.shape)
    n = _fan_in(m) + 2
    g = _gamma(n)
    if attr == "bias":
        ch = idx
        X = torch.ones(R, out.shape[2], dtype=torch.float64)
    else:
        ch, q = idx // _fan_in(m), idx % _fan_in(m)
        X = clean.cols(l)[nn_, q, :]  # (R, P)
    a, sl = out[nn_, ch, :], S[nn_, ch, :]
    c = a + delta[:, None] * X
    s_new = sl + dabs[:, None] * X.abs()
    touched = X != 0
    unsafe = ((s_new * (1 + g) >= SAFE_MAX) & touched).any(1)
    r = (sl + s_new) * (g + EPS64) + EPS64 * c.abs() + TINY * n
    r = r.masked_fill_(~touched, 0.0)
    elem, t, _ = _route(clean, l)
    kind = "chan" if isinstance(m, nn.Conv2d) else "feat"
    spatial = tuple(clean.acts[l + 1].shape[2:])
    start = ch
    for u in elem:  # the change lives in one channel (or a run of features)
        mu = layers[u]
        if isinstance(mu, nn.Flatten):
            if kind == "chan":
                size = math.prod(spatial)
                start, kind = ch * size, "feat"
                c, r = c.reshape(R, size), r.reshape(R, size)
        elif not isinstance(mu, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            shape = (R, 1) + spatial if kind == "chan" else (R, c.shape[-1])
            lo, hi = _elementwise(mu, (c - r).reshape(shape), (c + r).reshape(shape))
            if kind == "chan":
                spatial = tuple(lo.shape[2:])
            c, r = ((hi + lo) / 2).reshape(R, -1), ((hi - lo) / 2).reshape(R, -1)
    tt = len(layers) if t is None else t
    x_in = clean.a64(tt)
    length = c.shape[-1]
    if kind == "chan":
        base = x_in.reshape(N, x_in.shape[1], -1)[nn_, ch, :]
    else:
        cols = start[:, None] + torch.arange(length)[None, :]  # (R, length)
        base = x_in.reshape(N, -1)[nn_[:, None], cols]
    dx = c - base
    if t is None:  # the flipped layer feeds the logits directly
        if kind != "feat":
            return torch.zeros(R, dtype=torch.bool), torch.zeros(R, dtype=torch.bool), torch.ones(R, dtype=torch.bool)
        lc, lr = x_in[nn_].clone(), torch.zeros(R, x_in.shape[1], dtype=torch.float64)
        lc.scatter_(1, cols, c)
        lr.scatter_(1, cols, r)
        return (*_decide_rows(clean, nn_, lc, lr), unsafe)
    # rank-1 update at the next mixing layer
    m = layers[t]
    n = _fan_in(m) + 2
    g = _gamma(n)
    W = m.weight.detach().double()
    grow = ((c.abs() + r) - base.abs()).clamp_min(0.0)  # growth of |x|
    v = r + (g + EPS64) * grow + EPS64 * dx.abs() + 1e-30 * (dx != 0)  # > 0 exactly where changed
    if isinstance(m, nn.Linear):
        Ws = W[:, cols].transpose(0, 1)  # (R, out, length)
        dy = torch.bmm(Ws, dx[:, :, None])[:, :, 0]
        yr = torch.bmm(Ws.abs(), v[:, :, None])[:, :, 0]
    else:
        Wk = W[:, ch].transpose(0, 1).flatten(2)  # (R, out, kh*kw)
        unf = lambda z: F.unfold(z.reshape((R, 1) + spatial), m.kernel_size, m.dilation,  # noqa: E731
                                 m.padding, m.stride)  # (R, kh*kw, P)
        dy = torch.bmm(Wk, unf(dx)).reshape(R, -1)
        yr = torch.bmm(Wk.abs(), unf(v)).reshape(R, -1)
    s2 = clean.s_clean(t).reshape(N, -1)[nn_]
    touched = yr > 0
    c = clean.a64(t + 1).reshape(N, -1)[nn_] + dy
    unsafe |= (((s2 + yr / g) * (1 + g) >= SAFE_MAX) & touched).any(1)
    r = yr * (1 + EPS64) + (2 * g + EPS64) * s2 + EPS64 * c.abs() + TINY * n
    r = r.masked_fill_(~touched, 0.0)
    shape = (R,) + tuple(clean.acts[t + 1].shape[1:])
    c, r = c.reshape(shape), r.reshape(shape)
    for mu in layers[t + 1:]:  # dense from here on
        if isinstance(mu, MIXING):
            n = _fan_in(mu) + 2
            g = _gamma(n)
            b = None if mu.bias is None else mu.bias.detach().double()
            gb = None if b is None else (g + EPS64) * b.abs()
            r = _mix64(mu, r + (g + EPS64) * (c.abs() + r), mu.weight.detach().double().abs(), gb)
            r = r * (1 + EPS64) + TINY * n
            unsafe |= (r / g * (1 + g) >= SAFE_MAX).flatten(1).any(1)
            c = _mix64(mu, c, mu.weight.detach().double(), b)
            r = r + EPS64 * c.abs()
        elif not isinstance(mu, (nn.Identity, nn.Dropout, nn.Dropout2d)):
            lo, hi = _elementwise(mu, c - r, c + r)
            c, r = (hi + lo) / 2, (hi - lo) / 2
    return (*_decide_rows(clean, nn_, c, r), unsafe)


def _decide_rows(clean: _Clean, nn_: Tensor, c: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """(certainly right, certainly wrong) per row from logit bounds c +- r of shape (R, classes)."""
    y = clean.y[nn_][:, None]
    lo, hi = c - r, c + r
    right = lo.gather(1, y)[:, 0] > hi.scatter(1, y, -math.inf).amax(1)
    wrong = lo.scatter(1, y, -math.inf).amax(1) > hi.gather(1, y)[:, 0]
    return right, wrong


def _row_limit(clean: _Clean, l: int) -> tuple[int, int]:
    """How many unsettled samples a flip may send to the interval bounds before the exact path is
    cheaper (a cost heuristic only), and the float64 elements one such row needs."""
    N = clean.y.shape[0]
    _, t, _ = _route(clean, l)
    dense = 0 if t is None else sum(a[0].numel() for a in clean.acts[t + 1:])
    row = clean.acts[l + 1][0].numel() // clean.acts[l + 1].shape[1] + dense + 16
    return max(1, min(N // 4, N * 32 // (32 + dense))), row


def _certify(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor) -> tuple[Tensor, Tensor]:
    """Correct-sample counts of K flips (int64) and a mask of the flips left to the exact path.

    The cheap screen settles most (flip, sample) pairs; a flip with a few unsettled samples gets
    interval bounds on those rows; a flip with many goes to the exact path (cheaper than bounds)."""
    K, N = len(idx), clean.y.shape[0]
    bad = ~torch.isfinite(new)
    new = torch.where(bad, torch.zeros_like(new), new)  # those flips go to the exact path anyway
    counts = torch.full((K,), int(clean.ok.sum()), dtype=torch.int64)
    unsettled = ~_screen(clean, l, attr, idx, new)
    limit, _ = _row_limit(clean, l)
    per_flip = unsettled.sum(1)
    bad |= per_flip > limit
    kk_all, nn_all = (unsettled & ~bad[:, None]).nonzero(as_tuple=True)
    _, row = _row_limit(clean, l)
    step = max(1, ELEMENTS_PER_CHUNK // (8 * row))
    for s in range(0, len(kk_all), step):  # bounded memory however many rows are unsettled
        kk, nn_ = kk_all[s:s + step], nn_all[s:s + step]
        right, wrong, unsafe = _certify_rows(clean, l, attr, idx[kk], new[kk], nn_)
        counts.index_add_(0, kk, right.long() - clean.ok[nn_].long())
        bad[kk[unsafe | (~right & ~wrong)]] = True
    return counts, bad


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
        correct = 0
        for xb, (_, yb) in zip(clean.batch_acts[start], batches):
            logits = xb
            for m in clean.layers[start:]:
                logits = m(logits)
            finite = torch.isfinite(logits).all(dim=1)
            correct += int(((logits.argmax(dim=1) == yb) & finite).sum())
        return correct
    finally:
        flat[index] = old


def _packable(clean: _Clean, l: int, attr: str) -> bool:
    """The packed exact path needs a Linear/Conv2d owner followed by exact per-channel ops."""
    layers = clean.layers
    if attr not in ("weight", "bias") or not isinstance(layers[l], MIXING) or not _supported(layers[l]):
        return False
    if clean.acts[l].dim() != (2 if isinstance(layers[l], nn.Linear) else 4):
        return False
    elem, _, _ = _route(clean, l)
    return all(_supported(layers[u]) for u in elem)


@torch.no_grad()
def _exact_packed(clean: _Clean, l: int, attr: str, idx: Tensor, new: Tensor) -> list[int]:
    """Correct samples of each flip, computed exactly as the naive forward computes them.

    Flips that move different output units/channels share one call of the flipped layer (each
    output element of a Linear/Conv2d reads only its own weights, and the call has the naive
    shapes); ReLU / max-pooling / Flatten (exact, elementwise or per channel) then run on the
    changed channel only, which is written into the cached clean input of the next layer; from
    there the modules run on the naive batches."""
    layers = clean.layers
    m = layers[l]
    flat = getattr(m, attr).data.view(-1)
    fan = 1 if attr == "bias" else _fan_in(m)
    ch = (idx // fan).tolist()
    elem, t, _ = _route(clean, l)
    counts = [0] * len(idx)
    todo = list(range(len(idx)))
    while todo:
        pack, used, rest = [], set(), []
        for k in todo:
            (rest if ch[k] in used else pack).append(k)
            used.add(ch[k])
        sel = idx[pack]
        old = flat[sel].clone()
        flat[sel] = new[pack].to(flat.dtype)
        try:
            outs = [m(xb) for xb in clean.batch_acts[l]]
        finally:
            flat[sel] = old
        for k, c in zip(pack, _finish(clean, elem, t, outs, [ch[k] for k in pack])):
            counts[k] = c
        todo = rest
    return counts


def _finish(clean: _Clean, elem: list[int], t: int | None, outs: list[Tensor], chans: list[int]) -> list[int]:
    """Correct samples of each flip of a pack, from the flipped layer's outputs ``outs`` (per batch).

    Exact elementwise / per-channel modules (ReLU, max-pooling, Flatten, Identity, Dropout in eval)
    give the same value for each element whatever the shape of the call, so the pack's changed
    channels go through them together; from the next mixing layer on, every module runs per flip
    and per batch on a fresh tensor of the naive run's shape, as the naive forward calls it."""
    layers = clean.layers
    z = torch.cat([o[:, chans] for o in outs])  # the pack's channels (N, flips, ...)
    for u in elem:
        if not isinstance(layers[u], nn.Flatten):  # the splice below writes in flat layout anyway
            z = layers[u](z)
    size = z[0, 0].numel() if z.dim() > 2 else 1
    z = z.reshape(z.shape[0], len(chans), -1)
    tt = len(layers) if t is None else t
    hs = []  # per flip and batch: the input of layer tt
    for j, o in enumerate(chans):
        for b, (lo, hi) in enumerate(clean.bounds):
            x = clean.batch_acts[tt][b].clone()
            if x.dim() > 2:  # channel o of an image batch
                x[:, o] = z[lo:hi, j].reshape(x[:, o].shape)
            else:  # unit o, or channel o flattened into a run of features
                x[:, o * size:(o + 1) * size] = z[lo:hi, j]
            hs.append(x)
    for mu in layers[tt:]:
        hs = [mu(h) for h in hs]
    h = torch.cat(hs).reshape(len(chans), clean.y.shape[0], -1)  # (flips, N, classes)
    ok = torch.isfinite(h).all(dim=2) & (h.argmax(dim=2) == clean.y[None, :])
    return ok.sum(1).tolist()


def _count(model: nn.Module, batches: list[tuple[Tensor, Tensor]]) -> int:
    """Correct samples of a full forward, counted as :func:`bitlab.campaign.batch_accuracy` does."""
    correct = 0
    for x, yb in batches:
        logits = model(x)
        finite = torch.isfinite(logits).all(dim=1)
        correct += int(((logits.argmax(dim=1) == yb) & finite).sum())
    return correct


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
    :func:`bitlab.campaign.naive_bit_census` row for row and float for float, but fast.

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
    from .campaign import materialize, naive_bit_census  # late import: campaign re-exports this module

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
    flipped = {name: _flipped_values(p, idx, positions, fmt, codec) for (name, p), (_, idx) in zip(chosen, plan)}
    lookup = dict(chosen)
    total = sum(len(idx) * nb for _, idx in plan)
    was_training = model.training
    model.eval()
    store = Store(model, fmt, codec, params)
    bar = progress_bar(total=total, desc="bit census", progress=progress)
    try:
        with store.corrupted(BitErrorRate(0.0)), torch.no_grad():
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
            LAST_STATS.update(certified=0, recomputed=0)
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
                            counts, unsure = _certify(clean, owner[0], owner[1], ii, vv)
                            counts = counts.tolist()
                        else:
                            counts, unsure = [0] * len(ii), torch.ones(len(ii), dtype=torch.bool)
                        redo = unsure.nonzero().flatten()
                        LAST_STATS["certified"] += len(counts) - len(redo)
                        LAST_STATS["recomputed"] += len(redo)
                        if len(redo):
                            exact = _exact_packed(clean, owner[0], owner[1], ii[redo], vv[redo])
                            for k, c in zip(redo.tolist(), exact):
                                counts[k] = c
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
        model.train(was_training)
    rows = []
    for name, idx in plan:
        step, order = steps[name], orders[name]
        accs = [0.0] * (len(idx) * nb)
        for s in range(0, len(idx) * nb, step):
            for j, a in zip(order[s:s + step].tolist(), done[(name, s, step)]):
                accs[j] = a
        v, fl = values[name].tolist(), flipped[name].tolist()
        for w, i in enumerate(idx.tolist()):
            for bpos, b in enumerate(positions):
                acc = accs[w * nb + bpos]
                rows.append({"param": name, "index": i, "bit": b, "value": v[w], "flipped": fl[w][bpos],
                             "accuracy": acc,
                             "rad": (acc_clean - acc) / acc_clean if acc_clean > 0 else float("nan")})
    df = pd.DataFrame(rows)
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
