"""The codec contract: how a tensor becomes stored words on top of a number format, and how
faulty words are read back; :class:`Identity` is the unprotected store ("no ECC", Qin et al. 2017).

A codec works on flat tensors. ``fit`` computes per-tensor state from the clean weights (a range,
a scale factor); ``encode`` turns (a subset of) the weights into stored words; ``decode`` reads
words back, undoing the protection. Per-element state (tensors with one entry per weight) is
indexed along with the weights, so the injector can encode only the words it corrupts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..formats import Format

__all__ = ["Codec", "Identity", "State", "popcount", "subset_state", "flat_scale"]

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


def flat_scale(fmt: Format, w: Tensor) -> Tensor | None:
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

    def overhead_bits(self, fmt: Format) -> float:
        """Extra stored bits per weight compared with the bare format (fractional where a codec stores
        a few bits per group of weights, e.g. group checksums)."""
        return self.width(fmt) - fmt.width

    def fit(self, w: Tensor, fmt: Format) -> State:
        """Per-tensor state from the clean tensor ``w`` (any shape)."""
        return {"scale": flat_scale(fmt, w)}

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        return fmt.encode(w, state.get("scale"))

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        return fmt.decode(words, state.get("scale"))

    def is_exact(self, fmt: Format) -> bool:
        """True if a fault-free store reads every float32 back bit for bit."""
        return False

    def read_changed(
        self, stored: Tensor, fmt: Format, state: State, index: Tensor, words: Tensor
    ) -> tuple[Tensor, Tensor]:
        """What changes in the read-back tensor when the stored words at the distinct flat positions
        ``index`` of ``stored`` (every word of the tensor, clean) become ``words``: the flat indices of the
        elements whose read may change and the values they read back as; every other element reads as in
        the clean store. Elementwise codecs decode the changed words alone; a codec whose check spans
        words decodes the whole tensor here, unless it overrides this with something narrower (group
        checksums re-check only the groups hit)."""
        if self.elementwise:
            return index, self.decode(words, fmt, subset_state(state, index, stored.numel()))
        faulty = stored.clone()
        faulty[index] = words
        return torch.arange(stored.numel(), device=stored.device), self.decode(faulty, fmt, state).reshape(-1)

    def __repr__(self) -> str:
        return self.name


class Identity(Codec):
    """No protection: what Qin et al. 2017 call running without ECC."""

    name = "none"

    def is_exact(self, fmt: Format) -> bool:
        return fmt.lossless
