"""Curvature of the loss: Hessian-vector products (:mod:`.products`), eigenvalues and spectral density
(:mod:`.spectrum`), trace estimators and the Hutchinson trace penalty of Pranto et al. 2025 (:mod:`.trace`),
per-layer blocks (:mod:`.layers`), the Taylor prediction of a flip's loss change (:mod:`.prediction`), and
1-D loss-landscape slices (:mod:`.landscape`). ``bitlab.hessian`` is this package.

Losses are ``loss_fn(outputs, targets)`` on ``(inputs, targets)`` batches or ``batch_loss(fn)`` with
``fn(model, batch)`` (:mod:`.losses`); forwards run under the math attention kernel so that stock
Transformer layers can be differentiated twice (:func:`double_backward`, :mod:`.kernels`).

Everything is built on one operation, the Hessian-vector product by double backprop (Pearlmutter 1994),
never forming ``H``; the estimators are those of PyHessian (Yao et al. 2020), in our own code.
"""

from __future__ import annotations

from . import landscape
from .kernels import double_backward
from .layers import layer_groups, per_layer
from .losses import BatchLoss, batch_loss
from .prediction import flip_loss_prediction
from .products import eval_mode, flatten, hessian_params, hvp, unflatten
from .spectrum import slq_density, slq_nodes, top_eigenvalues
from .trace import (
    TraceEstimate,
    hessian_regularizer,
    hessian_trace,
    hutchinson_trace,
    hutchpp_trace,
    trace_penalty,
    xtrace,
    xtrace_estimates,
)

__all__ = [
    "BatchLoss",
    "TraceEstimate",
    "batch_loss",
    "double_backward",
    "eval_mode",
    "flatten",
    "flip_loss_prediction",
    "hessian_params",
    "hessian_regularizer",
    "hessian_trace",
    "hutchinson_trace",
    "xtrace",
    "xtrace_estimates",
    "hutchpp_trace",
    "hvp",
    "landscape",
    "layer_groups",
    "per_layer",
    "slq_density",
    "slq_nodes",
    "top_eigenvalues",
    "trace_penalty",
    "unflatten",
]
