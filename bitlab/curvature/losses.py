"""The two forms of loss the curvature estimators take, and the batches they are evaluated on.

* ``loss_fn(outputs, targets) -> scalar`` (e.g. ``F.cross_entropy``): every batch is a pair
  ``(inputs, targets)`` and the model is called on the inputs (:func:`bitlab.evaluate.call`: a dict is passed as
  keyword arguments, ``model(**x)``; a tuple or list as positional arguments, ``model(*x)``; anything else
  as ``model(x)``).
* ``batch_loss(fn)`` with ``fn(model, batch) -> scalar``: ``fn`` calls the model itself, on a batch of any
  structure (a dict with labels inside, several targets, ...).

Both take two positional arguments, so the form cannot be told from the signature: a plain callable is the
first form, :func:`batch_loss` marks the second. Either must return the *mean* loss of the batch as a
0-dim tensor. Batches are moved to the model's device (tensors inside tuples, lists and dicts too) and,
for a float16/bfloat16 model differentiated in float32, their floating tensors are cast to float32.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..evaluate import call, tensors
from ..zoo.data import as_loader

__all__ = [
    "FORMS",
    "BatchLoss",
    "as_batch_loss",
    "batch_loss",
    "batch_size",
    "data_batches",
    "iter_sized",
    "scalar_loss",
]

FORMS = (
    "loss_fn(outputs, targets) -> scalar with (inputs, targets) batches, "
    "or batch_loss(fn) with fn(model, batch) -> scalar"
)


@dataclass(frozen=True)
class BatchLoss:
    """A loss ``fn(model, batch) -> scalar``; ``pairs`` is True for a wrapped ``(outputs, targets)`` loss,
    whose batches must be ``(inputs, targets)`` pairs."""

    fn: Callable[[nn.Module, Any], Tensor]
    pairs: bool = False

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        return scalar_loss(self.fn(model, batch))


def _check_arity(name: str, fn: object, form: str) -> None:
    if not callable(fn):
        raise TypeError(f"{name} must be a callable {form}; allowed forms: {FORMS}; got {type(fn).__name__}")
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return
    try:
        sig.bind(None, None)
    except TypeError as err:
        raise TypeError(
            f"{name} must take two positional arguments, {form} (it has signature {sig}: {err}); allowed forms: {FORMS}"
        ) from None


def batch_loss(fn: Callable[[nn.Module, Any], Tensor]) -> BatchLoss:
    """Mark ``fn(model, batch) -> scalar mean loss`` as a loss the estimators call with the model and one
    batch (moved to the model's device), e.g. ``batch_loss(lambda m, b: m(**b).loss)``."""
    if isinstance(fn, BatchLoss):
        return fn
    _check_arity("batch_loss: fn", fn, "fn(model, batch) -> scalar")
    return BatchLoss(fn)


def as_batch_loss(loss_fn: object) -> BatchLoss:
    """``loss_fn`` as a :class:`BatchLoss`: itself if made by :func:`batch_loss`, else a plain
    ``loss_fn(outputs, targets)`` applied to ``(call(model, inputs), targets)``."""
    if isinstance(loss_fn, BatchLoss):
        return loss_fn
    _check_arity("loss_fn", loss_fn, "loss_fn(outputs, targets) -> scalar")
    fn = loss_fn

    def pair_loss(model: nn.Module, batch: Any) -> Tensor:
        inputs, targets = batch
        out = call(model, inputs)
        try:
            return fn(out, targets)  # type: ignore[operator]
        except (TypeError, AttributeError) as err:
            if isinstance(out, Tensor):
                raise
            raise TypeError(
                f"loss_fn: it failed on the model's {type(out).__name__} output ({err}); a loss_fn(outputs, targets) "
                "gets the output as the model returns it: pick the scores inside it, or wrap the loss: "
                "bl.hessian.batch_loss(lambda m, b: loss(m(b[0])[0], b[1]))"
            ) from err

    return BatchLoss(pair_loss, pairs=True)


def scalar_loss(loss: object) -> Tensor:
    """``loss`` if it is a 0-dim floating tensor, else ValueError naming the allowed forms."""
    if not isinstance(loss, Tensor) or loss.ndim != 0 or not loss.is_floating_point():
        got = f"a tensor of shape {tuple(loss.shape)}, dtype {loss.dtype}" if isinstance(loss, Tensor) else repr(loss)
        raise ValueError(
            f"loss_fn must return a scalar (0-dim, floating, mean over the batch) loss tensor, got {got}; "
            f"use reduction='mean'. Allowed forms: {FORMS}"
        )
    return loss


def batch_size(batch: Any, pairs: bool) -> int:
    """The number of examples in a batch, its weight in the data-set mean: ``len(targets)`` of a pair, else
    the leading size of the first tensor found in it (depth first). A batch without tensors raises."""
    if pairs:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise TypeError(
                f"data: a loss_fn(outputs, targets) needs (inputs, targets) batches, got a {type(batch).__name__}; "
                "wrap a loss that takes other batches with batch_loss(fn)"
            )
        t = batch[1] if isinstance(batch[1], Tensor) and batch[1].ndim > 0 else next(tensors(batch[0]), None)
    else:
        t = next(tensors(batch), None)
    if t is None or t.ndim == 0:
        raise ValueError(f"data: cannot tell the size of a {type(batch).__name__} batch (no batched tensor in it)")
    return len(t)


def data_batches(data: object, pairs: bool) -> list[Any] | DataLoader:
    """``data`` as an iterable of batches: a tuple (or a dict, for a :func:`batch_loss`) is one batch; a list
    of tensors is one ``[inputs, targets]`` batch with a pair loss; another list is a list of batches; a
    Dataset or DataLoader is loaded in batches (1024 per batch for a Dataset)."""
    allowed = "one batch (a tuple (inputs, targets)), a list of batches, a Dataset or a DataLoader"
    if isinstance(data, tuple) or (isinstance(data, dict) and not pairs):
        out: list[Any] = [data]
    elif isinstance(data, list) and pairs and data and all(isinstance(t, Tensor) for t in data):
        out = [tuple(data)]
    elif isinstance(data, list):
        out = list(data)
    elif isinstance(data, (Dataset, DataLoader)):
        return as_loader(data, batch_size=1024)
    else:
        raise TypeError(f"data: expected {allowed}, got {type(data).__name__}")
    if not out:
        raise ValueError(f"data: the list holds no batch; expected {allowed}")
    for b in out:
        if batch_size(b, pairs) == 0:
            raise ValueError("data: a batch is empty")
    return out


def iter_sized(data: Iterable[Any], pairs: bool) -> Iterable[tuple[Any, int]]:
    """Each batch of ``data`` with its :func:`batch_size`."""
    for b in data:
        yield b, batch_size(b, pairs)
