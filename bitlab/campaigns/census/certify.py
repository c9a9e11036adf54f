"""One chunk of a parameter's flips through the fast path: the screen, the row path for the samples it
leaves open, then the packed exact path (recheck, else the naive suffix) for flips still open."""

from __future__ import annotations

import torch
from torch import Tensor

from .budget import ELEMENTS_PER_CHUNK
from .clean import CleanRun
from .cost import ScreenChoice, row_limit
from .exact import exact_packed
from .follow import Untracked
from .rows import row_outcomes
from .screen import screen_bounds

__all__ = ["certify"]


def certify(
    clean: CleanRun, l: int, attr: str, idx: Tensor, new: Tensor, choice: ScreenChoice
) -> tuple[list[int], Tensor, int]:
    """Correct-sample counts of K flips of parameter ``attr`` of layer ``l``, which of them were
    recomputed exactly (K,) bool, and how many the recheck settled.

    The screen (:func:`~.screen.screen_bounds`) settles most (flip, sample) pairs (unless
    ``use_screen`` is False: the cost model found it does not pay); the row path
    (:func:`~.rows.row_outcomes`) decides most of the others from the exact change of the logits;
    flips with samples still open (too many to be worth the row path, near-ties, possible overflow,
    non-finite weights) go to :func:`~.exact.exact_packed`, which computes the next mixing layer's
    input exactly, settles what it can from there (the recheck) and recomputes the rest exactly."""
    K, N = len(idx), clean.y.shape[0]
    finite = torch.isfinite(new)
    new0 = torch.where(finite, new, torch.zeros_like(new))
    counts = torch.full((K,), int(clean.ok.sum()), dtype=torch.int64)
    open_ = None
    if choice.decide(clean, l, attr, idx, new0):
        open_ = _screen_and_rows(clean, l, attr, idx, new0, finite, counts)
    if open_ is None:
        open_ = torch.ones(K, N, dtype=torch.bool)
    open_[~finite] = True  # the screen ran with a zero in place of a non-finite value (the row path skipped it)
    redo = open_.any(1)  # a sample still open: recheck from the next layer's exact input, or recompute
    rechecked = 0
    if redo.any():
        sel = redo.nonzero().flatten()
        got, exact = exact_packed(clean, l, attr, idx[sel], new[sel], (open_[sel], counts[sel]))
        counts[sel] = torch.tensor(got, dtype=torch.int64)
        redo[sel] = torch.tensor(exact)
        rechecked = exact.count(False)
    return counts.tolist(), redo, rechecked


def _screen_and_rows(
    clean: CleanRun, l: int, attr: str, idx: Tensor, new0: Tensor, finite: Tensor, counts: Tensor
) -> Tensor | None:
    """The screen and the row path on finite flips (``new0``: zero for a non-finite value): the
    (K, N) mask of samples still open, with ``counts`` updated for the rows decided; None where the
    chain cannot be followed (``counts`` then back at the clean count)."""
    try:
        return _try_screen_and_rows(clean, l, attr, idx, new0, finite, counts)
    except Untracked:
        counts.fill_(int(clean.ok.sum()))
        return None


def _try_screen_and_rows(
    clean: CleanRun, l: int, attr: str, idx: Tensor, new0: Tensor, finite: Tensor, counts: Tensor
) -> Tensor:
    bd = screen_bounds(clean, l, attr, idx, new0)
    open_ = ~bd.settled
    rows_ok = finite & bd.safe & (open_.sum(1) <= row_limit(clean, l))
    flips_all, samples_all = (open_ & rows_ok[:, None]).nonzero(as_tuple=True)
    step = max(1, ELEMENTS_PER_CHUNK // (4 * clean.acts[-1].shape[1]))
    for s in range(0, len(flips_all), step):  # bounded memory however many rows are open
        flips, samples = flips_all[s : s + step], samples_all[s : s + step]
        right, wrong = row_outcomes(clean, l, attr, bd, flips, idx, new0, samples)
        done = right | wrong
        counts.index_add_(0, flips[done], right[done].long() - clean.ok[samples[done]].long())
        open_[flips[done], samples[done]] = False
    return open_
