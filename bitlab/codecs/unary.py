"""Qin et al. 2017's alternative binary representation, in our reading: a thermometer (unary) code
whose error per flipped bit vanishes as the number of bits grows.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..formats import Format
from .base import Codec, State, popcount

__all__ = ["Unary"]


class Unary(Codec):
    """Our reading of Qin et al.'s alternative binary representation: a thermometer code of
    ``n`` bits in which every bit carries the same weight.

    A weight ``w`` in ``[-s, s]`` (``s = max|w|`` of the tensor) is stored as ``k`` ones out of
    ``n`` with ``k = round((w / s + 1) * n / 2)``; it reads back as ``s * (2 * popcount / n - 1)``.
    One flipped bit moves the value by exactly ``2 s / n``, whichever bit it is, so the error per
    flip vanishes as ``n`` grows (with a standard binary code the MSB alone costs ``s``).
    The price is storage: ``n`` bits for ``log2(n + 1)`` bits of precision. It replaces the number
    format (``fmt`` only sets the reported overhead).
    """

    def __init__(self, n: int = 16) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 62:
            raise ValueError(f"n: {n!r}; allowed ints 1..62 (bits per weight)")
        self.n = n
        self.name = f"unary{n}"

    def width(self, fmt: Format) -> int:
        return self.n

    def fields(self, fmt: Format) -> Mapping[str, tuple[int, ...]]:
        return {"msb": (self.n - 1,)}

    def fit(self, w: Tensor, fmt: Format) -> State:
        s = w.detach().abs().max().item() if w.numel() else 0.0
        return {"scale": s if s > 0 else 1.0}

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        k = torch.round((w.detach().to(torch.float64) / state["scale"] + 1.0) * self.n / 2)
        k = torch.nan_to_num(k, nan=self.n / 2).clamp(0, self.n).to(torch.int64)
        return torch.ones_like(k).bitwise_left_shift(k) - 1

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        ones = popcount(words).to(torch.float64)
        return (state["scale"] * (2.0 * ones / self.n - 1.0)).to(torch.float32)
