"""The cost model: which path is worth taking for a parameter's flips (rough estimates in
float64-element units; they decide speed only, never a result)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .clean import CleanRun
from .follow import Untracked
from .layers import MIXING, route
from .rounding import fan_in
from .screen import screen_bounds

__all__ = ["ScreenChoice", "row_limit", "screen_pays"]


def row_limit(clean: CleanRun, l: int) -> int:
    """How many open samples a flip of layer ``l`` may send to the row path before recomputing it
    exactly is cheaper."""
    N = clean.y.shape[0]
    layers = clean.layers
    _, t = route(layers, l)
    plane = clean.acts[l + 1][0].numel() // clean.acts[l + 1].shape[1]
    row = 1000 + 3 * plane + 10 * clean.acts[-1].shape[1]
    exact = 100_000
    for u in range(l + 1, len(layers)):
        size = clean.acts[u + 1][0].numel()
        if isinstance(layers[u], MIXING):
            macs = size * fan_in(layers[u])
            exact += N * macs // 8
            row += macs if u != t else (macs // clean.acts[u].shape[1])  # rank-1 at the next mixing layer
        else:
            exact += N * size
            row += 4 * size if t is not None and u > t else 0
    return max(8, exact // row)


def screen_pays(clean: CleanRun, l: int, attr: str, idx: Tensor, new: Tensor) -> bool:
    """Whether the screen is worth running on the flips ``idx``/``new`` of parameter ``attr`` of
    layer ``l``. It is not where it leaves most samples open (first layers of a deep chain: |W|
    bounds compound layer by layer), because then every flip goes to the recheck anyway. Decided
    from all the flips of four weights spread over them: the screen pays when it leaves them, on
    average, few enough open samples for the row path. Raises :class:`~.follow.Untracked` where the
    chain cannot be followed; decide once per parameter (:class:`ScreenChoice`)."""
    uw = idx.unique()
    pick = uw[torch.linspace(0, len(uw) - 1, min(len(uw), 4)).round().long()]
    probe = torch.isin(idx, pick)
    if len(idx) < 64 or not bool(probe.any()):
        return True
    bd = screen_bounds(clean, l, attr, idx[probe], new[probe])
    return float((~bd.settled).sum(1).double().mean()) <= row_limit(clean, l)


@dataclass
class ScreenChoice:
    """Whether the screen pays for one parameter: decided by :func:`screen_pays` on the first chunk
    of its flips that runs, then kept (False where the chain cannot be followed)."""

    pays: bool | None = None

    def decide(self, clean: CleanRun, l: int, attr: str, idx: Tensor, new: Tensor) -> bool:
        if self.pays is None:
            try:
                self.pays = screen_pays(clean, l, attr, idx, new)
            except Untracked:
                self.pays = False
        return self.pays
