"""Curvature of the loss: Hessian-vector products, eigenvalues, trace and spectral density estimators,
the Hutchinson trace penalty of Pranto et al. 2025 (:mod:`.hessian`), and 1-D loss-landscape slices
(:mod:`.landscape`). ``bitlab.hessian`` is this package.
"""
from __future__ import annotations

from . import landscape
from .hessian import (TraceEstimate, eval_mode, flatten, flip_loss_prediction, hessian_params,
                      hessian_regularizer, hutchinson_trace, hutchpp_trace, hvp, layer_groups, per_layer,
                      slq_density, slq_nodes, top_eigenvalues, trace_penalty, unflatten)

__all__ = ["hvp", "flatten", "unflatten", "hessian_params", "TraceEstimate", "top_eigenvalues",
           "hutchinson_trace", "hutchpp_trace", "slq_nodes", "slq_density", "per_layer", "layer_groups",
           "trace_penalty", "hessian_regularizer", "eval_mode", "flip_loss_prediction", "landscape"]
