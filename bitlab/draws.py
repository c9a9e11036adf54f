"""Distinct random positions in a stored bit space: what a fault model draws once it knows how many
bits go wrong (see :mod:`bitlab.faults`). The cost grows with the number of positions drawn, never with
the size of the space; a small space gives exactly the positions ``torch.randperm`` gives."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["SHUFFLE_TOTAL", "SHUFFLE_STEP", "sample_distinct", "shuffle_prefix"]


#: a stored space this small is drawn from as ``torch.randperm`` draws (exact shuffle, see below)
SHUFFLE_TOTAL = 1 << 16
#: about how many positions ``torch.randperm`` shuffles in the time of one step of :func:`shuffle_prefix`
#: (one generator call from Python): below ``total / SHUFFLE_STEP`` draws the prefix is the cheaper way
SHUFFLE_STEP = 512


def shuffle_prefix(total: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """The first ``k`` entries of the Fisher-Yates shuffle of ``[0, total)`` that ``torch.randperm``
    runs on the CPU (step ``i`` swaps entry ``i`` with entry ``i + r_i mod (total - i)``, ``r_i`` the
    generator's next 32-bit draw), in O(k): step ``i`` never touches the entries before ``i``, so the
    first ``k`` steps fix the first ``k`` entries. The positions equal ``torch.randperm(total,
    generator=g)[:k]`` for ``total <= SHUFFLE_TOTAL`` (tested), but the generator advances by ``k`` draws,
    not by ``total - 1``. The swaps are kept in a dict, the untouched entries are their own index."""
    if not 0 <= k <= total <= SHUFFLE_TOTAL:
        raise ValueError(f"k, total: need 0 <= k <= total <= {SHUFFLE_TOTAL}, got k={k}, total={total}")
    draw = torch.empty(1, dtype=torch.int64)
    moved: dict[int, int] = {}
    out = []
    for i in range(k):
        j = i + int(draw.random_(0, total - i, generator=generator))  # the draw mod (total - i)
        here, there = moved.get(i, i), moved.get(j, j)
        moved[j] = here
        out.append(there)
    return torch.tensor(out, dtype=torch.int64)


def sample_distinct(total: int, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` distinct integers drawn uniformly from ``[0, total)``, in O(k) time and memory.

    A small space (``total <= SHUFFLE_TOTAL`` bits, e.g. a small CNN in FP32 or any int8 model) gives
    the positions ``torch.randperm(total)[:k]`` gives, through :func:`shuffle_prefix` when ``k`` is a
    small share (a trial's handful of flips: about 0.01 ms instead of the whole permutation's 0.25 ms
    for 60k bits), else through the permutation itself. A larger space rejects repeats, falling back to a
    permutation when ``k`` is a large share of ``total``. A generator's state after the draw depends on
    the path; the positions of a fresh generator's first draw do not."""
    if k < 0 or k > total:
        raise ValueError(f"k: cannot draw {k} distinct positions from {total}; allowed 0..{total}")
    if k == 0:
        return torch.empty(0, dtype=torch.int64)
    if total <= SHUFFLE_TOTAL and k * SHUFFLE_STEP <= total:
        return shuffle_prefix(total, k, generator)
    if 4 * k > total or total <= SHUFFLE_TOTAL:
        return torch.randperm(total, generator=generator)[:k]
    picked = torch.empty(0, dtype=torch.int64)
    while picked.numel() < k:
        need = k - picked.numel()
        draw = torch.randint(0, total, (need + need // 8 + 16,), generator=generator)
        picked = torch.unique(torch.cat([picked, draw]))
    # unique() sorts; a random subset of a uniform distinct set is still uniform
    return picked[torch.randperm(picked.numel(), generator=generator)[:k]]
