"""Fault campaigns: run the store -> fault -> read -> evaluate pipeline many times and return tidy
pandas DataFrames (one row per trial), ready for seaborn.

* :func:`ber_sweep` -- accuracy at a range of bit error rates, many trials each (Qin et al. 2017).
* :func:`summarize` -- mean and 95% confidence interval per group.
* :func:`tolerable_ber` -- the highest BER whose mean accuracy stays within ``drop`` of clean.
* :func:`naive_bit_census` -- flip single bits one at a time (flip, full forward, restore):
  the reference that faster censuses are checked against.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from .faults import BitErrorRate, Fault, SingleBitFlip
from .formats import FP32, Format, resolve_bits
from .inject import ParamSelection, Store, select_params
from .progress import bar as progress_bar, enabled as show_progress
from .protect import Codec, Identity
from .train import correct

__all__ = ["materialize", "batch_accuracy", "ber_sweep", "summarize", "tolerable_ber", "naive_bit_census",
           "show_progress"]

Batches = list[tuple[Tensor, Tensor]]


def materialize(data: object, batch_size: int = 2048) -> Batches:
    """The data as a list of ``(x, y)`` tensor batches, built once and reused by every trial.
    Accepts a Dataset (e.g. a TensorDataset), a DataLoader, or a list of batches."""
    if isinstance(data, list) and all(isinstance(b, tuple) and len(b) == 2 for b in data):
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        x, y = data.tensors[0], data.tensors[1]
        return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size)
    if isinstance(data, Iterable):
        batches = [(b[0], b[1]) for b in data]
        if not batches:
            raise ValueError("data: it holds no batch; pass a non-empty Dataset or DataLoader")
        return batches
    raise TypeError(f"data: expected a Dataset, a DataLoader or a list of (x, y) batches, "
                    f"got {type(data).__name__}")


@torch.no_grad()
def batch_accuracy(model: nn.Module, batches: Batches) -> float:
    """Fraction of correct predictions; a sample whose logits hold NaN or Inf counts as wrong."""
    was_training = model.training
    model.eval()
    try:
        hits = total = 0
        for x, y in batches:
            hits += int(correct(model(x), y).sum())
            total += len(y)
    finally:
        model.train(was_training)
    return hits / total


def _fault_for(fault: Callable[[float], Fault] | None, ber: float) -> Fault:
    return BitErrorRate(ber) if fault is None else fault(ber)


def ber_sweep(model: nn.Module, data: object, bers: Sequence[float], trials: int = 20, fmt: Format = FP32,
              codec: Codec | None = None, params: ParamSelection = None, seed: int = 0,
              fault: Callable[[float], Fault] | None = None, progress: bool | None = None,
              label: str | None = None, stop_at: float | None = None) -> pd.DataFrame:
    """Accuracy of ``model`` on ``data`` with its weights stored in ``fmt`` (+ ``codec``) under i.i.d.
    bit errors at each rate in ``bers``, ``trials`` independent draws each (Qin et al. 2017, Fig. 1 style).

    Returns one row per trial: ``ber, trial, flips, accuracy, format, codec, seed`` (+ ``model`` if
    ``label`` is given). ``df.attrs["clean_accuracy"]`` holds the fault-free accuracy in that store
    (which differs from the float model for lossy formats). ``fault`` maps a rate to a fault model
    (default :class:`~bitlab.faults.BitErrorRate`). ``stop_at`` ends the sweep early: once the mean
    accuracy at a rate is at or below it (e.g. chance level), the higher rates are not run (they have
    no rows), which saves most of the time of sweeps that go far past the breaking point.
    """
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials: {trials!r}; allowed ints >= 1")
    bers = [float(b) for b in bers]
    if not bers:
        raise ValueError("bers: empty; give at least one bit error rate in [0, 1]")
    for b in bers:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"bers: {b} is not a probability; allowed values are in [0, 1]")
    codec = Identity() if codec is None else codec
    batches = materialize(data)
    g = torch.Generator().manual_seed(seed)
    store = Store(model, fmt, codec, params)
    with store.corrupted(BitErrorRate(0.0)):
        clean = batch_accuracy(model, batches)
    rows = []
    bar = progress_bar(total=len(bers) * trials, desc=f"ber_sweep {fmt.name}/{codec.name}", progress=progress)
    for ber in bers:
        accs = []
        for t in range(trials):
            with store.corrupted(_fault_for(fault, ber), generator=g) as r:
                acc = batch_accuracy(model, batches)
            rows.append({"ber": ber, "trial": t, "flips": r.flips, "accuracy": acc, "format": fmt.name,
                         "codec": codec.name, "seed": seed})
            accs.append(acc)
            bar.update()
        if stop_at is not None and sum(accs) / len(accs) <= stop_at:
            break
    bar.close()
    df = pd.DataFrame(rows)
    if label is not None:
        df["model"] = label
    df.attrs["clean_accuracy"] = clean
    return df


def summarize(df: pd.DataFrame, by: Sequence[str] | None = None, value: str = "accuracy",
              level: float = 0.95) -> pd.DataFrame:
    """Mean, standard deviation, count and a Student-t confidence interval of ``value`` per group.

    ``by`` defaults to the descriptive columns present among ``model, format, codec, ber``."""
    from scipy import stats

    if by is None:
        by = [c for c in ("model", "format", "codec", "ber") if c in df.columns]
    missing = [c for c in list(by) + [value] if c not in df.columns]
    if missing:
        raise ValueError(f"by/value: columns {missing} are not in the frame; columns are {list(df.columns)}")
    g = df.groupby(list(by), sort=True)[value]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    half = [stats.t.ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n) if n > 1 else float("nan")
            for n, s in zip(out["n"], out["std"].fillna(0.0))]
    out["ci_low"] = out["mean"] - np.asarray(half)
    out["ci_high"] = out["mean"] + np.asarray(half)
    return out


def tolerable_ber(df: pd.DataFrame, clean: float | None = None, drop: float = 0.01) -> float:
    """The highest bit error rate whose mean accuracy stays within ``drop`` (absolute, 0.01 = one
    point) of ``clean`` (default ``df.attrs["clean_accuracy"]``), from a one-configuration
    :func:`ber_sweep` frame. Interpolated linearly in log10(BER) between the last grid point that
    passes and the first that fails; ``nan`` if the smallest rate already fails, the largest rate
    if none fails (a lower bound)."""
    if clean is None:
        clean = df.attrs.get("clean_accuracy")
        if clean is None:
            raise ValueError("clean: not given and the frame has no attrs['clean_accuracy']")
    means = df[df["ber"] > 0].groupby("ber")["accuracy"].mean().sort_index()
    threshold = clean - drop
    ok = (means >= threshold).to_numpy()
    if ok.all():
        return float(means.index[-1])
    j = int(np.argmin(ok))
    if j == 0:
        return float("nan")
    b0, b1 = math.log10(means.index[j - 1]), math.log10(means.index[j])
    m0, m1 = means.iloc[j - 1], means.iloc[j]
    frac = (m0 - threshold) / (m0 - m1) if m0 != m1 else 0.0
    return float(10 ** (b0 + frac * (b1 - b0)))


def naive_bit_census(model: nn.Module, data: object, fmt: Format = FP32, bits: object = "all",
                     params: ParamSelection = None, n_weights: int | None = None, seed: int = 0,
                     codec: Codec | None = None, progress: bool | None = None) -> pd.DataFrame:
    """Flip every selected bit of every selected weight, one at a time: flip, full forward, restore.

    Returns one row per (param, index, bit): ``value`` (the stored weight), ``flipped`` (what it reads
    back as), ``accuracy`` and ``rad`` = (acc_clean - acc_flipped) / acc_clean, the relative accuracy
    drop of Pranto et al. 2025. ``n_weights`` samples that many weights per parameter (without
    replacement, seeded) instead of all of them. ``acc_clean`` is the fault-free accuracy in ``fmt``.
    """
    codec = Identity() if codec is None else codec
    chosen = select_params(model, params)
    positions = resolve_bits(bits, codec.width(fmt), codec.fields(fmt))
    batches = materialize(data)
    store = Store(model, fmt, codec, params)
    with store.corrupted(BitErrorRate(0.0)):
        clean = batch_accuracy(model, batches)
    from .census import weight_plan  # the fast census visits the same weights, drawn the same way

    plan = [(name, int(i), b) for name, idx in weight_plan(chosen, n_weights, seed)
            for i in idx for b in positions]
    rows = []
    lookup = dict(chosen)
    for name, i, b in progress_bar(plan, desc="naive census", progress=progress):
        value = lookup[name].detach().reshape(-1)[i].item()
        with store.corrupted(SingleBitFlip(name, i, b)):
            flipped = lookup[name].detach().reshape(-1)[i].item()
            acc = batch_accuracy(model, batches)
        rows.append({"param": name, "index": i, "bit": b, "value": value, "flipped": flipped,
                     "accuracy": acc, "rad": (clean - acc) / clean if clean > 0 else float("nan")})
    df = pd.DataFrame(rows)
    df.attrs["clean_accuracy"] = clean
    return df
from .census import bit_census  # noqa: E402,F401  (the fast exact census; see bitlab.census)
from .act_campaign import activation_sweep, resilience_auc  # noqa: E402,F401  (activation faults; bitlab.act_campaign)
