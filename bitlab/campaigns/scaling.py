"""Choosing the weight-scaling constant ``t`` (Fuengfusin 2024) on held-out data: a BER sweep per
``t`` under :class:`~bitlab.codecs.WeightScaling`, every ``t`` seeing the same fault draws.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from ..codecs.scaling import WeightScaling
from ..evaluate import Output
from ..formats import Format
from ..metrics import MetricSpec, frame_metric, resolve_metric, signed_mean
from ..params import ParamSelection, store_format
from .sweep import ber_sweep

__all__ = ["sweep_t", "best_t"]


def sweep_t(
    model: nn.Module,
    val_data: object,
    ts: Sequence[float],
    fmt: Format | None,
    ber: float | Sequence[float],
    trials: int = 20,
    seed: int = 0,
    params: ParamSelection = None,
    pow2: bool = False,
    progress: bool | None = None,
    metric: MetricSpec = "accuracy",
    output: Output = None,
) -> pd.DataFrame:
    """``metric`` (accuracy by default; ``output`` picks the scored tensor) on held-out ``val_data`` with
    weights stored in ``fmt`` under :class:`WeightScaling` for each ``t`` in ``ts`` (``None`` means no
    scaling), at bit error rate(s) ``ber``, ``trials``
    draws each. Every ``t`` sees the same fault draws (same ``seed``), so differences come from ``t``.

    Returns one row per trial (the :func:`~bitlab.campaigns.sweep.ber_sweep` columns plus ``t`` and
    ``clean_<metric>``, e.g. ``clean_accuracy``: the fault-free value with that ``t``); ``df.attrs["best_t"]`` is
    :func:`best_t` of the frame. ``t`` values that do not fit the format are an error (see ``max_t``).
    """
    m = resolve_metric(metric)
    fmt = store_format(model, fmt, params)  # None: the selected tensors' own (one) format
    bers = [float(ber)] if isinstance(ber, (int, float)) else [float(b) for b in ber]
    if not ts:
        raise ValueError("ts: empty; give at least one t > 0 (or None for no scaling)")
    frames = []
    for t in ts:
        codec = None if t is None else WeightScaling(t, pow2=pow2)
        if codec is not None:
            codec.t_for(fmt)
        df = ber_sweep(
            model,
            val_data,
            bers,
            trials=trials,
            fmt=fmt,
            codec=codec,
            params=params,
            seed=seed,
            progress=progress,
            metric=m,
            output=output,
        )
        df["t"] = float("nan") if t is None else float(t)
        df[f"clean_{m.name}"] = df.attrs["clean"]
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update({"metric": m.name, "higher_is_better": m.higher_is_better})  # best_t reads them
    out.attrs["best_t"] = best_t(out)
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
