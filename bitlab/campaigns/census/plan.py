"""What a census visits: the weights of each chosen parameter (all, or a seeded sample) and what each
reads back as with each selected bit flipped through the format and codec.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...codecs.base import Codec, subset_state
from ...formats import Format
from ...validate import check_int

__all__ = ["flipped_values", "weight_plan"]


def weight_plan(chosen: list[tuple[str, nn.Parameter]], n_weights: int | None, seed: int) -> list[tuple[str, Tensor]]:
    """The weights a census visits per parameter: all of them, or ``n_weights`` drawn without
    replacement (seeded) and sorted. Shared by the naive and the fast census."""
    if n_weights is not None:
        check_int("n_weights", n_weights, 1)
    g = torch.Generator().manual_seed(seed)
    plan = []
    for name, p in chosen:
        idx = torch.arange(p.numel())
        if n_weights is not None and n_weights < p.numel():
            idx = torch.randperm(p.numel(), generator=g)[:n_weights].sort().values
        plan.append((name, idx))
    return plan


def flipped_values(orig: Tensor, idx: Tensor, positions: tuple[int, ...], fmt: Format, codec: Codec) -> Tensor:
    """What each selected weight reads back as with each bit flipped: shape (len(idx), n_bits)."""
    flat = orig.detach().reshape(-1)
    state = codec.fit(orig.detach(), fmt)
    sub = subset_state(state, idx, flat.numel())
    words = codec.encode(flat[idx], fmt, sub)
    masks = torch.ones(len(positions), dtype=torch.int64).bitwise_left_shift(torch.tensor(positions, dtype=torch.int64))
    faulty = words[:, None] ^ masks[None, :]
    sub_rep = subset_state(state, idx.repeat_interleave(len(positions)), flat.numel())
    out = codec.decode(faulty.reshape(-1), fmt, sub_rep).to(orig.dtype)
    return out.reshape(len(idx), len(positions))


# ------------------------------------------------------------------------------- chain analysis
