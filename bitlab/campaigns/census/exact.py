"""The exact path: flips recomputed with the naive forward's calls on the naive batches, packed so
that flips in different output channels share one call of the flipped layer, with the recheck
settling what it can from the next mixing layer's exact input before the naive per-flip suffix runs."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...evaluate import correct
from .budget import ELEMENTS_PER_CHUNK
from .clean import CleanRun, count_correct
from .layers import MIXING, apply_elementwise, route, supported
from .recheck import recheck
from .rounding import fan_in

__all__ = ["exact_packed", "packable", "recompute_one"]


@torch.no_grad()
def recompute_one(
    model: nn.Module,
    p: nn.Parameter,
    index: int,
    value: Tensor,
    clean: CleanRun | None,
    start: int,
    batches: list[tuple[Tensor, Tensor]],
) -> int:
    """Correct samples with ``p.view(-1)[index] = value``, computed as the naive loop does: the full
    forward (``clean`` None), or the chain from layer ``start`` on the cached clean inputs."""
    flat = p.data.view(-1)
    old = flat[index].clone()
    flat[index] = value
    try:
        if clean is None:
            return count_correct(model, batches)
        n_ok = 0
        for xb, (_, yb) in zip(clean.batch_acts[start], batches):
            logits = xb
            for m in clean.layers[start:]:
                logits = m(logits)
            n_ok += int(correct(logits, yb).sum())
        return n_ok
    finally:
        flat[index] = old


def packable(clean: CleanRun, l: int, attr: str) -> bool:
    """The packed exact path needs a Linear/Conv2d owner followed by exact per-channel ops."""
    layers = clean.layers
    if attr not in ("weight", "bias") or not isinstance(layers[l], MIXING) or not supported(layers[l]):
        return False
    if clean.acts[l].dim() != (2 if isinstance(layers[l], nn.Linear) else 4):
        return False
    elem, _ = route(layers, l)
    return all(supported(layers[u]) for u in elem)


@torch.no_grad()
def exact_packed(
    clean: CleanRun, l: int, attr: str, idx: Tensor, new: Tensor, known: tuple[Tensor, Tensor] | None = None
) -> tuple[list[int], list[bool]]:
    """Correct samples of each flip, computed exactly as the naive forward computes them, and which
    flips ran the rest of the network per flip (the others were settled by :func:`~.recheck.recheck`).

    Flips that move different output units/channels share one call of the flipped layer (each
    output element of a Linear/Conv2d reads only its own weights, and the call has the naive
    shapes); ReLU / max-pooling / Flatten (exact, elementwise or per channel) then run on the
    changed channel only, which gives the next mixing layer's input exactly as the naive run has it.
    With ``known = (open_, counts)`` (what the screen and the row path left open, and the count they
    imply when every open sample keeps its clean outcome) that input is first checked by the
    recheck; flips it settles are done. The others run the rest of the network on the naive
    batches, as the naive forward does."""
    m = clean.layers[l]
    flat = getattr(m, attr).data.view(-1)
    fan = 1 if attr == "bias" else fan_in(m)
    ch = (idx // fan).tolist()
    elem, t = route(clean.layers, l)
    counts, exact = [0] * len(idx), [True] * len(idx)
    queues: dict[int, list[int]] = {}  # per channel, its flips in order
    for k, c in enumerate(ch):
        queues.setdefault(c, []).append(k)
    rounds = max(len(q) for q in queues.values()) if queues else 0
    pending: list[tuple[list[int], Tensor]] = []  # packs whose changed channels wait for the checks
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
            _settle(clean, t, pending, ch, known, counts, exact)
            pending, held = [], 0
    return counts, exact


def _settle(
    clean: CleanRun,
    t: int | None,
    pending: list[tuple[list[int], Tensor]],
    ch: list[int],
    known: tuple[Tensor, Tensor] | None,
    counts: list[int],
    exact: list[bool],
) -> None:
    """Fill ``counts``/``exact`` for the flips of the pending packs. Flips whose changed channel is
    bit for bit the same run the same naive suffix: only the first of them runs."""
    ks = [k for pack, _ in pending for k in pack]
    z = torch.cat([z for _, z in pending])
    first: dict[tuple[int, bytes], int] = {}
    raw = _bit_rows(z)
    same = [first.setdefault((ch[k], raw[j].numpy().tobytes()), j) for j, k in enumerate(ks)]
    twins = [(ks[j], ks[i]) for j, i in enumerate(same) if i != j]
    keep = sorted(set(same))
    ks, z = [ks[j] for j in keep], z[keep]
    if known is not None and t is not None:
        left = recheck(clean, t, z, [ch[k] for k in ks], known[0][ks], known[1][ks])
        still = [j for j, c in enumerate(left) if c is None]
        for k, c in zip(ks, left):
            counts[k], exact[k] = (0, True) if c is None else (c, False)
        ks, z = [ks[j] for j in still], z[still]
    if ks:
        for k, c in zip(ks, _finish(clean, t, z, [ch[k] for k in ks])):
            counts[k] = c
    for k, k0 in twins:
        counts[k], exact[k] = counts[k0], exact[k0]


def _bit_rows(z: Tensor) -> Tensor:
    """The bit patterns of each row ``z[j]`` (flips, ...) as bytes on the CPU, for any float dtype
    (numpy has no bfloat16) and any device: an explicit copy for the twin bookkeeping only."""
    return z.reshape(len(z), -1).contiguous().view(torch.uint8).cpu()


def _changed(clean: CleanRun, elem: list[int], outs: list[Tensor], chans: list[int]) -> Tensor:
    """The changed channels of a pack after the exact elementwise / per-channel modules up to the
    next mixing layer (ReLU, max-pooling, Identity, Dropout in eval give the same value for each
    element whatever the shape of the call): (flips, N, size), flip ``j`` holding channel
    ``chans[j]`` (or its run of features after Flatten) of the next mixing layer's input."""
    layers = clean.layers
    z = outs[0] if len(outs) == 1 else torch.cat(outs)
    pick = torch.tensor(chans, device=z.device)
    whole = 2 * len(chans) >= z.shape[1]  # most channels changed: no gather before the ops
    if not whole:
        z = z.index_select(1, pick)  # the pack's channels (N, flips, ...)
    for u in elem:
        if not isinstance(layers[u], nn.Flatten):  # the channel is written in flat layout anyway
            z = apply_elementwise(layers[u], z)
    if whole:
        z = z.index_select(1, pick)
    return z.transpose(0, 1).reshape(len(chans), z.shape[0], -1)


def _finish(clean: CleanRun, t: int | None, z: Tensor, chans: list[int]) -> list[int]:
    """Correct samples of each flip of a pack, from the changed channels ``z`` (see :func:`_changed`)
    at the input of mixing layer ``t`` (None: they are logits)."""
    N, nf = clean.y.shape[0], len(chans)
    if t is None:  # the changed units are logits: splice all flips at once
        size = z.shape[2]
        h = clean.acts[-1].reshape(N, -1)[None].repeat(nf, 1, 1)
        h.view(nf, N, -1, size)[torch.arange(nf, device=h.device), :, torch.tensor(chans, device=h.device)] = z
    else:
        h = _naive_suffix(clean, t, z, chans).reshape(nf, N, -1)  # (flips, N, classes)
    return correct(h.reshape(nf * N, -1), clean.y.repeat(nf)).reshape(nf, N).sum(1).tolist()


def _naive_suffix(clean: CleanRun, t: int, z: Tensor, chans: list[int]) -> Tensor:
    """The logits of each flip from mixing layer ``t`` on: every module runs per flip and per batch on
    a tensor of the naive run's shape and strides (one buffer per batch: the changed channel is
    written in, and the clean one back after the flip), as the naive forward calls it."""
    size = z.shape[2]
    bufs = [a.clone() for a in clean.batch_acts[t]]  # one input per batch (same strides), reused
    outs = []
    for j, o in enumerate(chans):
        for b, (lo, hi) in enumerate(clean.batch_bounds):
            x = bufs[b]
            part = _channel(x, o, size)
            part.copy_(z[j, lo:hi].reshape(part.shape))
            for mu in clean.layers[t:]:
                x = mu(x) if isinstance(mu, MIXING) else apply_elementwise(mu, x)
            outs.append(x)
            part.copy_(_channel(clean.batch_acts[t][b], o, size))
    return torch.cat(outs)


def _channel(x: Tensor, o: int, size: int) -> Tensor:
    """Channel ``o`` of a (N, C, H, W) batch, or its run of ``size`` features of a (N, F) one: a view."""
    return x[:, o] if x.dim() > 2 else x[:, o * size : (o + 1) * size]
