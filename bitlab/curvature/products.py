"""The Hessian-vector product of the mean loss by double backprop, ``H v = d/dtheta (grad L(theta) . v)``
(Pearlmutter 1994), over one batch or a whole data set, with the parameter selection and train-mode guard.

Conventions. The loss is ``loss_fn(outputs, targets)`` on ``(inputs, targets)`` batches (``F.cross_entropy``;
inputs a tensor, a tuple of tensors or a dict of keyword arguments) or ``batch_loss(fn)`` with ``fn(model,
batch)`` on batches of any structure (:mod:`.losses`); either returns the *mean* loss of a batch, and
batches are moved to the model's device. Over a data set the Hessian is the size-weighted average of the
batch Hessians (:func:`sized_mean`), i.e. the Hessian of the mean loss over all examples. ``params`` selects
the parameters the Hessian is taken over: ``None`` (every trainable parameter), a name glob (``"3.*"``,
``"fc*"``), a list of names/globs, or a predicate ``(name, param) -> bool``; the others are held fixed, so a
selection gives a diagonal block of ``H``. Vectors are lists of tensors shaped like the selected parameters
(:func:`flatten` / :func:`unflatten` convert).

Modes. The Hessian of a model in train mode with BatchNorm (batch statistics, running-stat updates) or
Dropout (random masks) is not the Hessian of the deployed model. With ``mode="check"`` (the default)
such a model raises a ValueError asking for ``model.eval()``; ``mode="eval"`` switches to eval mode for
the computation and restores every module's previous mode afterwards (:func:`eval_mode`).

Kernels and precision. Every forward pass runs under ``sdpa_kernel(SDPBackend.MATH)``
(:func:`~.kernels.double_backward`): the fused attention kernels of ``nn.MultiheadAttention`` /
``nn.TransformerEncoderLayer`` have no double backward, the math kernel has; an op that still has none
raises a RuntimeError naming the module that recorded it (:func:`~.kernels.explain`). A model with
float16/bfloat16 parameters is differentiated on a float32 copy (an exact upcast; floating inputs cast
too), so the products are those of the float32 model at the same weights and the model is not touched;
the vectors then come back in float32.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import evaluate
from ..evaluate import to_device
from ..params import ParamSelection, select_params
from .kernels import double_backward, explain, is_double_backward_error
from .losses import BatchLoss, as_batch_loss, data_batches, iter_sized

__all__ = [
    "MODES",
    "Data",
    "HessianOperator",
    "LossFn",
    "Vec",
    "batch_mean",
    "batches",
    "eval_mode",
    "flatten",
    "hessian_params",
    "hvp",
    "sized_mean",
    "unflatten",
    "unflatten_batched",
]

Vec = list[Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor] | BatchLoss
Data = Dataset | DataLoader | tuple[Any, ...] | list[Any] | dict[str, Any]
LOW_PRECISION = (torch.float16, torch.bfloat16)
MODES = ("check", "eval")


# ---------------------------------------------------------------------------------------------- vectors


def hessian_params(model: nn.Module, params: ParamSelection = None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a Hessian is taken over: trainable floating-point parameters
    chosen by ``params`` (see the module docstring). An empty selection raises ValueError."""
    chosen = select_params(model, params)
    frozen = [n for n, p in chosen if not p.requires_grad]
    if params is None:
        chosen = [(n, p) for n, p in chosen if p.requires_grad]
        if not chosen:
            raise ValueError("params: the model has no trainable parameter (requires_grad=True)")
    elif frozen:
        raise ValueError(f"params: {frozen} do not require grad; select trainable parameters only")
    return chosen


def flatten(vec: Sequence[Tensor]) -> Tensor:
    """A list of tensors as one flat vector (concatenated in order)."""
    if len(vec) == 0:
        raise ValueError("vec: expected a non-empty list of tensors")
    return torch.cat([v.reshape(-1) for v in vec])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> Vec:
    """A flat vector cut into tensors shaped like ``like``, each on its tensor's device and in its dtype (a
    CPU float64 vector becomes CUDA tensors for a CUDA model); inverse of :func:`flatten`."""
    n = sum(t.numel() for t in like)
    if flat.ndim != 1 or flat.numel() != n:
        raise ValueError(f"flat: expected a 1-d tensor of {n} elements, got shape {tuple(flat.shape)}")
    out, i = [], 0
    for t in like:
        out.append(flat[i : i + t.numel()].reshape(t.shape).to(device=t.device, dtype=t.dtype))
        i += t.numel()
    return out


def unflatten_batched(flat: Tensor, like: Sequence[Tensor]) -> Vec:
    """A ``(b, n)`` batch of flat vectors cut into ``(b, *shape)`` tensors shaped like ``like``."""
    b, i, out = flat.shape[0], 0, []
    for t in like:
        out.append(flat[:, i : i + t.numel()].reshape(b, *t.shape))
        i += t.numel()
    return out


# ---------------------------------------------------------------------------------------- modes, data


def _stochastic_modules(model: nn.Module) -> list[str]:
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds) and m.training]


@contextmanager
def eval_mode(model: nn.Module, mode: str = "check") -> Iterator[nn.Module]:
    """Guard for Hessian estimation. ``mode="check"``: raise ValueError if a BatchNorm or Dropout module is
    in train mode. ``mode="eval"``: put the model in eval mode inside the block, restore each module's
    previous mode on exit (also on an exception)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "check":
        bad = _stochastic_modules(model)
        if bad:
            raise ValueError(
                f"model is in train mode with BatchNorm/Dropout modules {bad[:5]}: their Hessian is "
                "not the deployed model's; call model.eval() first, or pass mode='eval' to switch "
                "temporarily"
            )
        yield model
        return
    with evaluate.eval_mode(model):
        yield model


def batches(data: Data) -> list[Any] | DataLoader:
    """``data`` as an iterable of ``(inputs, targets)`` batches (:func:`~.losses.data_batches`): one batch
    ``(x, y)``, a list of batches, or a Dataset/DataLoader (a Dataset is loaded in batches of 1024)."""
    return data_batches(data, pairs=True)


def sized_mean(data: Iterable[Any], fn: Callable[[Any], Vec], pairs: bool = True) -> Vec:
    """The size-weighted mean over the batches of ``fn(batch)`` (a list of tensors): ``sum_b |b| fn(b) /
    sum_b |b|``, the data-set value of a per-batch mean (loss, gradient, ``H v``); ``|b|`` is
    :func:`~.losses.batch_size`. Empty data raises ValueError."""
    total: Vec | None = None
    seen = 0
    for batch, size in iter_sized(data, pairs):
        part = fn(batch)
        total = [t * size for t in part] if total is None else [t + u * size for t, u in zip(total, part)]
        seen += size
    if total is None or not seen:
        raise ValueError("data must not be empty")
    return [t / seen for t in total]


def batch_mean(data: Iterable[tuple[Tensor, Tensor]], fn: Callable[[Tensor, Tensor], Vec]) -> Vec:
    """:func:`sized_mean` over ``(x, y)`` batches of ``fn(x, y)``, weighted by ``len(y)``."""
    return sized_mean(data, lambda b: fn(b[0], b[1]), pairs=True)


# --------------------------------------------------------------------------------------------- operator


class HessianOperator:
    """The Hessian of the mean loss as a linear operator on flat float64 vectors, counting products
    (``n_hvp``). For a single batch the gradient graph is built once and reused (``retain_graph``)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Data, params: ParamSelection = None):
        self.loss = as_batch_loss(loss_fn)
        self.loss_fn = loss_fn
        self.original = model
        self.cast: torch.dtype | None = None
        if any(p.dtype in LOW_PRECISION for p in model.parameters()):
            # differentiate a float32 copy: half-precision double backprop loses most of the digits
            model, self.cast = copy.deepcopy(model).float(), torch.float32
        self.model = model
        self.named = hessian_params(model, params)
        self.params = [p for _, p in self.named]
        self.n = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self.batches = data_batches(data, self.loss.pairs)
        self.n_hvp = 0
        self.vmap_error: str | None = None  # why the vmapped products fell back to columns, if they did
        self._batch: Any = None
        self._grads: list[Tensor | None] | None = None
        if isinstance(self.batches, list) and len(self.batches) == 1:
            self._grads = self._grad_graph(self.batches[0])

    def prepare(self, batch: Any) -> Any:
        """``batch`` on the model's device (floating tensors cast to float32 for a low-precision model)."""
        return to_device(batch, self.device, self.cast)

    def batch_loss(self, batch: Any) -> Tensor:
        """The loss of one batch, its forward under the math attention kernel (a double backward)."""
        with double_backward():
            return self.loss(self.model, self.prepare(batch))

    def gradient(self, batch: Any, create_graph: bool) -> list[Tensor | None]:
        """The gradient of one batch's loss; a missing double backward is explained by module name."""
        loss = self.batch_loss(batch)
        try:
            return list(torch.autograd.grad(loss, self.params, create_graph=create_graph, allow_unused=True))
        except RuntimeError as err:
            raise self._explained(err, batch) from err

    def _explained(self, err: RuntimeError, batch: Any) -> RuntimeError:
        if not is_double_backward_error(err):
            return err
        return explain(err, self.model, lambda: self.batch_loss(batch))

    def _grad_graph(self, batch: Any) -> list[Tensor | None]:
        self._batch = batch
        return self.gradient(batch, create_graph=True)

    def _product(self, grads: list[Tensor | None], vecs: Vec, retain: bool, columns: int | None) -> Vec:
        """``H v`` on one gradient graph by double backprop: ``vecs`` shaped like the parameters, or with
        ``columns`` set, ``(columns, *shape)`` tensors whose products run as one vmapped backward
        (``is_grads_batched``)."""
        # parameters the loss does not use (grad None) or uses linearly (grad constant) have zero curvature
        live = [(g, v) for g, v in zip(grads, vecs) if g is not None and g.requires_grad]
        hv: Sequence[Tensor | None] = [None] * len(self.params)
        if live:
            try:
                hv = torch.autograd.grad(
                    [g for g, _ in live],
                    self.params,
                    grad_outputs=[v for _, v in live],
                    retain_graph=retain,
                    allow_unused=True,
                    is_grads_batched=columns is not None,
                )
            except RuntimeError as err:
                raise self._explained(err, self._batch) from err
        return [
            h.detach()
            if h is not None
            else torch.zeros_like(p)
            if columns is None
            else p.new_zeros((columns, *p.shape))
            for h, p in zip(hv, self.params)
        ]

    def _apply(self, vecs: Vec, columns: int | None = None) -> Vec:
        """:meth:`_product` over the data: the one retained graph of a single batch, else the size-weighted
        mean over the batches (one graph each)."""
        if self._grads is not None:
            return self._product(self._grads, vecs, retain=True, columns=columns)
        return sized_mean(
            self.batches,
            lambda b: self._product(self._grad_graph(b), vecs, retain=False, columns=columns),
            self.loss.pairs,
        )

    def vec(self, vec: Vec) -> Vec:
        """``H v`` for ``v`` a list of tensors shaped like the parameters."""
        self.n_hvp += 1
        return self._apply([v.to(device=p.device, dtype=p.dtype) for v, p in zip(vec, self.params)])

    def __call__(self, flat: Tensor) -> Tensor:
        """``H v`` on flat float64 vectors (the linear algebra runs in float64 whatever the model dtype)."""
        return flatten(self.vec(unflatten(flat, self.params))).to(device="cpu", dtype=torch.float64)

    def matmat(self, flat: Tensor, block: int = 32, vmap: bool | None = None) -> Tensor:
        """``H V`` for the columns of a float64 ``(n, b)`` matrix; counts ``b`` products. ``vmap=None``: on the
        CPU one product per column (:meth:`matmat_columns`): a vmapped backward of 32 columns took 1.5x as long
        on the digits MLP (80 ms against 56 ms for 50 products; conv nets cannot vmap their pooling backward
        anyway); on another device ``block`` columns per vmapped backward (:meth:`matmat_vmap`), equal to the
        columns' products up to rounding. ``vmap=True``/``False`` forces either. Any RuntimeError inside the
        vmapped backward (an op whose backward cannot be vmapped: "NYI: querying is_contiguous inside of
        vmap", "Batching rule not implemented for aten::X. We could not generate a fallback", or out of
        memory) falls back to columns for this and later calls, with a RuntimeWarning giving the reason (also
        kept in ``vmap_error``); an error that is not vmap's is raised again by the columns."""
        if vmap is None:
            vmap = self.device.type != "cpu"
        if not vmap or self.vmap_error is not None:
            return self.matmat_columns(flat)
        n_before = self.n_hvp
        try:
            return self.matmat_vmap(flat, block)
        except RuntimeError as err:
            first = (str(err).strip().splitlines() or [""])[0]
            self.vmap_error = f"{type(err).__name__}: {first}"
            warnings.warn(
                f"Hessian products: the vmapped backward failed ({self.vmap_error}); computing one product per "
                "column instead (same values, slower)",
                RuntimeWarning,
                stacklevel=2,
            )
            self.n_hvp = n_before
            return self.matmat_columns(flat)

    def matmat_columns(self, flat: Tensor) -> Tensor:
        """``H V`` one column at a time (counts ``b`` products): the columns are cut into parameter shapes
        once and the products joined once (the same products as ``b`` calls of the operator, cheaper)."""
        b = flat.shape[1]
        self.n_hvp += b
        # the columns as contiguous rows (one copy): each column's pieces contiguous, as one call of the
        # operator makes them (the strides of a vector can change the order of a backward's sums)
        batched = unflatten_batched(flat.T.contiguous(), self.params)
        vecs = [t.to(device=p.device, dtype=p.dtype) for t, p in zip(batched, self.params)]
        # each product written straight into its row of one buffer (no per-column flat copy and stack: 0.65 ms
        # of 26 ms per 25 products on the digits MLP); the (n, b) result is that buffer's transpose
        rows = torch.empty((b, self.n), dtype=torch.float64, device=self.device)
        for j in range(b):
            torch.cat([h.reshape(-1) for h in self._apply([v[j] for v in vecs])], out=rows[j])
        return rows.T.to(device="cpu")

    def matmat_vmap(self, flat: Tensor, block: int = 32) -> Tensor:
        """``H V`` in vmapped blocks of ``block`` columns (counts ``b`` products); raises the RuntimeError
        of an op whose backward cannot be vmapped (:meth:`matmat` falls back to columns then)."""
        cols = []
        for j in range(0, flat.shape[1], block):
            chunk = flat[:, j : j + block]
            b = chunk.shape[1]
            self.n_hvp += b
            vecs = [
                t.to(device=p.device, dtype=p.dtype)
                for t, p in zip(unflatten_batched(chunk.T, self.params), self.params)
            ]
            hv = self._apply(vecs, columns=b)
            cols.append(torch.cat([h.reshape(b, -1) for h in hv], dim=1).T.to(device="cpu", dtype=torch.float64))
        return torch.cat(cols, dim=1)

    def unflat(self, flat: Tensor) -> Vec:
        """A flat vector as detached tensors shaped like the parameters."""
        return [t.detach().clone() for t in unflatten(flat, self.params)]


def hvp(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    vec: Sequence[Tensor] | Tensor,
    params: ParamSelection = None,
    mode: str = "check",
) -> Vec | Tensor:
    """Hessian-vector product ``H v`` of the mean loss by double backprop (Pearlmutter 1994).

    ``loss_fn`` is ``loss_fn(outputs, targets)`` or ``batch_loss(fn)`` (module docstring); ``data`` is one
    batch ``(x, y)``, a list of batches or a Dataset/DataLoader (the batch Hessians weighted by batch size).
    The forward runs under ``sdpa_kernel(SDPBackend.MATH)`` (double backward through attention).
    ``vec`` is a list of tensors shaped like the selected ``params`` (returns the same), or a flat vector
    (returns a flat vector)."""
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, params)
        if isinstance(vec, Tensor):
            if vec.ndim != 1 or vec.numel() != op.n:
                raise ValueError(f"vec: a flat vector must have {op.n} elements, got shape {tuple(vec.shape)}")
            return flatten(op.vec(unflatten(vec, op.params)))
        vec = list(vec)
        shapes = [tuple(p.shape) for p in op.params]
        if [tuple(v.shape) for v in vec] != shapes:
            raise ValueError(
                f"vec: expected tensors of shapes {shapes} (the selected params), got {[tuple(v.shape) for v in vec]}"
            )
        return op.vec(vec)
