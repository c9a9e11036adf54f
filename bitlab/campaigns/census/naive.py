"""The naive single-bit census (flip, full forward, restore, one flip at a time): the reference that
the fast census is checked against, row for row and float for float.
"""

from __future__ import annotations

import pandas as pd
from torch import nn

from ...codecs.base import Codec, Identity
from ...evaluate import Output, materialize, model_device, score
from ...faults import BitErrorRate, SingleBitFlip
from ...formats import BitSelection, Format, resolve_bits
from ...inject import Store
from ...metrics import MetricSpec, relative_drop, resolve_metric
from ...params import ParamSelection, select_params
from ...progress import bar as progress_bar
from .plan import census_format, weight_plan

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
    metric: MetricSpec = "accuracy",
    output: Output = None,
) -> pd.DataFrame:
    """Flip every selected bit of every selected weight, one at a time: flip, full forward, restore.

    Returns one row per (param, index, bit): ``value`` (the stored weight), ``flipped`` (what it reads
    back as), the metric (column ``accuracy`` by default, else the metric's name) and ``rad`` =
    (acc_clean - acc_flipped) / acc_clean, the relative accuracy drop of Pranto et al. 2025
    (:func:`bitlab.metrics.relative_drop` for other metrics: positive is worse). ``n_weights`` samples
    that many weights per parameter (without replacement, seeded) instead of all of them. The clean
    value is the fault-free one in ``fmt`` (``attrs["clean"]``, ``attrs["clean_<metric>"]``).
    ``fmt=None``: each parameter's own dtype (FP32, FP16 or BF16, see :func:`~.plan.census_format`).
    """
    m = resolve_metric(metric)
    codec = Identity() if codec is None else codec
    chosen = select_params(model, params)
    fmt = census_format(chosen, fmt)
    positions = resolve_bits(bits, codec.width(fmt), codec.fields(fmt))
    batches = materialize(data, device=model_device(model))
    store = Store(model, fmt, codec, params)
    with store.corrupted(BitErrorRate(0.0)):
        clean = score(model, batches, m, output)
    plan = [(name, int(i), b) for name, idx in weight_plan(chosen, n_weights, seed) for i in idx for b in positions]
    rows = []
    lookup = dict(chosen)
    for name, i, b in progress_bar(plan, desc="naive census", progress=progress):
        value = lookup[name].detach().reshape(-1)[i].item()
        with store.corrupted(SingleBitFlip(name, i, b)):
            flipped = lookup[name].detach().reshape(-1)[i].item()
            acc = score(model, batches, m, output)
        rows.append(
            {
                "param": name,
                "index": i,
                "bit": b,
                "value": value,
                "flipped": flipped,
                m.name: acc,
                "rad": relative_drop(clean, acc, m),
            }
        )
    df = pd.DataFrame(rows)
    df.attrs.update({"metric": m.name, "higher_is_better": m.higher_is_better, "clean": clean})
    df.attrs[f"clean_{m.name}"] = clean
    return df
