"""The naive single-bit census (flip, full forward, restore, one flip at a time): the reference that
the fast census is checked against, row for row and float for float.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import pandas as pd
from torch import nn

from ...codecs.base import Codec, Identity
from ...evaluate import Batches, Output, materialize, model_device, score
from ...faults import BitErrorRate, SingleBitFlip
from ...formats import BitSelection, Format, resolve_bits
from ...inject import Store
from ...metrics import Metric, MetricSpec, frame_attrs, relative_drop, resolve_metric
from ...params import ParamSelection, select_params
from ...validate import check_int
from ..runner import Item, Row
from ..runner import run as run_items
from .checkpoint import CensusSaved, CheckpointFile, NewChunks, describe, fingerprint
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
    executor: object = None,
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
    called after each chunk is saved. ``executor`` scores the chunks elsewhere (a ``concurrent.futures``
    pool or a ``dask.distributed.Client``, :mod:`bitlab.campaigns.runner`); the frame is the same.
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
    ckpt = None
    if checkpoint is not None:
        scoring = f"naive|{describe(m)}|output={describe(output)}|chunk={chunk}"
        ckpt = CheckpointFile(checkpoint, fingerprint(model, chosen, weights, positions, fmt, codec, batches, scoring))
    flips = {name: [(int(i), b) for i in idx for b in positions] for name, idx in weights}
    chunks = [(name, s, chunk) for name, _ in weights for s in range(0, len(flips[name]), chunk)]
    items: list[Item] = list(chunks)
    sizes: dict[Item, int] = {cid: len(flips[cid[0]][cid[1] : cid[1] + chunk]) for cid in chunks}
    counted = NewChunks(sizes, on_chunk)
    work = NaiveChunks(model, batches, fmt, codec, [n for n, _ in chosen], m, output, flips, store)
    saved = None if ckpt is None else CensusSaved(ckpt, sizes)
    results, _ = run_items(
        work, [items], executor, saved, progress, "naive census", size=sizes.__getitem__, after=counted
    )
    rows = []
    lookup = dict(chosen)
    for (name, s, _), res in zip(chunks, results):
        for (i, b), acc in zip(flips[name][s : s + chunk], res["accuracies"]):
            value = lookup[name].detach().reshape(-1)[i].item()
            with store.corrupted(SingleBitFlip(name, i, b)):
                flipped = lookup[name].detach().reshape(-1)[i].item()
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
    df.attrs.update(frame_attrs(m, clean))
    df.attrs["from_checkpoint"] = counted.reused
    return df


@dataclass
class NaiveChunks:
    """The naive census's chunks as the runner's work: item ``(parameter, start, chunk)`` is flips
    ``flips[parameter][start : start + chunk]``, each flipped, scored with a full forward and restored;
    its row ``{"accuracies": [...]}``. The store is rebuilt where the chunks run."""

    model: nn.Module
    batches: Batches
    fmt: Format
    codec: Codec
    params: list[str]
    metric: Metric
    output: Output
    flips: dict[str, list[tuple[int, int]]]
    store: Store | None = field(default=None, repr=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "store"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, store=None)

    def __call__(self, item: Item) -> Row:
        name, start, chunk = item
        assert isinstance(name, str) and isinstance(start, int) and isinstance(chunk, int)
        if self.store is None:
            self.store = Store(self.model, self.fmt, self.codec, self.params)
        accs = []
        for i, b in self.flips[name][start : start + chunk]:
            with self.store.corrupted(SingleBitFlip(name, i, b)):
                accs.append(score(self.model, self.batches, self.metric, self.output))
        return {"accuracies": accs}
