"""SECDED: the classical error-correcting code for memories, as a protection codec.

An extended Hamming code stores ``k`` data bits with ``r`` check bits (the smallest ``r`` with
``2**r >= k + r + 1``) plus one overall parity bit: 39 bits per 32-bit word, 22 per 16-bit word,
13 per 8-bit word. It corrects any single flipped bit of a stored word and detects (without
correcting) any two (Hamming 1950; the baseline Fuengfusin 2024 compares weight scaling against).

Layout of a stored word (bit 0 = LSB): bit 0 holds the overall parity; bits ``1..k+r`` are the
Hamming positions, with check bits at the powers of two (1, 2, 4, ...) and the data bits, in order
from the data word's LSB, at the other positions. The check bit at ``2**j`` makes the parity of all
positions whose index has bit ``j`` set even, so the *syndrome* of a word (one parity per check)
spells the position of a single flipped bit.

Reading a word:

* syndrome 0, overall parity even: no error;
* overall parity odd: one error at the syndrome's position (0 = the overall parity bit) -- corrected;
* syndrome non-zero, overall parity even: two errors -- detected, not correctable;
* overall parity odd but the syndrome points past the last position: three or more errors -- detected.

A detected-uncorrectable word is read as 0 by default (like Qin et al.'s weight nulling);
``on_detect="raw"`` reads its data bits as they are. Three or more errors in one word may also be
miscorrected silently: SECDED promises nothing there.

Encoder and decoder are vectorized over int64 words: the syndrome is a popcount of the word masked
by one constant per check bit; the only Python loops run over bit positions, never over words.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

import torch
from torch import Tensor

from ..formats import Format
from .base import Codec, State, popcount

__all__ = [
    "SECDED",
    "Layout",
    "layout",
    "secded_encode",
    "secded_decode",
    "OK",
    "CORRECTED",
    "DETECTED",
    "MAX_STORED_BITS",
]

#: status codes returned by :func:`secded_decode`
OK, CORRECTED, DETECTED = 0, 1, 2
#: stored words must fit the injector's int64 words (and ``popcount``): at most 62 bits
MAX_STORED_BITS = 62


@dataclass(frozen=True)
class Layout:
    """Where the bits of a ``k``-bit data word go in its ``width``-bit SECDED word."""

    k: int  # data bits
    r: int  # Hamming check bits (the overall parity bit comes on top)
    width: int  # stored bits: k + r + 1
    data_pos: tuple[int, ...]  # stored position of data bit i
    check_pos: tuple[int, ...]  # stored positions of the Hamming check bits (powers of two)
    masks: tuple[int, ...]  # masks[j]: the positions whose index has bit j set


@cache
def layout(k: int) -> Layout:
    """The extended Hamming layout for ``k`` data bits (``k + r + 1 <= 62``)."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k: {k!r} data bits; allowed ints >= 1")
    r = 1
    while (1 << r) < k + r + 1:
        r += 1
    n = k + r
    if n + 1 > MAX_STORED_BITS:
        raise ValueError(
            f"k: {k} data bits need {n + 1} stored bits with SECDED (r={r} check bits + "
            f"1 parity); allowed at most {MAX_STORED_BITS} stored bits, i.e. k <= 55"
        )
    data_pos = tuple(p for p in range(1, n + 1) if p & (p - 1))
    masks = tuple(sum(1 << p for p in range(1, n + 1) if (p >> j) & 1) for j in range(r))
    return Layout(k, r, n + 1, data_pos, tuple(1 << j for j in range(r)), masks)


def _parity(words: Tensor) -> Tensor:
    return popcount(words) & 1


def secded_encode(data: Tensor, k: int) -> Tensor:
    """SECDED words (int64) for ``k``-bit data words given as int64 in ``[0, 2**k)``."""
    lay = layout(k)
    d = data.to(torch.int64)
    if d.numel() and (int(d.min()) < 0 or int(d.max()) >= 1 << k):
        raise ValueError(f"data: words must lie in [0, 2**{k}); got values in [{int(d.min())}, {int(d.max())}]")
    cw = torch.zeros_like(d)
    for i, p in enumerate(lay.data_pos):
        cw |= ((d >> i) & 1) << p
    for j, m in enumerate(lay.masks):
        cw |= _parity(cw & m) << (1 << j)
    return cw | _parity(cw)


def syndrome(words: Tensor, k: int) -> Tensor:
    """The Hamming syndrome of each stored word: 0 if every check holds, else the position of a
    single flipped bit (among positions 1..k+r)."""
    lay = layout(k)
    w = words.to(torch.int64)
    s = torch.zeros_like(w)
    for j, m in enumerate(lay.masks):
        s |= _parity(w & m) << j
    return s


def secded_decode(words: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Correct and read stored words: returns ``(data, status)``, with ``status`` per word
    :data:`OK`, :data:`CORRECTED` (one flip fixed) or :data:`DETECTED` (two flips, or a syndrome
    pointing outside the word; ``data`` then holds the uncorrected data bits)."""
    lay = layout(k)
    w = words.to(torch.int64)
    s = syndrome(w, k)
    odd = _parity(w) == 1
    fixable = odd & (s < lay.width)
    fixed = w ^ torch.where(fixable, torch.ones_like(s) << torch.where(fixable, s, 0), torch.zeros_like(s))
    status = torch.full_like(w, OK)
    status[fixable] = CORRECTED
    status[(~odd & (s != 0)) | (odd & ~fixable)] = DETECTED
    data = torch.zeros_like(w)
    for i, p in enumerate(lay.data_pos):
        data |= ((fixed >> p) & 1) << i
    return data, status


class SECDED(Codec):
    """Single-error-correcting, double-error-detecting extended Hamming code on each stored word
    (the classical ECC baseline). Overhead: ``r + 1`` bits per weight (7 for FP32, 6 for FP16/BF16,
    5 for 8-bit formats). A word with a detected but uncorrectable error reads as 0
    (``on_detect="zero"``, weight nulling) or as its raw data bits (``on_detect="raw"``)."""

    def __init__(self, on_detect: str = "zero") -> None:
        if on_detect not in ("zero", "raw"):
            raise ValueError(f"on_detect: {on_detect!r}; allowed 'zero' or 'raw'")
        self.on_detect = on_detect
        self.name = "SECDED" if on_detect == "zero" else "SECDED(raw)"

    def layout(self, fmt: Format) -> Layout:
        """The code layout for ``fmt``'s words; a clear error if they do not fit 62 stored bits."""
        try:
            return layout(fmt.width)
        except ValueError as e:
            raise ValueError(
                f"fmt: {fmt.name} words of {fmt.width} bits do not fit SECDED's stored word: {e}"
            ) from None

    def width(self, fmt: Format) -> int:
        return self.layout(fmt).width

    def fields(self, fmt: Format) -> Mapping[str, tuple[int, ...]]:
        """The format's fields at their stored positions, plus ``data``, ``check`` (Hamming check
        bits) and ``parity`` (the overall parity bit, position 0)."""
        lay = self.layout(fmt)
        out = {name: tuple(sorted(lay.data_pos[b] for b in bits)) for name, bits in fmt.fields.items()}
        out.update(data=tuple(sorted(lay.data_pos)), check=lay.check_pos, parity=(0,))
        return out

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        return secded_encode(super().encode(w, fmt, state), fmt.width)

    def check(self, words: Tensor, fmt: Format) -> tuple[Tensor, Tensor]:
        """Corrected data words and the status of each stored word (see :func:`secded_decode`)."""
        return secded_decode(words, self.layout(fmt).k)

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        data, status = self.check(words, fmt)
        v = super().decode(data, fmt, state)
        if self.on_detect == "zero":
            v = torch.where(status == DETECTED, torch.zeros_like(v), v)
        return v

    def is_exact(self, fmt: Format) -> bool:
        return fmt.lossless
