"""BER sweeps: run the store -> fault -> read -> evaluate pipeline many times and return tidy
pandas DataFrames (one row per trial), ready for seaborn.

* :func:`ber_sweep` -- a metric (accuracy by default) at a range of bit error rates, many trials each
  (Qin et al. 2017).
* :func:`summarize` -- mean and 95% confidence interval per group.
* :func:`tolerable_ber` -- the highest BER whose mean metric stays within ``drop`` of clean.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats
from torch import nn

from ..codecs.base import Codec, Identity
from ..evaluate import Batches, Output, materialize, model_device, score
from ..faults import BitErrorRate, Fault
from ..formats import Format
from ..inject import Store
from ..metrics import (
    Metric,
    MetricSpec,
    frame_attrs,
    frame_metric,
    relative_drop,
    resolve_metric,
    signed,
    signed_mean,
)
from ..params import ParamSelection, select_tensors, store_format
from ..validate import check_int, check_number
from .journal import Journal, campaign_key, configuration, describe
from .prefix import ChainPrefix, chain_prefix
from .runner import Item, Row, Rows, Turns
from .runner import run as run_items
from .seeds import trial_generator

__all__ = [
    "ber_sweep",
    "summarize",
    "tolerable_ber",
    "BerTrials",
    "ber_trials",
    "check_sweep",
    "trial_path",
    "FORMAT",
    "VERSION",
]

#: the checkpoint format of the trial campaigns (BER sweeps, ``sweep_t``, activation sweeps)
FORMAT = "bitlab-campaign-checkpoint"
VERSION = 1


def _fault_for(fault: Callable[[float], Fault] | None, ber: float) -> Fault:
    return BitErrorRate(ber) if fault is None else fault(ber)


@dataclass
class BerTrials:
    """The trials of BER sweeps, the runner's work (:mod:`.runner`): item ``(variant, ber, trial)`` is one
    draw of ``faults[ber]`` from ``trial_generator(seed, "ber", ber, trial)`` into the store of
    ``codecs[variant]``, scored by ``metric``; ``extra[variant]`` holds columns added to its rows. The
    stores are built where the items run (once per copy of the work) and are never pickled."""

    model: nn.Module
    batches: Batches
    fmt: Format
    codecs: dict[str, Codec]
    params: ParamSelection
    faults: dict[float, Fault]
    metric: Metric
    output: Output
    seed: int
    clean: dict[str, float]
    extra: dict[str, dict[str, object]] = field(default_factory=dict)
    stores: dict[str, Store] = field(default_factory=dict, repr=False)
    prefixes: dict[str, ChainPrefix | str] = field(default_factory=dict, repr=False)
    turns: Turns = field(default_factory=Turns, repr=False)

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("stores", "prefixes")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, stores={}, prefixes={})

    def store(self, variant: str) -> Store:
        if variant not in self.stores:
            self.stores[variant] = Store(self.model, self.fmt, self.codecs[variant], self.params)
        return self.stores[variant]

    def prefix(self, variant: str) -> ChainPrefix | str:
        """The chain's cached clean inputs in the store of ``variant`` (:mod:`.prefix`), built where the
        items run, or why a trial runs the whole forward."""
        if variant not in self.prefixes:
            self.prefixes[variant] = chain_prefix(self.model, self.batches, self.store(variant))
        return self.prefixes[variant]

    def __call__(self, item: Item) -> Row:
        variant, ber, t = item
        assert isinstance(variant, str) and isinstance(ber, float) and isinstance(t, int)
        m = self.metric
        with self.turns.lock:
            store, chain = self.store(variant), self.prefix(variant)
            with store.corrupted(self.faults[ber], generator=trial_generator(self.seed, "ber", ber, t)) as r:
                # no flip: the weights are the fault-free store's, bit for bit, so the value is the clean one
                if r.flips == 0:
                    value = self.clean[variant]
                elif isinstance(chain, ChainPrefix):  # the children from the first hit one, from its clean input
                    value = chain.score(self.model, self.batches, m, self.output, chain.first_hit(r))
                else:
                    value = score(self.model, self.batches, m, self.output)
        row = {
            "ber": ber,
            "trial": t,
            "flips": r.flips,
            m.name: value,
            "rad": relative_drop(self.clean[variant], value, m),
            "format": self.fmt.name,
            "codec": self.codecs[variant].name,
            "seed": self.seed,
        }
        row.update(self.extra.get(variant, {}))
        return row


def check_sweep(trials: object, bers: Sequence[float]) -> list[float]:
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials: {trials!r}; allowed ints >= 1")
    out = [float(b) for b in bers]
    if not out:
        raise ValueError("bers: empty; give at least one bit error rate in [0, 1]")
    for b in out:
        if not 0.0 <= b <= 1.0:
            raise ValueError(f"bers: {b} is not a probability; allowed values are in [0, 1]")
    return out


def ber_trials(
    model: nn.Module,
    data: object,
    bers: Sequence[float],
    fmt: Format,
    codecs: dict[str, Codec | None],
    params: ParamSelection,
    seed: int,
    fault: Callable[[float], Fault] | None,
    metric: Metric,
    output: Output,
) -> BerTrials:
    """The work of a BER campaign, with the fault-free value of every variant measured here, on the
    caller's model (its stores kept for in-process runs). A predicate ``params`` is resolved to the
    names it picks, so that the work can travel to other processes."""
    seed = check_int("seed", seed, 0)  # before the clean pass and before anything travels
    if callable(params):
        params = [n for n, _ in select_tensors(model, params)]
    batches = materialize(data, device=model_device(model))
    work = BerTrials(
        model,
        batches,
        fmt,
        {v: Identity() if c is None else c for v, c in codecs.items()},
        params,
        {b: _fault_for(fault, b) for b in bers},
        metric,
        output,
        seed,
        {},
    )
    for variant in work.codecs:
        with work.store(variant).corrupted(BitErrorRate(0.0)):
            work.clean[variant] = score(model, batches, metric, output)
    return work


def ber_journal(
    checkpoint: str | os.PathLike[str] | None, work: BerTrials, kind: str, codecs: object, fault: object
) -> Rows | None:
    """The checkpoint of a BER campaign, keyed by everything that changes a row except the grid (rates,
    trials, variants), so that a longer or wider sweep resumes from a shorter one."""
    if checkpoint is None:
        return None
    settings = (
        kind,
        configuration(work.fmt),
        codecs,
        describe(work.params),
        describe(fault),
        describe(work.metric),
        describe(work.output),
        work.seed,
    )
    key = campaign_key(work.model, work.batches, settings)
    what = f"{kind} (model, data, format, codec, params, fault or metric)"
    return Rows(Journal(checkpoint, FORMAT, VERSION, key, what))


def ber_sweep(
    model: nn.Module,
    data: object,
    bers: Sequence[float],
    trials: int = 20,
    fmt: Format | None = None,
    codec: Codec | None = None,
    params: ParamSelection = None,
    seed: int = 0,
    fault: Callable[[float], Fault] | None = None,
    progress: bool | None = None,
    label: str | None = None,
    stop_at: float | None = None,
    metric: MetricSpec = "accuracy",
    output: Output = None,
    executor: object = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """``metric`` (accuracy by default) of ``model`` on ``data`` with its weights stored in ``fmt`` (+
    ``codec``) under i.i.d. bit errors at each rate in ``bers``, ``trials`` independent draws each (Qin et
    al. 2017, Fig. 1 style). ``output`` picks the scored tensor from a tuple/dict output
    (:func:`bitlab.evaluate.pick`); batches may hold tensor, tuple or dict inputs.

    Returns one row per trial: ``ber, trial, flips, <metric>, rad, format, codec, seed`` (+ ``model`` if
    ``label`` is given), where ``<metric>`` is the metric's name (``accuracy``, ``mse``, ...) and ``rad``
    its relative drop from the fault-free value (:func:`bitlab.metrics.relative_drop`; positive is worse).
    ``df.attrs`` holds ``metric``, ``clean`` and ``clean_<metric>`` (e.g. ``clean_accuracy``): the
    fault-free value in that store (which differs from the float model for lossy formats), and
    ``from_checkpoint``. ``fault`` maps a rate to a fault model (default
    :class:`~bitlab.faults.BitErrorRate`). ``stop_at`` ends the sweep early: once the mean metric at a
    rate is at or past it on the worse side (e.g. chance accuracy; a NaN mean counts as past it), the
    higher rates are not run (they have no rows), which saves most of the time of sweeps that go far past
    the breaking point.

    Randomness is counter-based (:mod:`bitlab.campaigns.seeds`): trial ``t`` at rate ``ber`` draws its
    faults from ``trial_generator(seed, "ber", ber, t)``, so a rate run alone, a subset of trials or a
    longer sweep (``trials=20`` after ``trials=6``) gives the same rows for the same (rate, trial).

    ``executor`` runs the trials elsewhere: a ``concurrent.futures`` pool or a ``dask.distributed.Client``
    (see :mod:`bitlab.campaigns.runner`); the frame is the same, bit for bit. ``checkpoint`` is a file
    where every finished trial is saved (:mod:`bitlab.campaigns.journal`); a rerun, a longer sweep or one
    resumed after a crash reuses them.
    """
    bers = check_sweep(trials, bers)
    m = resolve_metric(metric)
    fmt = store_format(model, fmt, params)  # None: the selected tensors' own (one) format
    work = ber_trials(model, data, bers, fmt, {"": codec}, params, seed, fault, m, output)
    journal = ber_journal(checkpoint, work, "ber_sweep", configuration(work.codecs[""]), fault)
    higher = m.higher_is_better

    def past(rows: list[Row]) -> bool:
        # signed(): a NaN mean (an MSE of a model whose outputs hold NaN) is past any stop
        mean = sum(r[m.name] for r in rows) / len(rows)
        return stop_at is not None and signed(mean, higher) <= signed(stop_at, higher)

    # one stage per rate only where stop_at needs each rate's mean before the next (fewer, larger tasks)
    stages = [[("", b, t) for t in range(trials)] for b in bers]
    if stop_at is None:
        stages = [[item for stage in stages for item in stage]]
    desc = f"ber_sweep {fmt.name}/{work.codecs[''].name}"
    rows, reused = run_items(work, stages, executor, journal, progress, desc, stop=past)
    df = pd.DataFrame(rows)
    if label is not None:
        df["model"] = label
    df.attrs.update(frame_attrs(m, work.clean[""]))
    df.attrs["from_checkpoint"] = reused
    df.attrs["trial path"] = trial_path(work, "")
    return df


def trial_path(work: BerTrials, variant: str) -> str:
    """How the trials of ``variant`` in this process ran: from the first hit child of a chain, or the whole
    forward and why (:mod:`.prefix`); "not run here" where every trial ran elsewhere or came from a checkpoint."""
    chain = work.prefixes.get(variant)
    if chain is None:
        return "not run here"
    return "chain from the first hit child" if isinstance(chain, ChainPrefix) else f"whole forward: {chain}"


def summarize(
    df: pd.DataFrame, by: Sequence[str] | None = None, value: str | None = None, level: float = 0.95
) -> pd.DataFrame:
    """Mean, standard deviation, count and a Student-t confidence interval of ``value`` per group, over
    the finite-or-infinite values; ``nan`` counts the NaN trials left out (e.g. an MSE of NaN outputs).

    ``value`` defaults to the frame's metric (``df.attrs["metric"]``, else ``accuracy``); ``by`` to the
    descriptive columns present among ``model, format, codec, ber``."""
    level = check_number("level", level, 0.0, 1.0, open_lo=True, open_hi=True)
    if value is None:
        value = frame_metric(df.attrs)[0]
    if by is None:
        by = [c for c in ("model", "format", "codec", "ber") if c in df.columns]
    missing = [c for c in list(by) + [value] if c not in df.columns]
    if missing:
        raise ValueError(f"by/value: columns {missing} are not in the frame; columns are {list(df.columns)}")
    g = df.groupby(list(by), sort=True)[value]
    out = g.agg(mean="mean", std="std", n="count").reset_index()
    out["nan"] = g.apply(lambda v: int(v.isna().sum())).to_numpy()  # trials left out of mean/std/n
    half = [
        stats.t.ppf(0.5 + level / 2, n - 1) * s / math.sqrt(n) if n > 1 else float("nan")
        for n, s in zip(out["n"], out["std"].fillna(0.0))
    ]
    out["ci_low"] = out["mean"] - np.asarray(half)
    out["ci_high"] = out["mean"] + np.asarray(half)
    return out


def tolerable_ber(df: pd.DataFrame, clean: float | None = None, drop: float = 0.01) -> float:
    """The highest bit error rate whose mean metric stays within ``drop`` (absolute: 0.01 = one point of
    accuracy) of ``clean`` (default ``df.attrs["clean"]``) on the worse side, from a one-configuration
    :func:`ber_sweep` frame (the metric and its direction from ``df.attrs``; accuracy if absent).
    Interpolated linearly in log10(BER) between the last grid point that passes and the first that
    fails; ``nan`` if the smallest rate already fails, the largest rate if none fails (a lower bound)."""
    name, higher = frame_metric(df.attrs)
    if clean is None:
        clean = df.attrs.get("clean", df.attrs.get(f"clean_{name}"))
        if clean is None:
            raise ValueError(f"clean: not given and the frame has no attrs['clean'] (nor attrs['clean_{name}'])")
    if name not in df.columns:
        raise ValueError(f"df: the frame has no column {name!r} (its metric); columns are {list(df.columns)}")
    # signed so that higher is better: one rule covers accuracy and errors alike; a rate with a NaN trial
    # (a model whose outputs hold NaN) fails, as if its mean were the worst possible
    means = df[df["ber"] > 0].groupby("ber")[name].apply(lambda v: signed_mean(v, higher)).sort_index()
    threshold = (clean if higher else -clean) - drop
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
