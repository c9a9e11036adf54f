"""Per-layer curvature: any Hessian estimator applied to each layer's diagonal block of the Hessian (the
parameters of one module, the others held fixed), as a table, as in PyHessian's layer-wise analysis
(Yao et al. 2020)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
from torch import Tensor, nn

from ..params import ParamSelection
from .products import Data, LossFn, hessian_params
from .trace import TraceEstimate

__all__ = ["layer_groups", "per_layer"]


def layer_groups(model: nn.Module, params: ParamSelection = None) -> dict[str, list[str]]:
    """Selected trainable parameter names grouped by the module that owns them (``"3"`` -> ``["3.weight",
    "3.bias"]``), in model order."""
    groups: dict[str, list[str]] = {}
    for name, _ in hessian_params(model, params):
        groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return groups


def per_layer(
    fn: Callable[..., Any], model: nn.Module, loss_fn: LossFn, data: Data, params: ParamSelection = None, **kwargs: Any
) -> pd.DataFrame:
    """Apply an estimator ``fn`` (e.g. :func:`hutchinson_trace`, :func:`top_eigenvalues`) to each layer's
    diagonal Hessian block; one row per layer with ``layer, n_params`` and the result: ``trace, stderr,
    n_hvp`` for a :class:`TraceEstimate`, ``lambda_1..k, n_hvp`` for eigenvalues, else ``value``.
    ``kwargs`` go to ``fn``; give it a seeded ``generator`` for reproducible rows."""
    if not callable(fn):
        raise TypeError(f"fn must be an estimator callable, got {type(fn).__name__}")
    named = dict(model.named_parameters())
    rows = []
    for layer, names in layer_groups(model, params).items():
        out = fn(model, loss_fn, data, params=names, **kwargs)
        row: dict[str, Any] = {"layer": layer, "n_params": sum(named[n].numel() for n in names)}
        if isinstance(out, TraceEstimate):
            row.update(trace=out.mean, stderr=out.stderr, n_hvp=out.n_hvp)
        elif isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], Tensor):
            row.update({f"lambda_{i + 1}": float(v) for i, v in enumerate(out[0])}, n_hvp=out[2])
        else:
            row["value"] = float(out) if isinstance(out, (Tensor, float, int)) else out
        rows.append(row)
    return pd.DataFrame(rows)
