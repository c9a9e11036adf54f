"""The naive single-bit census (flip, full forward, restore, one flip at a time): the reference that
the fast census is checked against, row for row and float for float.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pandas as pd
from torch import nn

from ...codecs.base import Codec, Identity
from ...evaluate import Output, materialize, model_device, score
from ...faults import BitErrorRate, SingleBitFlip
from ...formats import BitSelection, Format, resolve_bits
from ...inject import Store
from ...metrics import MetricSpec, frame_attrs, relative_drop, resolve_metric
from ...params import ParamSelection, select_params
from ...progress import bar as progress_bar
from ...validate import check_int
from .checkpoint import CheckpointFile, describe, fingerprint
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
    checkpoint: str | os.PathLike[str] | None = None,
    on_chunk: Callable[[int], None] | None = None,
    chunk: int = 64,
) -> pd.DataFrame:
    """Flip every selected bit of every selected weight, one at a time: flip, full forward, restore.

    Returns one row per (param, index, bit): ``value`` (the stored weight), ``flipped`` (what it reads
    back as), the metric (column ``accuracy`` by default, else the metric's name) and ``rad`` =
    (acc_clean - acc_flipped) / acc_clean, the relative accuracy drop of Pranto et al. 2025
    (:func:`bitlab.metrics.relative_drop` for other metrics: positive is worse). ``n_weights`` samples
    that many weights per parameter (without replacement, seeded) instead of all of them. The clean
    value is the fault-free one in ``fmt`` (``attrs["clean"]``, ``attrs["clean_<metric>"]``).
    ``fmt=None``: each parameter's own dtype (FP32, FP16 or BF16, see :func:`~.plan.census_format`).
    ``checkpoint``: a file where every ``chunk`` finished flips of a parameter are saved (as in
    :func:`~.engine.bit_census`; a rerun with the same arguments skips them), ``on_chunk(n_done)`` is
    called after each chunk is saved.
    """
    check_int("chunk", chunk, 1)
    if on_chunk is not None and not callable(on_chunk):
        raise TypeError(f"on_chunk: expected None or a callable (chunks done) -> None, got {type(on_chunk).__name__}")
    m = resolve_metric(metric)
    codec = Identity() if codec is None else codec
    chosen = select_params(model, params)
    fmt = census_format(chosen, fmt)
    positions = resolve_bits(bits, codec.width(fmt), codec.fields(fmt))
    batches = materialize(data, device=model_device(model))
    store = Store(model, fmt, codec, params)
    with store.corrupted(BitErrorRate(0.0)):
        clean = score(model, batches, m, output)
    weights = weight_plan(chosen, n_weights, seed)
    ckpt, done = None, {}
    if checkpoint is not None:
        scoring = f"naive|{describe(m)}|output={describe(output)}|chunk={chunk}"
        ckpt = CheckpointFile(checkpoint, fingerprint(model, chosen, weights, positions, fmt, codec, batches, scoring))
        done = ckpt.load()
    rows = []
    lookup = dict(chosen)
    n_new = reused = 0
    bar = progress_bar(
        total=sum(len(idx) for _, idx in weights) * len(positions), desc="naive census", progress=progress
    )
    for name, idx in weights:
        flips = [(int(i), b) for i in idx for b in positions]
        for s in range(0, len(flips), chunk):
            part = flips[s : s + chunk]
            saved = done.get((name, s, chunk))
            if saved is not None and len(saved) != len(part):
                raise ValueError(f"checkpoint {checkpoint!r}: chunk {(name, s, chunk)} holds the wrong number of flips")
            values = []
            reused += 0 if saved is None else len(part)
            for k, (i, b) in enumerate(part):
                value = lookup[name].detach().reshape(-1)[i].item()
                with store.corrupted(SingleBitFlip(name, i, b)):
                    flipped = lookup[name].detach().reshape(-1)[i].item()
                    acc = saved[k] if saved is not None else score(model, batches, m, output)
                values.append(acc)
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
            bar.update(len(part))
            if saved is None:
                if ckpt is not None:
                    ckpt.append((name, s, chunk), values)
                n_new += 1
                if on_chunk is not None:
                    on_chunk(n_new)
    bar.close()
    df = pd.DataFrame(rows)
    df.attrs.update(frame_attrs(m, clean))
    df.attrs["from_checkpoint"] = reused
    return df
