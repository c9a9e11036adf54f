"""Protection codecs: how a tensor becomes stored words on top of a number format and how faulty
words are read back (the second stage of the pipeline).

* :class:`Codec`, :class:`Identity` -- the contract and the unprotected store (:mod:`.base`).
* :class:`RangeNulling`, :class:`ParityNulling` -- Qin et al. 2017 weight nulling (:mod:`.nulling`).
* :class:`Unary` -- Qin et al. 2017 alternative representation, our reading (:mod:`.unary`).
* :class:`WeightScaling` -- Fuengfusin 2024 per-layer scaling (:mod:`.scaling`).
* :class:`SECDED` -- the classical extended Hamming ECC baseline (:mod:`.secded`).
* :class:`GroupChecksum` -- RADAR-like group checksums that zero a group on mismatch (:mod:`.checksum`).
"""

from __future__ import annotations

from .base import Codec, Identity, State, flat_scale, popcount, subset_state
from .checksum import GroupChecksum
from .nulling import ParityNulling, RangeNulling
from .scaling import WeightScaling
from .secded import SECDED
from .unary import Unary

__all__ = [
    "Codec",
    "Identity",
    "State",
    "RangeNulling",
    "ParityNulling",
    "Unary",
    "WeightScaling",
    "SECDED",
    "GroupChecksum",
    "popcount",
    "subset_state",
    "flat_scale",
]
