"""Weight nulling (Qin, Sun, Vucinic 2017, "Robustness of Neural Networks against Storage Media
Errors"): detect a corrupted weight, by its range or by a parity bit, and read it as 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import Tensor

from ..formats import Format
from ..validate import check_number
from .base import Codec, State, popcount

__all__ = ["RangeNulling", "ParityNulling"]


class RangeNulling(Codec):
    """Weight nulling by range (Qin et al. 2017): any read value outside the tensor's trained
    range ``[min, max]`` (widened by ``margin`` times its width), or not finite, is set to 0.
    Costs no storage beyond two numbers per tensor."""

    name = "range-null"

    def __init__(self, margin: float = 0.0) -> None:
        self.margin = check_number("margin", margin, 0.0, math.inf, open_hi=True)

    def fit(self, w: Tensor, fmt: Format) -> State:
        state = super().fit(w, fmt)
        clean = super().decode(super().encode(w.reshape(-1), fmt, state), fmt, state)
        finite = clean[torch.isfinite(clean)]  # a non-finite weight must not switch the range check off
        lo, hi = (finite.min().item(), finite.max().item()) if finite.numel() else (0.0, 0.0)
        pad = self.margin * (hi - lo)
        state.update(lo=lo - pad, hi=hi + pad)
        return state

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        v = super().decode(words, fmt, state)
        bad = ~torch.isfinite(v) | (v < state["lo"]) | (v > state["hi"])
        return torch.where(bad, torch.zeros_like(v), v)


class ParityNulling(Codec):
    """Weight nulling by parity (Qin et al. 2017): an even-parity bit per word; a word that fails
    the check is read as 0.

    ``where="extra"`` stores the parity as one extra bit above the format's word (overhead 1 bit
    per weight). ``where="spare"`` stores it in the format's exponent MSB, which is 0 for every
    float weight with ``|w| < 2`` (no overhead); :meth:`fit` raises if the tensor uses that bit.
    """

    def __init__(self, where: str = "extra") -> None:
        if where not in ("extra", "spare"):
            raise ValueError(f"where: {where!r}; allowed 'extra' or 'spare'")
        self.where = where
        self.name = f"parity-null({where})"

    def _parity_bit(self, fmt: Format) -> int:
        if self.where == "extra":
            return fmt.width
        if "exponent_msb" not in fmt.fields:
            raise ValueError(
                f"where='spare': format {fmt.name} has no spare bit (no exponent); "
                "allowed formats are FP32, FP16, BF16, or use where='extra'"
            )
        return fmt.fields["exponent_msb"][0]

    def width(self, fmt: Format) -> int:
        return fmt.width + (1 if self.where == "extra" else 0)

    def fields(self, fmt: Format) -> Mapping[str, tuple[int, ...]]:
        f = dict(fmt.fields)
        f["parity"] = (self._parity_bit(fmt),)
        return f

    def fit(self, w: Tensor, fmt: Format) -> State:
        state = super().fit(w, fmt)
        if self.where == "spare":
            b = self._parity_bit(fmt)
            words = super().encode(w.reshape(-1), fmt, state)
            if bool(((words >> b) & 1).any()):
                raise ValueError(
                    f"where='spare': bit {b} of {fmt.name} is used by weights with |w| >= 2 "
                    f"(max |w| = {w.abs().max().item():.3g}); use where='extra'"
                )
        return state

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        words = super().encode(w, fmt, state)
        return words | ((popcount(words) & 1) << self._parity_bit(fmt))

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        b = self._parity_bit(fmt)
        ok = (popcount(words) & 1) == 0
        v = super().decode(words & ~(1 << b), fmt, state)
        return torch.where(ok, v, torch.zeros_like(v))
