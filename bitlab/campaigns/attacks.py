"""Repeated bit-flip attacks (Rakin, He, Fan 2019 report the flips to chance over several runs, each
with its own attack batch): :func:`bit_flip_attacks` runs :func:`~.attack.bit_flip_attack` once per
seed as the campaign runner's items (:mod:`.runner`), on any executor, with a checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from ..codecs.base import Codec
from ..evaluate import materialize, model_device
from ..formats import Format
from ..validate import check_int
from .attack import bit_flip_attack
from .journal import Journal, campaign_key, configuration, describe
from .runner import Item, Row, Rows, Turns
from .runner import run as run_items

__all__ = ["bit_flip_attacks"]

FORMAT = "bitlab-attack-checkpoint"
VERSION = 1

#: the settings that are not passed through to bit_flip_attack
_OWN = ("seed", "progress", "data", "eval_data", "model")


@dataclass
class AttackRuns:
    """The runner's work: item ``(seed,)`` is one attack with that seed; its row holds the attack's
    flips (a list of records), why it stopped, and the clean values."""

    model: nn.Module
    data: object
    eval_data: object | None
    settings: dict[str, Any]
    turns: Turns

    def __call__(self, item: Item) -> Row:
        (seed,) = item
        assert isinstance(seed, int)
        with self.turns.lock:  # one attack at a time on one copy of the model
            r = bit_flip_attack(
                self.model, self.data, eval_data=self.eval_data, seed=seed, progress=False, **self.settings
            )
        return {
            "flips": r.flips.to_dict("records"),
            "stopped": r.stopped,
            "clean_loss": r.clean_loss,
            "clean": r.clean_accuracy,
            "num_classes": r.num_classes,
            "metric": r.metric,
            "fmt": r.fmt.name,
        }


def _seeds(seeds: object) -> list[int]:
    if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        check_int("seeds", int(seeds), 1)
        return list(range(int(seeds)))
    if not isinstance(seeds, Sequence) or isinstance(seeds, str):
        raise TypeError(f"seeds: expected a count or a sequence of int seeds, got {type(seeds).__name__}")
    out = [check_int("seeds", s, 0) for s in seeds]
    if not out or len(set(out)) != len(out):
        raise ValueError(f"seeds: {out!r}; give at least one seed, each once")
    return out


def _setting(v: object) -> str:
    """A setting as text for the checkpoint's key: a format or codec by its configuration, the rest (a
    metric, a loss function, numbers) by :func:`~.journal.describe`."""
    return configuration(v) if isinstance(v, (Format, Codec)) else describe(v)


def bit_flip_attacks(
    model: nn.Module,
    data: object,
    seeds: int | Sequence[int] = 5,
    eval_data: object | None = None,
    executor: object = None,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """One :func:`~.attack.bit_flip_attack` per seed (``seeds``: a count, for seeds ``0 .. n-1``, or the
    seeds themselves), each on its own attack batch; ``settings`` are passed to every attack (``fmt``,
    ``budget``, ``target_accuracy``, ``metric``, ...).

    Returns one row per committed flip, the attack's flip table (:class:`~.attack.AttackResult`) with
    a ``seed`` column first and ``stopped`` (why that attack ended), and one row at ``step`` 0 per seed
    (the clean store: ``loss`` and the metric before any flip, no ``param``). ``df.attrs`` holds
    ``metric``, ``num_classes``, ``fmt`` and ``from_checkpoint``. ``executor`` and ``checkpoint`` as in
    :func:`bitlab.campaigns.ber_sweep`: the attacks are deterministic, so every executor gives the
    same frame, and a resumed campaign runs only the seeds not yet saved. The model is never left
    corrupted (every attack restores it; copies elsewhere are the workers' own).
    """
    chosen = _seeds(seeds)
    clash = sorted(set(settings) & set(_OWN))
    if clash:
        raise TypeError(f"settings: {clash} are arguments of bit_flip_attacks itself or set per seed")
    device = model_device(model)
    given = materialize(data, device=device)
    evals = None if eval_data is None else materialize(eval_data, device=device)
    work = AttackRuns(model, given, evals, dict(settings), Turns())
    journal = None
    if checkpoint is not None:
        shown = {k: _setting(v) for k, v in settings.items()}
        key = campaign_key(model, (given, evals), ("bit_flip_attacks", sorted(shown.items())))
        journal = Rows(Journal(checkpoint, FORMAT, VERSION, key, "bit_flip_attacks (model, data or settings)"))
    rows, reused = run_items(work, [[(s,) for s in chosen]], executor, journal, progress, "bit-flip attacks")
    parts = []
    for seed, row in zip(chosen, rows):
        metric = str(row["metric"])
        col = "eval_loss" if metric == "loss" else metric
        head = {"seed": seed, "step": 0, "loss": row["clean_loss"], col: row["clean"]}
        flips = [{"seed": seed, **f} for f in row["flips"]]
        part = pd.DataFrame([head, *flips])
        part["stopped"] = row["stopped"]
        parts.append(part)
    df = pd.concat(parts, ignore_index=True)
    for c in ("index", "bit"):  # the step-0 rows have none
        if c in df:
            df[c] = df[c].astype("Int64")
    df.attrs.update(
        metric=str(rows[0]["metric"]), num_classes=rows[0]["num_classes"], fmt=rows[0]["fmt"], from_checkpoint=reused
    )
    return df
