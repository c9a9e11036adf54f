"""Campaigns: the pipeline run many times, returning tidy DataFrames (one row per trial or flip).

* :mod:`.sweep` -- BER sweeps, summaries with confidence intervals, the tolerable BER (Qin et al. 2017).
* :mod:`.activations` -- activation bit-flip campaigns on quantized models (Fasfous et al. 2022).
* :mod:`.census` -- the exact single-bit census (Pranto et al. 2025) and its naive reference.
* :mod:`.attack` -- the progressive bit-flip attack (Rakin et al. 2019); :mod:`.attacks` repeats it per seed.
* :mod:`.runner` -- where a campaign's items run (in process, a process pool, Dask) and its checkpoint.
* :mod:`.scaling` -- choosing the weight-scaling constant ``t`` (Fuengfusin 2024).
"""

from __future__ import annotations

from ..evaluate import batch_accuracy, materialize
from .activations import activation_sweep, resilience_auc
from .attack import bit_flip_attack
from .attacks import bit_flip_attacks
from .census import bit_census, count_above, naive_bit_census
from .runner import ItemError, local_cluster
from .scaling import best_t, sweep_t
from .sweep import ber_sweep, summarize, tolerable_ber

__all__ = [
    "ber_sweep",
    "summarize",
    "tolerable_ber",
    "activation_sweep",
    "resilience_auc",
    "bit_census",
    "count_above",
    "naive_bit_census",
    "bit_flip_attack",
    "bit_flip_attacks",
    "ItemError",
    "local_cluster",
    "sweep_t",
    "best_t",
    "materialize",
    "batch_accuracy",
]
