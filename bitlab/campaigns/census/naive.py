"""The naive single-bit census (flip, full forward, restore, one flip at a time): the reference that
the fast census is checked against, row for row and float for float.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

from ...codecs.base import Codec, Identity
from ...evaluate import batch_accuracy, materialize
from ...faults import BitErrorRate, SingleBitFlip
from ...formats import BitSelection, Format, resolve_bits
from ...inject import Store
from ...params import ParamSelection, select_params, store_format
from ...progress import bar as progress_bar
from .plan import weight_plan

__all__ = ["naive_bit_census"]


def naive_bit_census(
    model: nn.Module,
    data: object,
    fmt: Format | None = None,
    bits: BitSelection = "all",
    params: ParamSelection = None,
    n_weights: int | None = None,
    seed: int = 0,
    codec: Codec | None = None,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Flip every selected bit of every selected weight, one at a time: flip, full forward, restore.

    Returns one row per (param, index, bit): ``value`` (the stored weight), ``flipped`` (what it reads
    back as), ``accuracy`` and ``rad`` = (acc_clean - acc_flipped) / acc_clean, the relative accuracy
    drop of Pranto et al. 2025. ``n_weights`` samples that many weights per parameter (without
    replacement, seeded) instead of all of them. ``acc_clean`` is the fault-free accuracy in ``fmt``.
    """
    codec = Identity() if codec is None else codec
    fmt = store_format(model, fmt, params)  # None: the selected tensors' own (one) format
    chosen = select_params(model, params)
    positions = resolve_bits(bits, codec.width(fmt), codec.fields(fmt))
    batches = materialize(data)
    store = Store(model, fmt, codec, params)
    with store.corrupted(BitErrorRate(0.0)):
        clean = batch_accuracy(model, batches)
    plan = [(name, int(i), b) for name, idx in weight_plan(chosen, n_weights, seed) for i in idx for b in positions]
    rows = []
    lookup = dict(chosen)
    for name, i, b in progress_bar(plan, desc="naive census", progress=progress):
        value = lookup[name].detach().reshape(-1)[i].item()
        with store.corrupted(SingleBitFlip(name, i, b)):
            flipped = lookup[name].detach().reshape(-1)[i].item()
            acc = batch_accuracy(model, batches)
        rows.append(
            {
                "param": name,
                "index": i,
                "bit": b,
                "value": value,
                "flipped": flipped,
                "accuracy": acc,
                "rad": (clean - acc) / clean if clean > 0 else float("nan"),
            }
        )
    df = pd.DataFrame(rows)
    df.attrs["clean_accuracy"] = clean
    return df
