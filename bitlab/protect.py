"""Protection codecs: how a tensor is turned into stored words (on top of a number format),
and how faulty words are read back.

A codec works on flat tensors. ``fit`` computes per-tensor state from the clean weights (a range,
a scale factor); ``encode`` turns (a subset of) the weights into stored words; ``decode`` reads
words back, undoing the protection. Per-element state (tensors with one entry per weight) is
indexed along with the weights, so the injector can encode only the words it corrupts.

Codecs here (Qin, Sun, Vucinic 2017, "Robustness of Neural Networks against Storage Media Errors"):

* :class:`Identity` -- no protection ("no ECC").
* :class:`RangeNulling` -- weight nulling by range: a read value outside the trained range is set to 0.
* :class:`ParityNulling` -- weight nulling by parity: one parity bit per word, in a spare bit of the
  format or as one extra stored bit; a word whose parity fails is read as 0.
* :class:`Unary` -- our reading of the "alternative binary representation whose error vanishes as
  the number of bits grows": every bit carries the same weight (thermometer code).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from .formats import Format

__all__ = ["Codec", "Identity", "RangeNulling", "ParityNulling", "Unary", "popcount", "subset_state",
           "GroupChecksum"]

State = dict[str, Any]


def popcount(words: Tensor) -> Tensor:
    """Number of set bits of each non-negative int64 word (< 2**63), SWAR style."""
    x = words.to(torch.int64)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return (x * 0x0101010101010101) >> 56


def subset_state(state: Mapping[str, Any], idx: Tensor, n: int) -> State:
    """The state restricted to elements ``idx`` (per-element tensors have ``n`` entries)."""
    out: State = {}
    for k, v in state.items():
        out[k] = v.reshape(-1)[idx] if isinstance(v, Tensor) and v.numel() == n and n > 1 else v
    return out


def _flat_scale(fmt: Format, w: Tensor) -> Tensor | None:
    """The format's scale for ``w`` broadcast to one entry per element (or a scalar)."""
    s = fmt.calibrate(w)
    if s is None or s.numel() == 1:
        return s if s is None else s.reshape(())
    return torch.broadcast_to(s, w.shape).reshape(-1).clone()


class Codec:
    """No protection: the stored words are the format's words. Subclasses override the hooks."""

    name = "none"
    #: each word decodes on its own; ``False`` for codecs whose check spans several words (group
    #: checksums): the injector then decodes the whole tensor with the faulty words in place.
    elementwise: bool = True

    def width(self, fmt: Format) -> int:
        """Stored bits per weight."""
        return fmt.width

    def fields(self, fmt: Format) -> Mapping[str, tuple[int, ...]]:
        """Named bit fields of the stored word (for ``bits=`` selections)."""
        return fmt.fields

    def overhead_bits(self, fmt: Format) -> int:
        """Extra stored bits per weight compared with the bare format."""
        return self.width(fmt) - fmt.width

    def fit(self, w: Tensor, fmt: Format) -> State:
        """Per-tensor state from the clean tensor ``w`` (any shape)."""
        return {"scale": _flat_scale(fmt, w)}

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        return fmt.encode(w, state.get("scale"))

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        return fmt.decode(words, state.get("scale"))

    def is_exact(self, fmt: Format) -> bool:
        """True if a fault-free store reads every float32 back bit for bit."""
        return False

    def __repr__(self) -> str:
        return self.name


class Identity(Codec):
    """No protection: what Qin et al. 2017 call running without ECC."""

    name = "none"

    def is_exact(self, fmt: Format) -> bool:
        return fmt.lossless


class RangeNulling(Codec):
    """Weight nulling by range (Qin et al. 2017): any read value outside the tensor's trained
    range ``[min, max]`` (widened by ``margin`` times its width), or not finite, is set to 0.
    Costs no storage beyond two numbers per tensor."""

    name = "range-null"

    def __init__(self, margin: float = 0.0) -> None:
        if not isinstance(margin, (int, float)) or margin < 0:
            raise ValueError(f"margin: {margin!r}; allowed values are numbers >= 0")
        self.margin = float(margin)

    def fit(self, w: Tensor, fmt: Format) -> State:
        state = super().fit(w, fmt)
        clean = super().decode(super().encode(w.reshape(-1), fmt, state), fmt, state)
        lo, hi = clean.min().item(), clean.max().item()
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
            raise ValueError(f"where='spare': format {fmt.name} has no spare bit (no exponent); "
                             "allowed formats are FP32, FP16, BF16, or use where='extra'")
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
                raise ValueError(f"where='spare': bit {b} of {fmt.name} is used by weights with |w| >= 2 "
                                 f"(max |w| = {w.abs().max().item():.3g}); use where='extra'")
        return state

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        words = super().encode(w, fmt, state)
        return words | ((popcount(words) & 1) << self._parity_bit(fmt))

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        b = self._parity_bit(fmt)
        ok = (popcount(words) & 1) == 0
        v = super().decode(words & ~(1 << b), fmt, state)
        return torch.where(ok, v, torch.zeros_like(v))


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


from .checksum import GroupChecksum  # noqa: E402  (RADAR-like group checksums live in their own module)
