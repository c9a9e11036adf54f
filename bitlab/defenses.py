"""Every defense of the book in one registry, with what it costs (notebook 06, "defenses side by side").

Two kinds of defense:

* **storage** defenses are protection codecs (:mod:`bitlab.codecs`: nulling, weight scaling,
  SECDED, group checksums): they change how weights are stored and read, cost
  stored bits (``codec.overhead_bits``) and work at every read (decode), but leave training alone;
* **training** defenses change how the model is trained (weight decay, SAM, SAR, Hessian-aware
  training): no stored bits and no inference work, but more training time.

A storage defense and a training defense combine freely: train with one recipe, store with one codec.

The default hyperparameters are ours, chosen for the digits MLP of the book (see notebook 06):
weight decay 1e-2 on Adam (Fasfous et al. 2022 use SGD; the value is ours), SAM ``rho = 0.05`` on
Adam (Foret et al. 2021), SAR ``rho = 1, fraction = 0.01`` (our reading of Zhou et al. 2024, see
:class:`bitlab.training.optim.SAR`), Hessian-aware ``lambda = 0.01`` with one Rademacher probe and RMSProp
(Pranto et al. 2025).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import torch

from .codecs import SECDED, Codec, GroupChecksum, Identity, ParityNulling, RangeNulling, WeightScaling
from .curvature import hessian_regularizer
from .formats import Format
from .training.optim import SAM, SAR

__all__ = ["Defense", "DEFENSES", "defense", "overhead_table", "training_cost", "decode_seconds"]


def _plain(seed: int) -> dict[str, Any]:
    return {}


def _weight_decay(seed: int) -> dict[str, Any]:
    return {"weight_decay": 1e-2}


def _sam(seed: int) -> dict[str, Any]:
    return {"optimizer": lambda p: SAM(p, torch.optim.Adam, rho=0.05, lr=1e-3)}


def _sar(seed: int) -> dict[str, Any]:
    return {"optimizer": lambda p: SAR(p, torch.optim.Adam, rho=1.0, fraction=0.01, lr=1e-3)}


def _hessian(seed: int) -> dict[str, Any]:
    return {"optimizer": "rmsprop", "regularizer": hessian_regularizer(0.01, n_probes=1, seed=seed)}


@dataclass(frozen=True)
class Defense:
    """One defense: its ``kind`` ("none", "storage" or "training"), the ``paper`` and ``notebook``
    it comes from, the extra work at ``inference`` (words), a factory for its ``codec`` (storage) and
    one for its training recipe (``recipe(seed) -> keyword arguments of bitlab.training.fit``)."""

    name: str
    kind: str
    paper: str
    notebook: str
    inference: str
    make_codec: Callable[[], Codec] = Identity
    recipe: Callable[[int], dict[str, Any]] = field(default=_plain)

    def codec(self) -> Codec:
        """A fresh codec (the identity for training defenses)."""
        return self.make_codec()

    def fit_kwargs(self, seed: int = 0) -> dict[str, Any]:
        """Keyword arguments for :func:`bitlab.training.fit` (fresh optimizer factory / regularizer
        seeded with ``seed``); empty for storage defenses, which train like the baseline."""
        return self.recipe(seed)

    def overhead_bits(self, fmt: Format) -> float:
        """Extra stored bits per weight in ``fmt`` (the codec's ``overhead_bits``)."""
        return float(self.codec().overhead_bits(fmt))


DEFENSES: dict[str, Defense] = {
    d.name: d
    for d in [
        Defense("none", "none", "-", "01", "none"),
        Defense(
            "range nulling",
            "storage",
            "Qin et al. 2017",
            "01",
            "two compares per weight read (value against the tensor's trained [min, max]); stores 2 numbers per tensor",
            RangeNulling,
        ),
        Defense(
            "parity nulling",
            "storage",
            "Qin et al. 2017",
            "01",
            "a parity (popcount) per word read",
            lambda: ParityNulling("extra"),
        ),
        Defense(
            "weight scaling",
            "storage",
            "Fuengfusin 2024",
            "02",
            "a division (or multiplication by 1/c) per weight read; stores 1 number per tensor",
            WeightScaling,
        ),
        Defense(
            "SECDED",
            "storage",
            "Hamming 1950 (baseline in Fuengfusin 2024)",
            "02",
            "a syndrome (one popcount per check bit) and a conditional correction per word read",
            SECDED,
        ),
        Defense(
            "group checksum",
            "storage",
            "Li et al. 2021 (RADAR; synergy in Pranto et al. 2025)",
            "05",
            "an XOR-fold per group of 16 words and a compare; keeps 2 secure bits per group",
            lambda: GroupChecksum(16, 2),
        ),
        Defense("weight decay", "training", "Fasfous et al. 2022", "03", "none", recipe=_weight_decay),
        Defense("SAM", "training", "Foret et al. 2021 (in Zhou et al. 2024)", "04", "none", recipe=_sam),
        Defense("SAR", "training", "Zhou et al. 2024 (our reading)", "04", "none", recipe=_sar),
        Defense("Hessian-aware", "training", "Pranto et al. 2025", "05", "none", recipe=_hessian),
    ]
}


def defense(name: str) -> Defense:
    """The registered defense called ``name`` (see :data:`DEFENSES`)."""
    if name not in DEFENSES:
        raise ValueError(f"name: {name!r}; allowed {sorted(DEFENSES)}")
    return DEFENSES[name]


def overhead_table(fmt: Format, names: Sequence[str] | None = None) -> pd.DataFrame:
    """One row per defense: kind, paper, notebook, extra stored bits per weight in ``fmt``, stored bits
    per weight in total, and the extra work per read."""
    rows = []
    for n in list(DEFENSES) if names is None else names:
        d = defense(n)
        extra = d.overhead_bits(fmt)
        rows.append(
            {
                "defense": d.name,
                "kind": d.kind,
                "paper": d.paper,
                "notebook": d.notebook,
                "extra bits / weight": extra,
                "stored bits / weight": fmt.width + extra,
                "inference work": d.inference,
            }
        )
    return pd.DataFrame(rows).set_index("defense")


def training_cost(
    histories: Mapping[str, Sequence[pd.DataFrame] | pd.DataFrame], baseline: str = "none"
) -> pd.DataFrame:
    """Mean seconds per epoch of each recipe from :func:`bitlab.training.fit` histories (one frame or a
    list of frames, e.g. one per seed), and the ratio to ``baseline``'s."""
    if baseline not in histories:
        raise ValueError(f"baseline: {baseline!r}; allowed one of the given recipes {sorted(histories)}")
    per = {}
    for name, h in histories.items():
        frames = [h] if isinstance(h, pd.DataFrame) else list(h)
        if not frames or any("seconds" not in f.columns for f in frames):
            raise ValueError(f"histories[{name!r}]: expected fit() histories with a 'seconds' column")
        per[name] = float(pd.concat(frames)["seconds"].mean())
    base = per[baseline]
    return pd.DataFrame([{"recipe": n, "s / epoch": s, "x baseline": s / base} for n, s in per.items()]).set_index(
        "recipe"
    )


def decode_seconds(codec: Codec, fmt: Format, n: int = 2**16, repeats: int = 5, seed: int = 0) -> float:
    """Median wall time of ``codec.decode`` on ``n`` stored words of random weights (normal, std 0.1),
    in seconds per million weights: the read-side cost of a storage defense on this machine."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n: {n!r}; allowed ints >= 1")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: {repeats!r}; allowed ints >= 1")
    g = torch.Generator().manual_seed(seed)
    w = 0.1 * torch.randn(n, generator=g)
    state = codec.fit(w, fmt)
    words = codec.encode(w, fmt, state)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        codec.decode(words, fmt, state)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6 / n  # seconds per million weights
