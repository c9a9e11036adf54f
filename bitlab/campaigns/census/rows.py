"""The row path: for the (flip, sample) rows the screen leaves open, the exact change of the logits
in float64 with a rounding radius around it, which decides most rows certainly right or certainly wrong."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .budget import CACHE_ELEMENTS
from .clean import CleanRun
from .follow import follow_change
from .rounding import fan_in
from .screen import ScreenBounds, bound_width

__all__ = ["change_rows", "decide", "row_outcomes"]


def change_rows(clean: CleanRun, l: int, attr: str, idx: Tensor, new: Tensor, samples: Tensor) -> Tensor:
    """The change of the logits, in exact arithmetic on the clean naive activations (float64), of R
    (flip, sample) rows: row j is sample ``samples[j]`` with weight ``idx[j]`` of layer ``l`` reading
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
        ch, q = idx // fan_in(m), idx % fan_in(m)
        e = delta[:, None] * clean.input_planes(l)[samples, q, :]  # (R, P)
    return follow_change(clean, l, ch, e[:, None, :].contiguous(), samples)[:, 0]


def decide(y: Tensor, c: Tensor, r: Tensor, ymask: Tensor | None = None) -> tuple[Tensor, Tensor]:
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


def row_outcomes(
    clean: CleanRun, l: int, attr: str, bd: ScreenBounds, flips: Tensor, idx: Tensor, new: Tensor, samples: Tensor
) -> tuple[Tensor, Tensor]:
    """(certainly right, certainly wrong) of the rows (flip ``flips[j]``, sample ``samples[j]``).

    The flipped naive logits are within ``D = B + G |delta| A`` of ``c = z + change`` (``z`` the
    clean naive logits, ``change`` from :func:`change_rows`): the naive flipped and clean runs
    differ from the exact change by their rounding only, and the flipped run's sums are at most
    ``S + |W| e`` (``e`` the screen's bound), which is what ``B`` and ``G |delta| A`` add up layer
    by layer. Flips that may overflow must not come here."""
    step = max(1, CACHE_ELEMENTS // bound_width(clean, l))
    change = torch.cat(
        [
            change_rows(clean, l, attr, idx[flips[s : s + step]], new[flips[s : s + step]], samples[s : s + step])
            for s in range(0, len(flips), step)
        ]
    )
    w = bd.weight_of_flip[flips]
    c = clean.acts64(len(clean.layers))[samples] + change
    grow = (bd.gamma_sum + 1e-9) * bd.abs_delta[flips, None]
    radius = bd.rounding[bd.channel_of_weight[w], samples] * (1 + 1e-9) + grow * bd.per_delta[w, samples]
    return decide(clean.y[samples][:, None], c, radius + 1e-12 * c.abs())
