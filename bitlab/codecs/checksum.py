"""Group checksums that zero a whole group of weights on mismatch (RADAR-like).

Li et al. 2021, "RADAR: Run-time Adversarial Weight Attack Detection and Accuracy Recovery", split
each layer's quantized weights into groups, keep a tiny signature per group (2 bits, from a masked
sum of the group's words) in secure storage, recompute it at run time and set every weight of a
group whose signature mismatches to zero: a bit-flip attack's few, large flips are caught and their
damage is mostly undone, because a zeroed group costs far less accuracy than a flipped MSB.

Our reading (the exact signature is ours): the checksum of a group of ``G`` consecutive stored words
is an XOR fold of ``c`` bits. Bit ``j`` of the checksum is the parity of every stored bit of the
group at a position ``b`` with ``b % c == j``. Hence:

* every single flip in a group toggles exactly one checksum bit: it is always detected;
* a set of flips in one group goes unseen exactly when, for every residue ``j`` in ``0..c-1``,
  an even number of them sit at bit positions ``b`` with ``b % c == j`` (e.g. two MSB flips in the
  same group). :func:`missed` states this rule so that tests and notebooks can count collisions.

The checksums are kept outside the faulty store (as RADAR keeps its golden signatures in secure
memory), so faults hit weight words only; the storage overhead is ``c / G`` bits per weight.
RADAR's secret key, which stops an adaptive attacker from pairing flips, is left out. Note that even
a plain progressive bit search tends to pair MSB flips inside one group (it attacks the weights of one
output unit, which are neighbours in memory); ``interleave=True`` spreads neighbours over groups.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from ..formats import Format
from .base import Codec, State, subset_state

__all__ = ["GroupChecksum", "group_checksums", "group_ids", "missed"]


def group_ids(n: int, group: int, interleave: bool = False, device: torch.device | str | None = None) -> Tensor:
    """The group of each of ``n`` words: runs of ``group`` consecutive words (``i // group``), or,
    interleaved, every ``ceil(n / group)``-th word (``i % ceil(n / group)``), so that neighbours
    (e.g. the weights of one output unit) fall in different groups."""
    return _group_of(torch.arange(n, dtype=torch.int64, device=device), n, group, interleave)


def _stride(n: int, group: int) -> int:
    """How far apart the words of one interleaved group are: ``ceil(n / group)`` (at least 1)."""
    return max(1, -(-n // group))


def _group_of(index: Tensor, n: int, group: int, interleave: bool) -> Tensor:
    """The group of each word position in ``index`` among ``n`` words (see :func:`group_ids`)."""
    return index % _stride(n, group) if interleave else index // group


def _fold(words: Tensor, width: int, bits: int) -> Tensor:
    """Each word's ``width`` stored bits XOR-folded into ``bits`` bits: bit ``j`` of the result is the
    parity of the word's bits at positions ``b % bits == j``."""
    x, span = words.reshape(-1).to(torch.int64) & ((1 << width) - 1), width
    while span > bits:  # fold the upper part onto the lower, by a shift that keeps every residue class
        half = (span + 1) // 2  # ceil(span / 2), rounded up to a multiple of bits
        half += -half % bits
        x = (x ^ (x >> half)) & ((1 << half) - 1)
        span = half
    return x


def _parity(folded: Tensor, owner: Tensor, groups: int, bits: int) -> Tensor:
    """The ``bits``-bit checksum of each of ``groups`` groups from its words' folds (``owner``: the
    group of each word): the XOR of the folds, bit by bit as the parity of a count."""
    out = torch.zeros(groups, dtype=torch.int64, device=folded.device)
    for j in range(bits):
        count = torch.zeros(groups, dtype=torch.int64, device=folded.device).index_add_(0, owner, (folded >> j) & 1)
        out |= (count & 1) << j
    return out


def group_checksums(words: Tensor, width: int, group: int, bits: int, interleave: bool = False) -> Tensor:
    """XOR-fold checksum of ``bits`` bits for each group of words (see :func:`group_ids`; the last
    group may be shorter). Bit ``j`` is the parity of all bits at positions ``b % bits == j`` of the group."""
    w = words.reshape(-1)
    n = w.numel()
    if n == 0:
        return torch.empty(0, dtype=torch.int64, device=w.device)
    gid = group_ids(n, group, interleave, w.device)
    return _parity(_fold(w, width, bits), gid, int(gid.max()) + 1, bits)


def _members(groups: Tensor, n: int, group: int, interleave: bool) -> tuple[Tensor, Tensor]:
    """The words of ``groups`` (distinct group ids) among ``n`` words, and the position in ``groups`` of
    each word's group (see :func:`group_ids`)."""
    stride = _stride(n, group)
    if interleave:  # group g holds words g, g + stride, g + 2 * stride, ...
        k = torch.arange(-(-n // stride), dtype=torch.int64, device=groups.device)
        words = groups[:, None] + k[None, :] * stride
    else:
        words = groups[:, None] * group + torch.arange(group, dtype=torch.int64, device=groups.device)[None, :]
    owner = torch.arange(groups.numel(), device=groups.device)[:, None].expand_as(words)
    keep = words < n
    return words[keep], owner[keep]


def missed(flip_bits: Tensor, bits: int) -> bool:
    """Whether flips at the stored bit positions ``flip_bits`` (all in one group) leave the
    ``bits``-bit XOR-fold checksum unchanged: every residue class mod ``bits`` holds an even count."""
    counts = torch.bincount(flip_bits.reshape(-1).to(torch.int64) % bits, minlength=bits)
    return bool((counts % 2 == 0).all())


class GroupChecksum(Codec):
    """RADAR-like group checksum (Li et al. 2021): groups of ``group`` consecutive words (or, with
    ``interleave=True``, words ``ceil(n / group)`` apart), a ``bits``-bit XOR-fold checksum each (see
    the module notes); on read, every weight of a group whose checksum mismatches is set to 0.
    Overhead: ``bits / group`` bits per weight (a float).

    The check spans words, so the codec decodes whole tensors only (``elementwise = False``): the
    injector reads the full tensor back with the faulty words in place."""

    elementwise = False

    def __init__(self, group: int = 16, bits: int = 2, interleave: bool = False) -> None:
        if isinstance(group, bool) or not isinstance(group, int) or group < 1:
            raise ValueError(f"group: {group!r}; allowed ints >= 1 (words per checksum group)")
        if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 62:
            raise ValueError(f"bits: {bits!r}; allowed ints 1..62 (checksum bits per group)")
        if not isinstance(interleave, bool):
            raise TypeError(f"interleave: expected a bool, got {type(interleave).__name__}")
        self.group, self.bits, self.interleave = group, bits, interleave
        self.name = f"checksum(G={group},{bits}b{',interleaved' if interleave else ''})"

    def overhead_bits(self, fmt: Format) -> float:
        """Checksum bits per weight: ``bits / group`` (the checksums are stored once per group)."""
        return self.bits / self.group

    def fields(self, fmt: Format) -> Mapping[str, tuple[int, ...]]:
        return fmt.fields

    def fit(self, w: Tensor, fmt: Format) -> State:
        state = super().fit(w, fmt)
        words = super().encode(w.reshape(-1), fmt, state)
        state["n"] = words.numel()
        state["checksum"] = group_checksums(words, fmt.width, self.group, self.bits, self.interleave)
        return state

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        if words.numel() != state["n"]:
            raise ValueError(
                f"words: {self.name} decodes whole tensors only ({state['n']} words, "
                f"got {words.numel()}); pass every word of the tensor"
            )
        v = super().decode(words, fmt, state).reshape(-1)
        bad = group_checksums(words, fmt.width, self.group, self.bits, self.interleave) != state["checksum"]
        zero = bad[group_ids(v.numel(), self.group, self.interleave, bad.device)]
        return torch.where(zero, torch.zeros_like(v), v).view(words.shape)

    def is_exact(self, fmt: Format) -> bool:
        return False

    def read_changed(
        self, stored: Tensor, fmt: Format, state: State, index: Tensor, words: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Only the groups holding a changed word are checked again and read back (every other group's
        words and checksum are the clean ones): the same values as decoding the whole tensor."""
        n = state["n"]
        hit = torch.unique(_group_of(index, n, self.group, self.interleave))
        elems, owner = _members(hit, n, self.group, self.interleave)
        order = torch.argsort(elems)
        elems, owner = elems[order], owner[order]
        w = stored.reshape(-1)[elems].clone()
        w[torch.searchsorted(elems, index)] = words.to(w.dtype)
        bad = _parity(_fold(w, fmt.width, self.bits), owner, hit.numel(), self.bits) != state["checksum"][hit]
        v = Codec.decode(self, w, fmt, subset_state(state, elems, n)).reshape(-1)
        return elems, torch.where(bad[owner], torch.zeros_like(v), v)

    def __repr__(self) -> str:
        return self.name
