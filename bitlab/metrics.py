"""What a campaign measures: a metric turns a model's outputs and the targets into one score per
sample, and says which direction is better.

* ``"accuracy"`` -- 1 where the arg-max is the label and every output is finite, else 0;
* ``"top5"`` -- 1 where the label is among the five largest outputs (all finite);
* ``"loss"`` -- per-sample cross-entropy (lower is better; inf/NaN for a broken model, kept as they are);
* ``"mse"`` -- per-sample mean squared error over the non-batch dimensions (lower is better);
* a callable ``(outputs, targets) -> per-sample scores``, higher is better; wrap it in
  :class:`Metric` with ``higher_is_better=False`` for an error or a loss.

:func:`relative_drop` generalises the relative accuracy drop RAD of Pranto et al. 2025
(``(acc_clean - acc) / acc_clean``) to any metric: positive is always worse.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Metric",
    "METRICS",
    "MetricSpec",
    "resolve_metric",
    "relative_drop",
    "signed",
    "signed_mean",
    "frame_attrs",
    "frame_metric",
    "correct",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class Metric:
    """A per-sample score ``fn(outputs, targets) -> Tensor[batch]``, its ``name`` (the column campaigns
    write) and its direction. ``counts``: the scores are 0/1 (a hit per sample), so the mean is a count
    over the total, exactly, and lies in [0, 1]. Only ``"accuracy"`` is certified by the fast census."""

    name: str
    fn: ScoreFn
    higher_is_better: bool = True
    counts: bool = False

    def mean(self, scores: Tensor) -> float:
        """The mean of per-sample ``scores``: for a counting metric the hits over the total, exactly."""
        return int(scores.sum()) / len(scores) if self.counts else float(scores.mean())

    def scores(self, out: Tensor, y: Tensor) -> Tensor:
        """Per-sample scores as float64, checked to hold one value per sample."""
        s = self.fn(out, y)
        if not isinstance(s, Tensor):
            raise TypeError(f"metric {self.name!r}: returned {type(s).__name__}; it must return a tensor of scores")
        n = len(y) if y.dim() else 1
        if s.shape != (n,):
            raise ValueError(
                f"metric {self.name!r}: returned shape {tuple(s.shape)} for a batch of {n}; "
                f"a metric returns one score per sample, shape ({n},)"
            )
        return s.detach().to(torch.float64)


def _classes(name: str, out: Tensor, y: Tensor, k: int = 1) -> None:
    if out.dim() != 2:
        raise ValueError(
            f"metric {name!r}: needs outputs of shape (batch, classes), got {tuple(out.shape)}; pick the logits "
            "with output=, or use metric='mse' (regression) or a callable metric"
        )
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(
            f"metric {name!r}: needs integer class labels as targets, got {y.dtype} targets; for regression "
            "targets pass metric='mse' or a callable (outputs, targets) -> per-sample scores"
        )
    if out.shape[1] < k:
        raise ValueError(f"metric {name!r}: needs at least {k} classes, the outputs have {out.shape[1]}")


def correct(out: Tensor, y: Tensor) -> Tensor:
    """Boolean per example: the arg-max is the label and every logit is finite."""
    return (out.argmax(dim=1) == y) & torch.isfinite(out).all(dim=1)


def _accuracy(out: Tensor, y: Tensor) -> Tensor:
    _classes("accuracy", out, y)
    return correct(out, y).to(torch.float64)


def _top5(out: Tensor, y: Tensor) -> Tensor:
    _classes("top5", out, y, k=5)
    hit = (out.topk(5, dim=1).indices == y[:, None]).any(dim=1)
    return (hit & torch.isfinite(out).all(dim=1)).to(torch.float64)


def _loss(out: Tensor, y: Tensor) -> Tensor:
    _classes("loss", out, y)
    return F.cross_entropy(out.to(torch.float64), y, reduction="none")


def _mse(out: Tensor, y: Tensor) -> Tensor:
    if out.shape != y.shape:
        raise ValueError(
            f"metric 'mse': outputs of shape {tuple(out.shape)} and targets of shape {tuple(y.shape)} differ; "
            "they must have the same shape"
        )
    d = out.to(torch.float64) - y.to(torch.float64)
    return (d * d).reshape(len(d), -1).mean(dim=1) if d.dim() > 1 else d * d


METRICS: dict[str, Metric] = {
    "accuracy": Metric("accuracy", _accuracy, counts=True),
    "top5": Metric("top5", _top5, counts=True),
    "loss": Metric("loss", _loss, higher_is_better=False),
    "mse": Metric("mse", _mse, higher_is_better=False),
}

MetricSpec = str | Metric | ScoreFn


def resolve_metric(metric: MetricSpec) -> Metric:
    """A :class:`Metric` from a name in :data:`METRICS`, a :class:`Metric`, or a callable (higher is better)."""
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in METRICS:
            raise ValueError(f"metric: {metric!r}; allowed names are {sorted(METRICS)}, a Metric or a callable")
        return METRICS[metric]
    if callable(metric):
        name = getattr(metric, "__name__", type(metric).__name__)
        return Metric("metric" if name == "<lambda>" else name, metric)
    raise TypeError(
        f"metric: expected one of {sorted(METRICS)}, a Metric or a callable (outputs, targets) -> per-sample "
        f"scores, got {type(metric).__name__}"
    )


def relative_drop(clean: float, value: float, metric: Metric) -> float:
    """How much worse ``value`` is than ``clean``, relative to ``|clean|``: ``(clean - value) / clean`` for
    a higher-is-better metric (the RAD of Pranto et al. 2025), ``(value - clean) / clean`` otherwise.
    ``nan`` when ``clean`` is 0 (no relative scale) or not finite."""
    if clean == 0 or not math.isfinite(clean):
        return float("nan")
    worse = clean - value if metric.higher_is_better else value - clean
    return worse / abs(clean)


def signed(value: float, higher_is_better: bool = True) -> float:
    """``value`` turned so that higher is better (negated for an error or a loss), NaN as ``-inf``: a
    metric of a model whose outputs hold NaN is past any level. One rule for every stop and ranking."""
    if math.isnan(value):
        return -math.inf
    return value if higher_is_better else -value


def signed_mean(values: Iterable[float], higher_is_better: bool = True) -> float:
    """:func:`signed` of the mean of ``values``; ``-inf`` if any value is NaN (a broken trial fails its
    group instead of being left out of the mean)."""
    vs = np.asarray(list(values), dtype=np.float64)
    if vs.size == 0 or np.isnan(vs).any():
        return -math.inf
    return signed(float(vs.mean()), higher_is_better)  # numpy's mean, as pandas' groupby mean


def frame_attrs(metric: Metric, clean: float, column: str | None = None) -> dict[str, object]:
    """The ``attrs`` every campaign frame carries about its metric: ``metric`` (its column), its
    direction, the fault-free value as ``clean`` and as ``clean_<column>``."""
    col = metric.name if column is None else column
    return {"metric": col, "higher_is_better": metric.higher_is_better, "clean": clean, f"clean_{col}": clean}


def frame_metric(attrs: Mapping[Any, object]) -> tuple[str, bool]:
    """The metric column and direction a campaign frame's ``attrs`` name (accuracy for frames of 0.1)."""
    return str(attrs.get("metric", "accuracy")), bool(attrs.get("higher_is_better", True))
