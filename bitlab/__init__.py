"""bitlab: how deep networks break when bits flip, and how to make them resilient.

A small, readable library behind a notebook series that reproduces five papers on bit-flip faults in
DNN parameters and activations. The layout follows the pipeline::

    formats -> codecs -> faults (draws, params) -> inject -> evaluate (metrics) -> campaigns
                                                      training, curvature, zoo on the side

The pipeline's own names (formats, fault models, codecs, ``corrupted``) load with ``import bitlab``;
the rest loads on first use. Short names kept for readers of the notebooks: ``bl.train``
(:mod:`bitlab.training`), ``bl.campaign`` (:mod:`bitlab.campaigns`), ``bl.census``, ``bl.attack``,
``bl.hessian`` (:mod:`bitlab.curvature`), ``bl.landscape``, ``bl.optim``, ``bl.quant``,
``bl.adversarial``, ``bl.data``, ``bl.models`` and ``bl.protect`` (:mod:`bitlab.codecs`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

from . import activation_faults, codecs, draws, faults, formats, inject, params
from ._version import __version__
from .codecs import SECDED, Codec, GroupChecksum, Identity, ParityNulling, RangeNulling, Unary, WeightScaling
from .faults import BitErrorRate, BitFlips, FlipList, SingleBitFlip, StuckAt
from .formats import BF16, FP16, FP32, Int, Q
from .inject import corrupted, corrupted_activations

#: attribute name -> submodule (relative to ``bitlab``), imported on first access
_SUBMODULES: dict[str, str] = {
    "evaluate": "evaluate",
    "metrics": "metrics",
    "campaigns": "campaigns",
    "curvature": "curvature",
    "training": "training",
    "zoo": "zoo",
    "plot": "plot",
    "progress": "progress",
    "defenses": "defenses",
    "rescale": "rescale",
    "validate": "validate",
    "coverage": "coverage",
    "report": "report",
    # short names
    "train": "training",
    "campaign": "campaigns",
    "census": "campaigns.census",
    "attack": "campaigns.attack",
    "hessian": "curvature",
    "landscape": "curvature.landscape",
    "optim": "training.optim",
    "quant": "training.quant",
    "adversarial": "training.adversarial",
    "data": "zoo.data",
    "models": "zoo.models",
    "protect": "codecs",
}
#: the flat module paths of bitlab 0.1 that still import (``from bitlab.census import bit_census``)
_OLD_PATHS: dict[str, str] = {
    old: _SUBMODULES[old]
    for old in (
        "train",
        "campaign",
        "census",
        "attack",
        "hessian",
        "landscape",
        "optim",
        "quant",
        "adversarial",
        "data",
        "models",
        "protect",
    )
} | {"act_campaign": "campaigns.activations", "secded": "codecs.secded", "checksum": "codecs.checksum"}
#: function or class name -> submodule it is re-exported from, imported on first access
_LAZY: dict[str, str] = {
    "accuracy": "evaluate",
    "score": "evaluate",
    "Metric": "metrics",
    "fit": "training.loop",
    "ber_sweep": "campaigns.sweep",
    "summarize": "campaigns.sweep",
    "tolerable_ber": "campaigns.sweep",
    "bit_census": "campaigns.census",
    "SAM": "training.optim",
    "SAR": "training.optim",
}

__all__ = [
    "__version__",
    "activation_faults",
    "codecs",
    "draws",
    "faults",
    "formats",
    "inject",
    "params",
    "Codec",
    "Identity",
    "RangeNulling",
    "ParityNulling",
    "Unary",
    "WeightScaling",
    "SECDED",
    "GroupChecksum",
    "BitErrorRate",
    "BitFlips",
    "FlipList",
    "SingleBitFlip",
    "StuckAt",
    "FP32",
    "FP16",
    "BF16",
    "Q",
    "Int",
    "corrupted",
    "corrupted_activations",
    *_SUBMODULES,
    *_LAZY,
]


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``bitlab.<old flat name>`` to the module that now holds it (the same module object)."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        head, _, old = fullname.partition(".")
        if head != __name__ or old not in _OLD_PATHS:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(f"{__name__}.{_OLD_PATHS[spec.name.partition('.')[2]]}")
        spec.loader_state = module.__spec__  # the import system overwrites it; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run (the module was imported under its own name): give it back its own spec."""
        spec = module.__spec__
        if spec is not None and spec.loader_state is not None:
            module.__spec__ = spec.loader_state


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.append(_OldPaths())


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{_SUBMODULES[name]}", __name__)
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'bitlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
