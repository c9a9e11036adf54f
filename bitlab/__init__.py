"""bitlab: how deep networks break when bits flip, and how to make them resilient.

A small, readable library behind a notebook series that reproduces five papers on bit-flip
faults in DNN parameters and activations. The pipeline (see the README)::

    float weights -> codec.encode -> stored words -> fault -> codec.decode -> weights' -> evaluate
"""
from __future__ import annotations

import importlib
from typing import Any

from . import faults, formats, inject, protect
from .faults import BitErrorRate, BitFlips, SingleBitFlip, StuckAt
from .faults import FlipList
from .formats import BF16, FP16, FP32, Int, Q
from .inject import corrupted, corrupted_activations
from .protect import Identity, ParityNulling, RangeNulling, Unary
from .scaling import WeightScaling  # Fuengfusin 2024 weight scaling (bitlab.scaling)
from .secded import SECDED  # extended Hamming ECC baseline (bitlab.secded)
from .checksum import GroupChecksum

__version__ = "0.1.0"

_SUBMODULES = {"campaign", "data", "models", "train", "plot", "optim", "hessian", "quant", "adversarial",
               "attack", "defenses"}
_SUBMODULES.add("landscape")  # 1-D loss-landscape slices (bitlab.landscape, notebook 04)
# names re-exported lazily from submodules, so that ``import bitlab`` stays light
_LAZY = {
    "accuracy": "train", "fit": "train", "evaluate": "train",
    "ber_sweep": "campaign", "summarize": "campaign", "tolerable_ber": "campaign",
    "SAM": "optim", "SAR": "optim",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'bitlab' has no attribute {name!r}")


__all__ = ["faults", "formats", "inject", "protect", "BitErrorRate", "BitFlips", "SingleBitFlip", "StuckAt",
           "FP32", "FP16", "BF16", "Q", "Int", "corrupted", "corrupted_activations", "Identity",
           "ParityNulling", "RangeNulling", "Unary", *sorted(_SUBMODULES), *sorted(_LAZY)]
__all__ += ["FlipList", "GroupChecksum"]
__all__ += ["WeightScaling", "SECDED"]
