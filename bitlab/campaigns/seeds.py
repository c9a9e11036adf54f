"""Counter-based randomness for campaigns: the faults of a trial are a pure function of the campaign's
seed, its point (e.g. the bit error rate) and the trial index, never of how many trials ran before.

So any subset of trials, run in any order, on any worker, gives the same rows; ``trials=20`` keeps the
rows of ``trials=6`` as its first six; a rate run alone draws what it draws inside the full sweep. The
key is hashed with :class:`numpy.random.SeedSequence` (its ``spawn_key``), whose streams for distinct
keys are independent, and the 64-bit state it generates seeds a fresh ``torch.Generator`` (CPU:
faults are sampled on the CPU and moved to the model's device).
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import torch

from ..validate import check_int

__all__ = ["Key", "trial_seed", "trial_generator"]

Key = int | float | str


def _word(part: Key) -> int:
    """One key part as a 32-bit word: ints as they are (mod 2**32), floats by their IEEE-754 bits,
    strings by a SHA-256 digest (so ``0.1`` and ``"0.1"`` and ``1`` never collide by accident)."""
    if isinstance(part, bool) or not isinstance(part, (int, float, str, np.integer, np.floating)):
        raise TypeError(f"key: expected ints, floats or strings, got {type(part).__name__} {part!r}")
    if isinstance(part, (int, np.integer)):
        return int(part) % (1 << 32)
    if isinstance(part, (float, np.floating)):
        bits = struct.unpack("<Q", struct.pack("<d", float(part)))[0]
        return (bits ^ (bits >> 32)) % (1 << 32)
    return int.from_bytes(hashlib.sha256(part.encode()).digest()[:4], "little")


def trial_seed(seed: int, *key: Key) -> int:
    """The 63-bit seed of the trial named by ``key`` (e.g. ``"ber", 1e-4, trial``) in a campaign seeded
    with ``seed``: a pure function of its arguments."""
    check_int("seed", seed, 0)
    # each part tagged by its type, so that the int 1 and the float 1.0 are different keys
    words = [w for part in key for w in ({int: 1, float: 2, str: 3}[_kind(part)], _word(part))]
    state = np.random.SeedSequence(entropy=int(seed), spawn_key=tuple(words)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31 | int(state[1]) >> 1) & ((1 << 63) - 1)


def _kind(part: Key) -> type:
    if isinstance(part, (int, np.integer)) and not isinstance(part, bool):
        return int
    if isinstance(part, (float, np.floating)):
        return float
    return str


def trial_generator(seed: int, *key: Key) -> torch.Generator:
    """A fresh CPU ``torch.Generator`` seeded with :func:`trial_seed`."""
    return torch.Generator().manual_seed(trial_seed(seed, *key))
