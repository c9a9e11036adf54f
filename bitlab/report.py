"""Paper claims against measurements: one stated rule turns numbers over seeds into a verdict.

A :class:`Claim` holds what a paper states (its words, its number or band) and what a notebook measured:
one value per seed, oriented by ``direction`` so that the paper predicts a value above (``"greater"``) or
below (``"less"``) ``null``, the value that means "no effect". Ratios are compared on a log scale
(``log=True``: the interval is computed on log10 of the values, and ``null`` defaults to 1).

The verdict follows :data:`RULE`, from the 95% interval of the mean over seeds (Student's t; with one
value, or with values that do not vary, the interval is the range of the values). Notebooks write their
claims with :func:`save_claims` and the synthesis notebook and the book's front page read them back
with :func:`load_claims` (CSV, no pickle).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "RULE",
    "VERDICTS",
    "Claim",
    "claims_table",
    "interval",
    "load_claims",
    "results_dir",
    "save_claims",
    "verdict",
]

#: the verdicts, from agreement to contradiction
VERDICTS = ("reproduced", "partly", "not reproduced", "opposite")

#: the rule every verdict of the book follows, as the book shows it
RULE = (
    "From the 95% confidence interval of our mean over seeds (Student's t; the range of the values when "
    "there is one seed), oriented so that the paper predicts a value beyond 'no effect': "
    "**opposite** if the whole interval is on the other side of 'no effect'; "
    "**not reproduced** if the interval contains 'no effect'; "
    "**partly** if the effect has the paper's direction but the interval stops short of the paper's band; "
    "**reproduced** if it has the paper's direction and reaches the paper's band (or the paper gives no band)."
)

#: two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96)
_T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip


def interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its 95% Student-t interval; the range for one value
    or for values that do not vary."""
    if confidence != 0.95:
        raise ValueError(f"confidence: only 0.95 is supported, got {confidence!r}")
    x = np.asarray(values, dtype=float)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"values: a non-empty 1-D sequence of numbers is needed, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"values: every value must be finite, got {x.tolist()}")
    mean = float(x.mean())
    if x.size == 1 or float(x.std()) == 0.0:
        return mean, float(x.min()), float(x.max())
    t = _T975[x.size - 2] if x.size - 1 <= len(_T975) else 1.96
    half = t * float(x.std(ddof=1)) / math.sqrt(x.size)
    return mean, mean - half, mean + half


def verdict(
    low: float,
    high: float,
    *,
    null: float = 0.0,
    direction: str = "greater",
    band: tuple[float, float] | None = None,
) -> str:
    """The verdict of :data:`RULE` for an interval ``[low, high]`` of our estimate.

    ``direction`` says on which side of ``null`` the paper's effect lies; ``band`` is the paper's
    range for the effect (either end may be infinite), in the same units as the interval."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction: must be 'greater' or 'less', got {direction!r}")
    if not low <= high:
        raise ValueError(f"low, high: need low <= high, got {low!r}, {high!r}")
    sign = 1.0 if direction == "greater" else -1.0
    lo, hi = sorted((sign * low, sign * high))
    zero = sign * null
    if hi < zero:
        return "opposite"
    if lo <= zero:
        return "not reproduced"
    if band is not None:
        b_lo = min(sign * band[0], sign * band[1])  # a stronger effect than the paper's still reproduces it
        if b_lo <= zero:
            raise ValueError(f"band: must lie on the paper's side of null={null!r}, got {band!r}")
        if hi < b_lo:
            return "partly"
    return "reproduced"


@dataclass(frozen=True)
class Claim:
    """One paper claim and our measurement of it; :attr:`verdict` is computed by :data:`RULE`.

    ``values`` holds one number per seed (or per independent run), in ``unit``; ``paper_value`` is the
    paper's number as text, ``band`` the same number as a numeric range for the rule (None: the paper
    gives only a direction)."""

    notebook: str
    paper: str
    statement: str
    paper_value: str
    values: tuple[float, ...]
    unit: str = ""
    direction: str = "greater"
    null: float | None = None
    band: tuple[float, float] | None = None
    log: bool = False
    note: str = ""
    _summary: tuple[float, float, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", tuple(float(v) for v in np.asarray(self.values, dtype=float).ravel()))
        for name in ("notebook", "paper", "statement", "paper_value"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name}: a non-empty string is needed, got {getattr(self, name)!r}")
        x = np.asarray(self.values)
        if self.log:
            if (x <= 0).any():
                raise ValueError(f"values: log=True needs positive values (ratios), got {list(self.values)}")
            x = np.log10(x)
        object.__setattr__(self, "_summary", interval(x))
        # validates direction and band now, not when the verdict is first read
        self.verdict  # noqa: B018

    @property
    def null_value(self) -> float:
        """The value that means "no effect": ``null``, or 1 for ratios (``log=True``) and 0 otherwise."""
        return self.null if self.null is not None else (1.0 if self.log else 0.0)

    @property
    def mean(self) -> float:
        """Our estimate: the mean over seeds (the geometric mean for ratios)."""
        m = self._summary[0]
        return 10**m if self.log else m

    @property
    def ci(self) -> tuple[float, float]:
        """The 95% interval of :attr:`mean`, in the values' units."""
        lo, hi = self._summary[1:]
        return (10**lo, 10**hi) if self.log else (lo, hi)

    @property
    def verdict(self) -> str:
        """reproduced / partly / not reproduced / opposite, by :data:`RULE`."""
        band = None
        if self.band is not None:
            band = (self._scaled_end(self.band[0]), self._scaled_end(self.band[1]))
        return verdict(
            self._summary[1],
            self._summary[2],
            null=math.log10(self.null_value) if self.log else self.null_value,
            direction=self.direction,
            band=band,
        )

    def _scaled_end(self, v: float) -> float:
        if self.log and not math.isinf(v):
            if v <= 0:
                raise ValueError(f"band: log=True needs positive ends, got {self.band!r}")
            return math.log10(v)
        return v

    def ours(self, fmt: str = "{:.3g}") -> str:
        """Our measurement as text: mean, 95% interval and number of seeds."""
        lo, hi = self.ci
        unit = f" {self.unit}" if self.unit else ""
        kind = "geometric mean" if self.log else "mean"
        return (
            f"{fmt.format(self.mean)}{unit} ({kind}; 95% CI {fmt.format(lo)} to {fmt.format(hi)}; n={len(self.values)})"
        )

    def expect(self, *verdicts: str) -> Claim:
        """Raise AssertionError unless the verdict is one of ``verdicts``; returns the claim."""
        bad = [v for v in verdicts if v not in VERDICTS]
        if not verdicts or bad:
            raise ValueError(f"verdicts: choose from {VERDICTS}, got {verdicts!r}")
        if self.verdict not in verdicts:
            raise AssertionError(
                f"{self.notebook} '{self.statement}': verdict {self.verdict!r}, expected one of {verdicts}; "
                f"ours {self.ours()}, paper {self.paper_value}"
            )
        return self

    def row(self) -> dict[str, object]:
        """The claim as one row of :func:`claims_table` and of the results files."""
        lo, hi = self.ci
        return {
            "notebook": self.notebook,
            "paper": self.paper,
            "claim": self.statement,
            "paper's number": self.paper_value,
            "ours": self.ours(),
            "verdict": self.verdict,
            "mean": self.mean,
            "ci_low": lo,
            "ci_high": hi,
            "n": len(self.values),
            "unit": self.unit,
            "note": self.note,
        }


#: the columns a claims table shows (the rest are in the results files)
SHOWN = ["claim", "paper's number", "ours", "verdict", "note"]


def claims_table(claims: Iterable[Claim], *, full: bool = False) -> pd.DataFrame:
    """The "paper vs. this notebook" table: one row per claim (``full``: every column of the results
    file)."""
    claims = list(claims)
    if not claims or not all(isinstance(c, Claim) for c in claims):
        raise TypeError("claims: a non-empty sequence of bitlab.report.Claim is needed")
    df = pd.DataFrame([c.row() for c in claims])
    return df if full else df[SHOWN].set_index("claim")


def results_dir(scale: str, smoke: bool = False, root: str | Path = "results") -> Path:
    """Where a notebook run writes its claims: ``<root>/<scale>/``, or ``<root>/smoke/`` for a smoke run,
    so that a paper or smoke run never overwrites the committed small-scale results."""
    from .zoo.scale import SCALES

    if scale not in SCALES:
        raise ValueError(f"scale: must be one of {SCALES}, got {scale!r}")
    return Path(root) / ("smoke" if smoke else scale)


def save_claims(claims: Iterable[Claim], path: str | Path) -> Path:
    """Write the claims to a CSV results file (folders created); returns its path."""
    path = Path(path)
    if path.suffix != ".csv":
        raise ValueError(f"path: a .csv file is needed, got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    claims_table(claims, full=True).to_csv(path, index=False)
    return path


def load_claims(paths: str | Path | Iterable[str | Path]) -> pd.DataFrame:
    """Read results files written by :func:`save_claims` (a folder reads every ``*_claims.csv`` in it)."""
    if isinstance(paths, (str, Path)):
        p = Path(paths)
        paths = sorted(p.glob("*_claims.csv")) if p.is_dir() else [p]
    frames = []
    for f in paths:
        if not Path(f).is_file():
            raise FileNotFoundError(f"paths: no claims file at {str(f)!r}")
        df = pd.read_csv(f, dtype={"notebook": str}, keep_default_na=False)
        missing = {"notebook", "claim", "verdict", "ours"} - set(df.columns)
        if missing:
            raise ValueError(f"paths: {f} is not a claims file (missing columns {sorted(missing)})")
        bad = set(df["verdict"]) - set(VERDICTS)
        if bad:
            raise ValueError(f"paths: {f} has unknown verdicts {sorted(bad)}; allowed {VERDICTS}")
        frames.append(df)
    if not frames:
        raise FileNotFoundError(f"paths: no claims files found in {paths!r}")
    return pd.concat(frames, ignore_index=True)
