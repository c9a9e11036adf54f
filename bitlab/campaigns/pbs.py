"""The steps of progressive bit search (Rakin, He, Fan 2019, Sec. 3) that :func:`~.attack.bit_flip_attack`
repeats: the attack objective (:func:`attack_loss`, capped cross-entropy), the real loss of a tried flip,
the first-order ranking of a layer's bit flips, and the metric after a kept flip."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..codecs.base import Identity
from ..evaluate import Batches, Output, call, pick
from ..formats import Format
from ..metrics import Metric
from .census.graph import GraphRun, dirty_nodes
from .census.graph_flips import flat_view

__all__ = [
    "LOSS_CAP",
    "LossFn",
    "alternatives",
    "attack_loss",
    "finite_or_inf",
    "finite_rows",
    "flipped_values",
    "measure",
    "objective_value",
    "rank_flips",
    "trial_values",
]

#: per-sample cap (in nats) of the loss the attack maximizes, see :mod:`.attack`
LOSS_CAP = 1000.0

LossFn = Callable[[Tensor, Tensor], Tensor]


def attack_loss(logits: Tensor, y: Tensor, cap: float = LOSS_CAP) -> Tensor:
    """Mean cross-entropy with each sample's loss capped at ``cap``; a sample with non-finite logits
    or loss counts as ``cap`` (and passes no gradient). See the module notes."""
    if math.isfinite(float(logits.detach().sum())):  # every logit finite (an Inf or NaN makes the sum one)
        return F.cross_entropy(logits, y, reduction="none").clamp(max=cap).sum() / len(y)  # the sum below, no copies
    finite = torch.isfinite(logits).all(dim=1)
    ce = F.cross_entropy(logits[finite], y[finite], reduction="none").clamp(max=cap)
    return (ce.sum() + cap * (~finite).sum()) / len(y)


def objective_value(model: nn.Module, x: object, y: Tensor, output: Output, loss_fn: LossFn) -> float:
    """The attack objective on the attack batch; NaN (a loss without a cap on a broken output) is +inf."""
    with torch.no_grad():
        v = float(loss_fn(pick(call(model, x), output), y))
    return float("inf") if math.isnan(v) else v


def trial_values(
    run: GraphRun, p: Tensor, flips: list[tuple[int, float]], y: Tensor, output: Output, loss_fn: LossFn
) -> list[float]:
    """:func:`objective_value` with each flip ``p.view(-1)[i] = new`` of ``flips`` on its own, from the
    attack batch's clean values of this step (``run.cache[0]``, from a pass without autograd, as the full
    forward's trials run: a layer's fused fast path, e.g. nn.TransformerEncoderLayer's, runs only
    without it and differs in the last bits): only the nodes that read ``p`` and
    those after them are recomputed, with the same calls on the same inputs as the full forward
    (:mod:`.census.graph`), so each value is the full forward's. (Packing flips of different output
    units into one call, as the census does, costs more than it saves on the attack's few candidates.)
    Call under ``torch.no_grad``; ``p`` is as it was on return."""
    seeds, dirty = dirty_nodes(run, p)
    force, cached = set(seeds), run.cache[0]
    return flipped_values(p, flips, lambda: run.evaluate(dirty, force, cached, {}, False), y, output, loss_fn)


def flipped_values(
    p: Tensor, flips: list[tuple[int, float]], forward: Callable[[], object], y: Tensor, output: Output, loss_fn: LossFn
) -> list[float]:
    """The objective of ``forward()``'s output with each flip ``p.reshape(-1)[i] = new`` of ``flips`` on its
    own (any strides: :func:`~.census.graph_flips.flat_view`); ``p`` is restored after each."""
    flat, pos = flat_view(p)
    # on the CPU the element is written through a NumPy view of the same memory: the same float32/64 value as
    # a tensor write (one IEEE conversion of ``new``), without a tensor op per write (each tried flip takes two)
    on_cpu = flat.device.type == "cpu" and flat.dtype in _NUMPY_FLOATS
    arr: Any = flat.detach().numpy() if on_cpu else flat
    values = []
    for index, new in flips:
        i = index if pos is None else int(pos[index])
        old = arr[i].copy() if on_cpu else arr[i].clone()
        arr[i] = new
        try:
            values.append(finite_or_inf(loss_fn(pick(forward(), output), y)))
        finally:
            arr[i] = old
    return values


_NUMPY_FLOATS = (torch.float32, torch.float64)


def finite_or_inf(v: Tensor) -> float:
    """The objective's value; NaN (a loss without a cap on a broken output) is +inf."""
    f = float(v)
    return float("inf") if math.isnan(f) else f


def measure(model: nn.Module, batches: Batches, metric: Metric, output: Output) -> float:
    """:func:`bitlab.evaluate.score` inside the attack, where the model is already in eval mode and the
    batches on its device: the same per-sample scores and mean, without entering eval mode again."""
    with torch.no_grad():
        return metric.mean(torch.cat([metric.scores(pick(call(model, x), output), y).cpu() for x, y in batches]))


def finite_rows(out: Tensor) -> Tensor:
    return torch.isfinite(out).reshape(len(out), -1).all(dim=1)


def alternatives(words: Tensor, fmt: Format, state: dict) -> Tensor:
    """``(width, n)``: what each weight reads back as with bit ``b`` of its stored word flipped."""
    codec = Identity()
    return torch.stack([codec.decode(words ^ (1 << b), fmt, state).reshape(-1) for b in range(fmt.width)])


def rank_flips(
    alt: Tensor, current: Tensor, grad: Tensor, k: int, done: set[tuple[int, int]], finite: bool = False
) -> list[tuple[float, int, int, float]]:
    """The ``k`` (estimate, index, bit, new value) flips of one tensor with the largest positive
    first-order loss gain ``g * (alt[b] - w)`` (``alt`` from :func:`alternatives`); a non-finite new value
    ranks first. ``finite``: every value of ``alt`` and ``grad`` is known to be finite (skips the checks)."""
    n = current.numel()
    gain = grad.reshape(1, -1).double() * (alt.double() - current.reshape(1, -1).double())
    if not finite:
        gain = torch.where(torch.isfinite(alt), gain, torch.full_like(gain, float("inf")))
        gain = torch.nan_to_num(gain, nan=-float("inf"))
    if done:  # each stored bit flips at most once
        b_done, i_done = zip(*((b, i) for i, b in done))
        gain[list(b_done), list(i_done)] = -float("inf")
    flat = gain.reshape(-1)
    top = torch.topk(flat, min(k, flat.numel()))
    out = []
    for v, j in zip(top.values.tolist(), top.indices.tolist()):
        if v <= 0:  # first order predicts no gain: not a candidate
            break
        b, i = divmod(j, n)
        out.append((v, i, b, float(alt[b, i])))
    return out
