"""Choosing the weight-scaling constant ``t`` (Fuengfusin 2024) on held-out data: a BER sweep per
``t`` under :class:`~bitlab.codecs.WeightScaling`, every ``t`` seeing the same fault draws.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pandas as pd
from torch import nn

from ..codecs.base import Codec
from ..codecs.scaling import WeightScaling
from ..evaluate import Output
from ..formats import Format
from ..metrics import MetricSpec, frame_metric, resolve_metric, signed_mean
from ..params import ParamSelection, store_format
from .runner import run as run_items
from .sweep import ber_journal, ber_trials, check_sweep

__all__ = ["sweep_t", "best_t"]


def sweep_t(
    model: nn.Module,
    val_data: object,
    ts: Sequence[float | None],
    fmt: Format | None,
    ber: float | Sequence[float],
    trials: int = 20,
    seed: int = 0,
    params: ParamSelection = None,
    pow2: bool = False,
    progress: bool | None = None,
    metric: MetricSpec = "accuracy",
    output: Output = None,
    executor: object = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """``metric`` (accuracy by default; ``output`` picks the scored tensor) on held-out ``val_data`` with
    weights stored in ``fmt`` under :class:`WeightScaling` for each ``t`` in ``ts`` (``None`` means no
    scaling), at bit error rate(s) ``ber``, ``trials`` draws each. Every ``t`` sees the same fault draws
    (same ``seed``, the keys of :func:`~bitlab.campaigns.sweep.ber_sweep`), so differences come from ``t``.

    Returns one row per trial (the :func:`~bitlab.campaigns.sweep.ber_sweep` columns plus ``t`` and
    ``clean_<metric>``, e.g. ``clean_accuracy``: the fault-free value with that ``t``); ``df.attrs["best_t"]`` is
    :func:`best_t` of the frame. ``t`` values that do not fit the format are an error (see ``max_t``).
    ``executor`` and ``checkpoint`` as in :func:`~bitlab.campaigns.sweep.ber_sweep` (every ``t`` and
    rate in one campaign).
    """
    m = resolve_metric(metric)
    fmt = store_format(model, fmt, params)  # None: the selected tensors' own (one) format
    bers = check_sweep(trials, [ber] if isinstance(ber, (int, float)) else ber)
    if not ts:
        raise ValueError("ts: empty; give at least one t > 0 (or None for no scaling)")
    codecs: dict[str, Codec | None] = {}
    for t in ts:
        codec = None if t is None else WeightScaling(t, pow2=pow2)
        if codec is not None:
            codec.t_for(fmt)
        codecs[f"t={t!r}"] = codec
    work = ber_trials(model, val_data, bers, fmt, codecs, params, seed, None, m, output)
    for t, variant in zip(ts, codecs):
        work.extra[variant] = {"t": float("nan") if t is None else float(t), f"clean_{m.name}": work.clean[variant]}
    journal = ber_journal(checkpoint, work, "sweep_t", f"WeightScaling(pow2={pow2})", None)
    items = [(v, b, i) for v in codecs for b in bers for i in range(trials)]
    rows, reused = run_items(work, [items], executor, journal, progress, f"sweep_t {fmt.name}")
    out = pd.DataFrame(rows)
    out.attrs.update({"metric": m.name, "higher_is_better": m.higher_is_better})  # best_t reads them
    out.attrs["best_t"] = best_t(out)
    out.attrs["from_checkpoint"] = reused
    return out


def best_t(df: pd.DataFrame) -> float:
    """The ``t`` with the best mean metric in a :func:`sweep_t` frame (ties: the better fault-free value,
    then the smaller ``t``; a ``t`` with a NaN trial ranks last); the metric and its direction from
    ``df.attrs`` (accuracy if absent).
    ``nan`` means no scaling was best."""
    name, higher = frame_metric(df.attrs)
    # signed so that higher is better; a t with a NaN trial (broken outputs) ranks last
    g = df.groupby("t", dropna=False).agg(
        acc=(name, lambda v: signed_mean(v, higher)), clean=(f"clean_{name}", "first")
    )
    g = g.reset_index()
    g["clean"] = g["clean"] if higher else -g["clean"]
    g["neg_t"] = -g["t"].fillna(0.0)
    top = g.sort_values(["acc", "clean", "neg_t"], ascending=False).iloc[0]
    return float(top["t"])
