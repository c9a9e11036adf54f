"""The recheck: from the exact input of the next mixing layer, our own float32 run of the rest of the
network on many flips at once, with a rounding radius that says where the naive run's logits can be;
it settles most flips without the naive per-flip suffix."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .budget import CACHE_ELEMENTS, RECHECK_ELEMENTS
from .clean import CleanRun
from .layers import MIXING, apply_elementwise, max_pool
from .rounding import SAFE_MAX, TINY, bias_of, dot_gamma, fan_in, mix, weight_of
from .rows import decide

__all__ = ["RecheckParts", "bound_step", "recheck", "recheck_parts", "rerun", "values_and_sums"]


@dataclass(eq=False)
class RecheckParts:
    """The flip-independent parts of the recheck's bound for changes entering mixing layer ``t``
    through one input channel (or run of ``size`` features) ``o`` (see :func:`recheck_parts`)."""

    radius0: Tensor  # E0 carried to the logits, (N, classes)
    radius1: Tensor  # E1 carried to the logits, per input channel o: (n_o, classes)
    radius0_max: list[Tensor]  # per mixing layer from t on, the largest E0 per sample (N,)
    radius1_max: list[Tensor]  # per mixing layer from t on, the largest E1 per channel (n_o,)
    weight_max: Tensor  # (n_o,) the largest sum of |W| over the weights that read channel o
    sum_max: Tensor  # (N,) the largest clean sum |W||x| + |b| at t per sample
    gamma: float  # g of layer t
    clean_input: Tensor  # (N, n_o, size): layer t's clean input
    clean_input_by_channel: Tensor  # (n_o, N, size): the same, channel-major
    runs: Tensor | None  # (n_o, size, out): the weights that read each run, when t feeds the logits
    feeds_logits: bool  # t is the last layer (a Linear)
    labels: Tensor  # (1, N, 1)
    label_mask: Tensor  # (1, N, classes) bool: the label positions


def bound_step(clean: CleanRun, u: int, e: Tensor) -> Tensor:
    """A bound ``e >= 0`` on |change| of layer ``u``'s input, carried to its output (no rounding
    part): |W| e (1 + g) through a mixing layer, the window maximum through max-pooling."""
    mu = clean.layers[u]
    if isinstance(mu, MIXING):
        return mix(mu, e, weight_of(mu).double().abs(), None).mul_(1 + dot_gamma(mu))
    if isinstance(mu, nn.MaxPool2d):
        return max_pool(mu, e)
    if isinstance(mu, nn.Flatten):
        return e.flatten(1)
    return e  # ReLU, Identity, Dropout: 1-Lipschitz


def recheck_parts(clean: CleanRun, t: int, size: int) -> RecheckParts:
    """The flip-independent parts of :func:`recheck`'s bound, for changes entering mixing layer
    ``t`` through one input channel (or run of ``size`` features) ``o`` (memoize with
    ``clean.memo(recheck_parts, t, size)``).

    At ``t`` both runs compute the same dot products of the same inputs ``x'``, each within
    ``g S'`` of the exact ones, and ``S' = |W||x'| + |b| <= S + m w_o`` (``S`` the clean sums,
    ``m`` the largest change of channel ``o``, ``w_o`` the sum of |W| over the weights that read
    it): the two runs differ by at most ``E0 + m E1`` with ``E0 = 2 g S`` (+ underflow slack)
    and ``E1[o] = 2 g w_o``. Both are carried to the logits by :func:`bound_step` (``e0``: (N,
    classes), ``e1``: (n_o, classes)); every later mixing layer adds the flip's own rounding part
    (see :func:`rerun`). When ``t`` is the last layer (a Linear) the logits are computed as the
    clean ones plus the run's change, so ``e0``/``e1`` also hold the float64 slack on them."""
    layers = clean.layers
    mt = layers[t]
    g, n = dot_gamma(mt), fan_in(mt) + 2
    W = weight_of(mt).double().abs()
    a = clean.acts[t]
    N, n_o = a.shape[0], a[0].numel() // size
    if isinstance(mt, nn.Conv2d):
        w_o = W.sum((2, 3))  # (out channels, n_o)
    else:  # runs of features: one channel of a flattened (C, H, W) input, or one unit
        w_o = W.reshape(W.shape[0], n_o, size).sum(2)
    S = clean.abs_sums(t)
    e0 = S * (2 * g) + 2 * TINY * n
    e1 = (2 * g) * w_o.T.reshape((n_o, w_o.shape[0]) + (1,) * (S.dim() - 2)).expand((n_o,) + tuple(S.shape[1:]))
    e0max, e1max = [e0.flatten(1).amax(1)], [e1.flatten(1).amax(1)]
    e0, e1 = e0.clone(), e1.contiguous()
    for u in range(t + 1, len(layers)):
        e0, e1 = bound_step(clean, u, e0), bound_step(clean, u, e1)
        if isinstance(layers[u], MIXING):
            e0.add_(4 * TINY * (fan_in(layers[u]) + 2))  # underflow in both runs and in our sums
            e0max.append(e0.flatten(1).amax(1))
            e1max.append(e1.flatten(1).amax(1))
    e0, e1 = e0.reshape(N, -1), e1.reshape(n_o, -1)
    last = t == len(layers) - 1 and isinstance(mt, nn.Linear)
    runs = None
    if last:  # (n_o, size, out): the weights that read each run; float64 slack on z + change
        runs = weight_of(mt).double().reshape(-1, n_o, size).permute(1, 2, 0).contiguous()
        e0 = e0 + 1e-12 * clean.acts64(t + 1).abs()
        e1 = e1 + (1e-12 + 2.0**-23) * runs.abs().sum(1)  # the change is read in float32 (rounded)
    y = clean.y[None, :, None]
    return RecheckParts(
        radius0=e0 * (1 + 1e-9),
        radius1=e1 * (1 + 1e-9),
        radius0_max=e0max,
        radius1_max=e1max,
        weight_max=w_o.amax(0),
        sum_max=S.flatten(1).amax(1),
        gamma=g,
        clean_input=a.contiguous().reshape(N, n_o, -1),
        clean_input_by_channel=a.reshape(N, n_o, -1).transpose(0, 1).contiguous(),
        runs=runs,
        feeds_logits=last,
        labels=y,
        label_mask=torch.zeros(1, N, e0.shape[1], dtype=torch.bool).scatter_(2, y, True),
    )


def recheck(clean: CleanRun, t: int, z: Tensor, chans: list[int], open_: Tensor, base: Tensor) -> list[int | None]:
    """Settle flips from the exact input of mixing layer ``t`` without the naive per-flip suffix.

    ``z`` (flips, N, size): channel ``chans[j]`` of layer ``t``'s input in flip ``j``'s naive run,
    bit for bit (see :func:`~.exact.exact_packed`); ``open_`` (flips, N): the samples not yet
    settled; ``base`` (flips,): the correct count if every open sample keeps its clean outcome. A
    sample whose input is unchanged keeps its clean outcome exactly. For the others the rest of the
    network runs here in float32 on several flips at once (any shapes), and the naive run's logits
    are within ``E0 + m E1 + D`` of ours (:func:`recheck_parts`, :func:`rerun`). When ``t`` is
    the last layer, ours are the clean logits plus the change of the run (read in float32, so
    rounded, which ``E1`` covers), in float64.
    Returns the count of each flip whose open samples are all settled, else None."""
    parts = clean.memo(recheck_parts, t, z.shape[2])
    N, n_o, size = parts.clean_input.shape
    o = torch.tensor(chans)
    diff = z - parts.clean_input_by_channel.index_select(0, o)  # (flips, N, size), float32: within 2^-24 relative
    m = diff.abs().amax(2).double().mul_(1 + 2.0**-22)  # >= the largest change; NaN stays NaN
    need = open_ & ~(m == 0)
    res, done = base.clone(), ~need.any(1)
    js = (~done).nonzero().flatten()
    if not len(js):
        return [int(c) for c in res.tolist()]
    o, m, need = o[js], m[js], need[js]
    last = parts.feeds_logits
    zs = diff.index_select(0, js).double() if last else z.index_select(0, js)
    width = clean.acts[-1][0].numel() if last else max(a[0].numel() for a in clean.acts[t:])
    step = max(1, min(len(js), (CACHE_ELEMENTS if last else RECHECK_ELEMENTS) // (N * width)))
    buf = None if last else torch.empty((step, N, n_o, size))
    g = parts.gamma
    gain = torch.zeros(len(js), dtype=torch.int64)
    ok = torch.zeros(len(js), dtype=torch.bool)
    for s in range(0, len(js), step):  # a few flips at a time: bounded temporaries
        sl = slice(s, s + step)
        oj, mj = o[sl], m[sl]
        n_flips = len(oj)
        # no partial sum at t overflows (S' <= S + m w_o), nor anything after it (see rerun)
        reach = parts.sum_max[None] + mj * parts.weight_max[oj][:, None]
        safe = reach * ((1 + 2 * g) * (1 + g) * (1 + 1e-9)) < SAFE_MAX
        r = torch.addcmul(parts.radius0[None], mj[..., None], parts.radius1[oj][:, None])  # (n_flips, N, classes)
        if parts.runs is not None:  # the run feeds the logits: the clean logits plus the run's change
            c = torch.baddbmm(clean.acts64(t + 1)[None], zs[sl], parts.runs[oj])
        else:
            assert buf is not None
            x = buf[:n_flips]
            x.copy_(parts.clean_input.expand(n_flips, N, n_o, size))
            x[torch.arange(n_flips), :, oj] = zs[sl]
            x = x.view((n_flips * N,) + tuple(clean.acts[t].shape[1:]))
            c, d = rerun(clean, t, x, parts, mj, oj, safe)
            c = c.view(n_flips, N, -1).double()
            r += d.view(n_flips, N, -1) if d is not None else c.abs().mul_(1e-12)
        right, wrong = decide(parts.labels.expand(n_flips, N, 1), c, r, parts.label_mask)
        nj = need[sl]
        ok[sl] = ((right | wrong) & safe | ~nj).all(1)  # safe implies finite logits in both runs
        gain[sl] = ((right.long() - clean.ok.long()[None]) * nj).sum(1)
    res[js] += gain
    done[js] = ok
    return [int(c) if d else None for c, d in zip(res.tolist(), done.tolist())]


def rerun(
    clean: CleanRun, t: int, x: Tensor, parts: RecheckParts, mj: Tensor, oj: Tensor, safe: Tensor
) -> tuple[Tensor, Tensor | None]:
    """Our float32 run from mixing layer ``t`` on the flips' exact inputs ``x`` (F N, ...): the
    logits and the per-flip part ``D`` of the bound (None if no mixing layer follows ``t``).
    At each later mixing layer ``|naive - ours| <= |W| d (1 + g) + 2 g S'``, ``S'`` the sums
    ``|W||x| + |b|`` of our run (Higham eq. 3.5 for both runs; the naive run's sums are at most
    ours plus ``|W| d``); ``D`` also holds the float64 slack 1e-12 |logits|. Clears ``safe``
    (F, N) where a naive partial sum could overflow."""
    layers = clean.layers
    n_flips, N = mj.shape
    x = layers[t](x)
    d, k, nonneg, u = None, 1, False, t + 1
    while u < len(layers):
        mu = layers[u]
        if isinstance(mu, MIXING):
            gu = dot_gamma(mu)
            x, sx = values_and_sums(clean, u, x, nonneg)
            kappa = (2 * gu * (1 + gu) + 1e-12 * (1 + gu)) * (1 + 1e-9)
            dn = sx.double().mul_(kappa)  # >= 2 g S' (and the slack on |logits| <= S')
            top = sx.flatten(1).amax(1).double() * (1 + gu)
            if d is None:
                top = top * (1 + kappa)
            else:
                dn += bound_step(clean, u, d)
                top = top + dn.flatten(1).amax(1)
            top = top.view(n_flips, N) + parts.radius0_max[k][None] + mj * parts.radius1_max[k][oj][:, None]
            safe &= top * ((1 + gu) * (1 + 1e-9)) < SAFE_MAX
            d, k, nonneg = dn, k + 1, False
        elif isinstance(mu, nn.ReLU) and u + 1 < len(layers) and isinstance(layers[u + 1], nn.MaxPool2d):
            pool = layers[u + 1]
            assert isinstance(pool, nn.MaxPool2d)
            x = torch.relu_(max_pool(pool, x))  # the same values, on a quarter of them
            d = None if d is None else bound_step(clean, u + 1, d)
            nonneg, u = True, u + 1
        else:
            x = apply_elementwise(mu, x)
            d = None if d is None else bound_step(clean, u, d)
            nonneg = nonneg or isinstance(mu, nn.ReLU)
        u += 1
    return x, d


def values_and_sums(clean: CleanRun, u: int, x: Tensor, nonneg: bool) -> tuple[Tensor, Tensor]:
    """Mixing layer ``u`` on ``x`` (float32, any shapes) and the sums ``|W||x| + |b|`` of its dot
    products; one call with the two weights stacked when ``x >= 0`` (after a ReLU)."""
    mu = clean.layers[u]
    if not nonneg:
        b = bias_of(mu)
        return mu(x), mix(mu, x.abs(), weight_of(mu).abs(), None if b is None else b.abs())
    n_out = weight_of(mu).shape[0]
    both = mix(mu, x, *clean.signed_and_abs(u))
    return both[:, :n_out], both[:, n_out:]
