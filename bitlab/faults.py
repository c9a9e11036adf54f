"""Fault models: which stored bits go wrong, and how.

A fault model samples *sites* (tensor, word, bit) in the stored bit space of the selected
tensors and applies them to integer words. Sampling never builds a dense per-bit mask: for a
bit error rate the number of flips is drawn from a binomial and then that many distinct
positions are drawn, so the cost grows with the number of flips, not with the number of bits
(Qin et al. 2017 model storage errors as i.i.d. bit flips at a given BER).

The stored bit positions a fault may hit are one tuple for every tensor, or one tuple per tensor when
the tensors are stored in formats of different widths (a float16 and a float32 weight side by side):
the bit space is then the union of each tensor's own words times its own bits.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .draws import sample_distinct
from .formats import BitSelection
from .validate import check_int

__all__ = [
    "StoredBits",
    "per_tensor_bits",
    "Sites",
    "Fault",
    "BitErrorRate",
    "BitFlips",
    "SingleBitFlip",
    "StuckAt",
    "sample_distinct",
    "fault_words",
    "read_at",
    "write_at",
    "FlipList",
]


#: stored bit positions: one tuple for every tensor, or a sequence of tuples, one per tensor
StoredBits = tuple[int, ...] | Sequence[tuple[int, ...]]


@functools.lru_cache(maxsize=64)
def _bit_tuples(items: tuple[tuple[int, ...], ...]) -> tuple[tuple[int, ...], ...]:
    """Each tensor's bits as a tuple of Python ints (once per store layout: a campaign asks every trial)."""
    return tuple(tuple(int(b) for b in t) for t in items)


def per_tensor_bits(bits: StoredBits, n: int) -> list[tuple[int, ...]]:
    """The stored bit positions of each of ``n`` tensors (a flat tuple applies to all of them)."""
    items: list = list(bits)
    if all(isinstance(b, int) for b in items):
        return [tuple(int(b) for b in items)] * n
    per = list(_bit_tuples(tuple(tuple(t) for t in items)))
    if len(per) != n:
        raise ValueError(f"bits: {len(per)} bit tuples for {n} tensors; allowed one tuple, or one per tensor")
    return per


@dataclass(frozen=True)
class Sites:
    """Sampled fault sites: for each, the tensor it hits, the word (flat element index) and the bit."""

    tensor: Tensor  # int64, index into the list of tensors
    word: Tensor  # int64, flat element index inside that tensor
    bit: Tensor  # int64, bit position inside the stored word

    def __len__(self) -> int:
        return int(self.word.numel())

    def of(self, i: int) -> tuple[Tensor, Tensor]:
        """The (word, bit) pairs that hit tensor ``i``."""
        m = self.tensor == i
        return self.word[m], self.bit[m]

    def hit(self) -> set[int]:
        """The tensors some site hits."""
        return set(self.tensor.unique().tolist()) if len(self) else set()

    def by_tensor(self) -> dict[int, tuple[Tensor, Tensor]]:
        """``{i: self.of(i)}`` for every tensor ``i`` some site hits, from one stable sort (each tensor's
        sites in their order here)."""
        if not len(self):
            return {}
        t = self.tensor.cpu().numpy()
        order = np.argsort(t, kind="stable")
        ts, word, bit = t[order], self.word.cpu().numpy()[order], self.bit.cpu().numpy()[order]
        cuts = [0, *(np.flatnonzero(ts[1:] != ts[:-1]) + 1).tolist(), len(ts)]
        return {
            int(ts[a]): (torch.from_numpy(word[a:b]), torch.from_numpy(bit[a:b])) for a, b in itertools.pairwise(cuts)
        }


def _empty_sites() -> Sites:
    e = torch.empty(0, dtype=torch.int64)
    return Sites(e, e, e)


def _n_bits(sizes: Sequence[int], per: Sequence[tuple[int, ...]]) -> int:
    """Number of selectable stored bits: each tensor's words times its own selected bits."""
    return int(sum(n * len(b) for n, b in zip(sizes, per)))


@functools.lru_cache(maxsize=64)
def _tables(sizes: tuple[int, ...], per: tuple[tuple[int, ...], ...]) -> tuple[np.ndarray, ...]:
    """The lookup tables of :func:`_locate` for one store layout, built once (a campaign reuses them for
    every trial): bits per tensor, position bounds, bit offsets and the flat bit table."""
    nb = np.array([len(b) for b in per], dtype=np.int64)
    bounds = np.concatenate([[0], (np.array(sizes, dtype=np.int64) * nb).cumsum()]).astype(np.int64)
    offsets = np.concatenate([[0], nb.cumsum()]).astype(np.int64)
    bit_table = np.array([b for bits in per for b in bits], dtype=np.int64)
    for table in (nb, bounds, offsets, bit_table):
        table.flags.writeable = False  # shared by every trial of the layout (cached)
    return nb, bounds, offsets, bit_table


def _locate(flat: Tensor, sizes: Sequence[int], per: Sequence[tuple[int, ...]]) -> Sites:
    """Map positions in the concatenated (tensor, word, selected bit) space to sites; tensor ``i``
    spans ``sizes[i] * len(per[i])`` positions, word-major (in NumPy: a trial's few sites in a few calls)."""
    if flat.numel() == 0:
        return _empty_sites()
    nb, bounds, offsets, bit_table = _tables(tuple(sizes), tuple(per))
    pos = flat.numpy()
    t = np.searchsorted(bounds, pos, side="right") - 1
    local = pos - bounds[t]
    per_word = nb[t]
    word, k = np.divmod(local, per_word)
    return Sites(torch.from_numpy(t), torch.from_numpy(word), torch.from_numpy(bit_table[offsets[t] + k]))


def _sizes(shapes: Sequence[Sequence[int]]) -> list[int]:
    out = []
    for s in shapes:
        n = 1
        for d in s:
            n *= int(d)
        out.append(n)
    return out


def _strides(shape: Sequence[int]) -> list[int]:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= int(d)
    return strides[::-1]


def _index(index: object) -> int | tuple[int, ...]:
    """A flat element index or a multi-index tuple, of integers (numpy integers accepted)."""
    if isinstance(index, tuple):
        return tuple(check_int("index", j, 0) for j in index)
    return check_int("index", index, 0)


def _check_rate(p: float, name: str = "p") -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)):
        raise TypeError(f"{name}: expected a number in [0, 1], got {type(p).__name__}")
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name}: {p} is not a probability; allowed values are in [0, 1]")
    return float(p)


class Fault:
    """Base class: ``sample`` picks the sites; :func:`fault_words` applies them to the stored words as
    the fault's ``mode`` says (``"flip"``: XOR; stuck-at modes set the bit)."""

    bits: BitSelection = None
    #: "flip" (XOR) or "stuck0"/"stuck1"
    mode: str = "flip"

    def sample(
        self,
        names: Sequence[str],
        shapes: Sequence[torch.Size],
        bits: StoredBits,
        generator: torch.Generator | None = None,
    ) -> Sites:
        """Sites in the tensors ``names`` of ``shapes``, among the stored bit positions ``bits`` (one
        tuple for all tensors or one per tensor, see :func:`per_tensor_bits`)."""
        raise NotImplementedError

    def label(self) -> str:
        return type(self).__name__


@dataclass(frozen=True)
class BitErrorRate(Fault):
    """Every stored bit flips independently with probability ``p`` (i.i.d. storage errors).

    ``bits`` restricts the faults to some bit positions (a field name, indices); the rate then
    applies to those bits only. The count is ``Binomial(n_bits, p)``, positions are distinct.
    """

    p: float
    bits: BitSelection = None

    def __post_init__(self) -> None:
        _check_rate(self.p)

    def sample(self, names, shapes, bits, generator=None):
        sizes, per = _sizes(shapes), per_tensor_bits(bits, len(shapes))
        total = _n_bits(sizes, per)
        if total == 0 or self.p == 0.0:
            return _empty_sites()
        k = int(
            torch.binomial(
                torch.tensor(float(total), dtype=torch.float64),
                torch.tensor(self.p, dtype=torch.float64),
                generator=generator,
            ).item()
        )
        return _locate(sample_distinct(total, min(k, total), generator), sizes, per)

    def label(self) -> str:
        return f"BER={self.p:g}"


@dataclass(frozen=True)
class BitFlips(Fault):
    """Exactly ``k`` distinct stored bits flip, uniformly at random."""

    k: int
    bits: BitSelection = None

    def __post_init__(self) -> None:
        if isinstance(self.k, bool) or not isinstance(self.k, int):
            raise TypeError(f"k: expected an int >= 0, got {type(self.k).__name__}")
        if self.k < 0:
            raise ValueError(f"k: {self.k} flips; allowed values are ints >= 0")

    def sample(self, names, shapes, bits, generator=None):
        sizes, per = _sizes(shapes), per_tensor_bits(bits, len(shapes))
        total = _n_bits(sizes, per)
        if self.k > total:
            raise ValueError(f"k: {self.k} flips requested but the selection holds only {total} bits")
        return _locate(sample_distinct(total, self.k, generator), sizes, per)

    def label(self) -> str:
        return f"{self.k} flips"


@dataclass(frozen=True)
class SingleBitFlip(Fault):
    """Flip one given bit of one given element: ``param`` (a selected tensor's name), ``index``
    (flat int or a multi-index tuple) and ``bit`` (position in the stored word, 0 = LSB)."""

    param: str
    index: int | tuple[int, ...]
    bit: int

    def __post_init__(self) -> None:  # numpy integers (e.g. a census row's index) are ints here
        object.__setattr__(self, "index", _index(self.index))
        object.__setattr__(self, "bit", check_int("bit", self.bit, 0))

    def sample(self, names, shapes, bits, generator=None):
        if self.param not in names:
            raise ValueError(
                f"param: {self.param!r} is not among the selected tensors; allowed: "
                f"{', '.join(names[:8])}{' ...' if len(names) > 8 else ''}"
            )
        i = list(names).index(self.param)
        shape = tuple(shapes[i])
        index = self.index
        if isinstance(index, tuple):
            if len(index) != len(shape) or not all(0 <= j < d for j, d in zip(index, shape)):
                raise ValueError(f"index: {index!r} is outside {self.param!r} of shape {shape}")
            index = sum(j * s for j, s in zip(index, _strides(shape)))
        n = _sizes([shape])[0]
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise ValueError(
                f"index: {index!r} is outside {self.param!r}; allowed 0..{n - 1} or a multi-index within shape {shape}"
            )
        own = per_tensor_bits(bits, len(shapes))[i]
        if isinstance(self.bit, bool) or not isinstance(self.bit, int) or self.bit not in own:
            raise ValueError(f"bit: {self.bit!r} is not a stored bit of {self.param!r}; allowed {own[0]}..{own[-1]}")
        return Sites(*(torch.tensor([v], dtype=torch.int64) for v in (i, index, self.bit)))

    def label(self) -> str:
        return f"{self.param}[{self.index}] bit {self.bit}"


@dataclass(frozen=True)
class StuckAt(Fault):
    """Each stored bit is stuck at ``value`` (0 or 1) with probability ``p``; a stuck bit that
    already holds ``value`` changes nothing (so about half of the stuck bits are visible)."""

    p: float
    value: int
    bits: BitSelection = None

    def __post_init__(self) -> None:
        _check_rate(self.p)
        object.__setattr__(self, "value", check_int("value", self.value, 0, 1))

    @property
    def mode(self) -> str:  # type: ignore[override]
        return f"stuck{self.value}"

    def sample(self, names, shapes, bits, generator=None):
        return BitErrorRate(self.p).sample(names, shapes, bits, generator)

    def label(self) -> str:
        return f"stuck-at-{self.value} p={self.p:g}"


@dataclass(frozen=True)
class FlipList(Fault):
    """Flip a given list of stored bits, each a ``(param, index, bit)`` triple as in
    :class:`SingleBitFlip` (e.g. the sequence a bit-flip attack found). Flipping a bit twice
    undoes it: a site listed an even number of times is left alone."""

    flips: tuple[tuple[str, int | tuple[int, ...], int], ...]

    def __post_init__(self) -> None:
        try:
            triples = [(p, i, b) for p, i, b in self.flips]
        except (TypeError, ValueError) as e:
            raise TypeError(f"flips: expected a sequence of (param, index, bit) triples ({e})") from None
        flips = tuple((str(p), _index(i), check_int("flips: bit", b, 0)) for p, i, b in triples)
        object.__setattr__(self, "flips", flips)

    def sample(self, names, shapes, bits, generator=None):
        if not self.flips:
            return _empty_sites()
        parts = [SingleBitFlip(p, i, b).sample(names, shapes, bits) for p, i, b in self.flips]
        key = torch.stack([torch.cat([getattr(s, f) for s in parts]) for f in ("tensor", "word", "bit")], 1)
        uniq, counts = torch.unique(key, dim=0, return_counts=True)
        odd = uniq[counts % 2 == 1]
        return Sites(odd[:, 0].contiguous(), odd[:, 1].contiguous(), odd[:, 2].contiguous())

    def label(self) -> str:
        return f"{len(self.flips)} listed flips"


def fault_words(words: Tensor, word_of_site: Tensor, bits: Tensor, mode: str = "flip") -> Tensor:
    """Faulty copies of ``words`` (one per unique word) given the sites: ``word_of_site[j]``
    indexes into ``words`` and ``bits[j]`` is the bit hit. Distinct sites in one word combine."""
    masks = torch.zeros_like(words).index_add_(0, word_of_site, torch.ones_like(bits).bitwise_left_shift(bits))
    if mode == "flip":
        return words ^ masks
    if mode == "stuck1":
        return words | masks
    if mode == "stuck0":
        return words & ~masks
    raise ValueError(f"mode: {mode!r}; allowed 'flip', 'stuck0', 'stuck1'")


def read_at(t: Tensor, idx: Tensor) -> Tensor:
    """Elements of ``t`` at logical (row-major) flat indices ``idx``, whatever its strides (a transposed
    or channels-last weight is indexed as its shape says, not as its memory is laid out)."""
    return t.view(-1)[idx] if t.is_contiguous() else t[torch.unravel_index(idx, t.shape)]


def write_at(t: Tensor, idx: Tensor, values: Tensor) -> None:
    """Write ``values`` into ``t`` at logical flat indices ``idx``, in place, whatever its strides."""
    if t.is_contiguous():
        t.view(-1)[idx] = values
    else:
        t[torch.unravel_index(idx, t.shape)] = values
