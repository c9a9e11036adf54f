"""Figures the notebooks draw (matplotlib + seaborn). Each function takes a tidy DataFrame from
:mod:`bitlab.campaigns` and returns the matplotlib Axes it drew on."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

from .campaigns.sweep import summarize
from .metrics import frame_metric

__all__ = ["METHOD_COLORS", "accuracy_vs_ber", "bit_position_effect", "method_color", "style"]

_CB = sns.color_palette("colorblind", 10)
#: one colour per method across the whole book (names are matched case-insensitively, aliases included)
METHOD_COLORS: dict[str, tuple[float, float, float]] = {
    "none": (0.25, 0.25, 0.25),
    "weight decay": _CB[0],
    "adversarial": _CB[3],
    "adversarial + weight decay": _CB[4],
    "SAM": _CB[1],
    "SAR": _CB[2],
    "Hessian-aware": _CB[8],
    "range nulling": _CB[9],
    "parity nulling": _CB[6],
    "SECDED": _CB[5],
    "weight scaling": (0.0, 0.5, 0.5),  # teal: the palette's grey (_CB[7]) is too close to "none"
    "checksum": (0.55, 0.35, 0.65),
    "unary": (0.6, 0.6, 0.2),
}
_ALIASES = {
    "baseline": "none", "plain": "none", "sgd": "none", "vanilla": "none", "identity": "none",
    "wd": "weight decay", "adv": "adversarial", "adv + wd": "adversarial + weight decay",
    "hessian": "Hessian-aware", "hat": "Hessian-aware", "hessian-aware training": "Hessian-aware",
    "scaled": "weight scaling", "scaling": "weight scaling", "parity": "parity nulling",
    "range": "range nulling", "ecc": "SECDED", "group checksum": "checksum",
}  # fmt: skip
_CANON = {k.lower(): k for k in METHOD_COLORS} | _ALIASES


def method_color(name: str) -> tuple[float, float, float] | None:
    """The book's colour of a method (``"SAM"``, ``"Hessian-aware"``, ``"range nulling"``, ...), or None
    for a name it does not know. A label with details after the method (``"SAM (rho 0.05)"``,
    ``"parity (extra bit)"``) takes the method's colour."""
    key = str(name).strip().lower()
    for cut in (key, key.split(" (")[0], key.split(",")[0]):
        if cut in _CANON:
            return METHOD_COLORS[_CANON[cut]]
    return None


def style() -> None:
    """The book's plotting style (call once per notebook)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams["figure.dpi"] = 90


def accuracy_vs_ber(
    df: pd.DataFrame,
    hue: str | Sequence[str] | None = None,
    ax: plt.Axes | None = None,
    value: str | None = None,
    clean: Mapping[Any, float] | float | None = None,
    title: str | None = None,
) -> plt.Axes:
    """Mean accuracy (or ``value``: default the frame's metric, ``df.attrs["metric"]``) against bit error
    rate (log axis) with a 95% confidence band per ``hue`` group (e.g. ``"codec"``, ``"model"`` or
    ``["format", "codec"]``); BER 0 is left out of the log axis. ``clean`` draws the fault-free value
    as a dotted line (one number, or one per hue value)."""
    if value is None:
        value = frame_metric(df.attrs)[0]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    hues = [] if hue is None else ([hue] if isinstance(hue, str) else list(hue))
    s = summarize(df[df["ber"] > 0], by=hues + ["ber"], value=value)
    groups = s.groupby(hues, sort=False) if hues else [((), s)]
    palette = sns.color_palette("colorblind", n_colors=max(len(groups), 1))
    names = []
    for key, _ in groups:
        key = key if isinstance(key, tuple) else (key,)
        names.append(" / ".join(str(k) for k in key) if key else value)
    known = [method_color(n) for n in names]
    if len({c for c in known if c is not None}) == len(names):  # every group a method: the book's colours
        palette = known
    for color, name, (key, g) in zip(palette, names, groups):
        key = key if isinstance(key, tuple) else (key,)
        ax.plot(g["ber"], g["mean"], marker="o", ms=3, color=color, label=name)
        ax.fill_between(g["ber"], g["ci_low"], g["ci_high"], color=color, alpha=0.2, lw=0)
        c = clean.get(key[0]) if isinstance(clean, dict) and key else clean
        if isinstance(c, (int, float)):
            ax.axhline(c, color=color, ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("bit error rate")
    ax.set_ylabel(value)
    if title:
        ax.set_title(title)
    if hues:
        ax.legend(fontsize="small")
    return ax


def bit_position_effect(
    census: pd.DataFrame,
    value: str = "rad",
    ax: plt.Axes | None = None,
    thresholds: Sequence[float] = (0.1, 0.9),
    title: str | None = None,
) -> plt.Axes:
    """Effect of a single flip by bit position: mean ``value`` (default the relative accuracy drop)
    per bit as bars, and the share of flips above each threshold as lines."""
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.5))
    per_bit = census.groupby("bit")[value]
    mean = per_bit.mean()
    ax.bar(mean.index, mean.to_numpy(), color="0.7", label=f"mean {value}")
    for t, color in zip(thresholds, sns.color_palette("colorblind")):
        share = (census[value] > t).groupby(census["bit"]).mean()
        ax.plot(share.index, share.to_numpy(), marker="o", ms=3, color=color, label=f"share {value} > {t:g}")
    ax.set_xlabel("bit position (0 = LSB)")
    ax.set_ylabel(value)
    ax.set_xticks(sorted(census["bit"].unique())[:: max(1, census["bit"].nunique() // 16)])
    if title:
        ax.set_title(title)
    ax.legend(fontsize="small")
    return ax
