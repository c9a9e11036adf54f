"""Scoring a model: the one place that decides what "correct" means and how a model is put in eval
mode. A sample whose logits hold NaN or Inf (a flipped exponent bit can produce them) counts as
wrong, never as an error; :func:`eval_mode` restores every submodule's own train/eval mode.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .zoo.data import as_loader

__all__ = [
    "Batches",
    "eval_mode",
    "model_device",
    "correct",
    "materialize",
    "batch_accuracy",
    "logits",
    "predict",
    "accuracy",
    "evaluate",
]

Batches = list[tuple[Tensor, Tensor]]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; on exit (also on an exception) give every submodule
    back its own previous mode, so a model with some submodules in train mode and others in eval mode
    comes back exactly as it was (restoring with the root's flag alone would reset them all to it)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, mode in flags:
            m.training = mode


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without parameters)."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def correct(out: Tensor, y: Tensor) -> Tensor:
    """Boolean per example: the arg-max is the label and every logit is finite."""
    return (out.argmax(dim=1) == y) & torch.isfinite(out).all(dim=1)


def materialize(data: object, batch_size: int = 2048) -> Batches:
    """The data as a list of ``(x, y)`` tensor batches, built once and reused by every trial.
    Accepts a Dataset (e.g. a TensorDataset), a DataLoader, or a list of batches."""
    if isinstance(data, list) and all(isinstance(b, tuple) and len(b) == 2 for b in data):
        return data
    if isinstance(data, torch.utils.data.TensorDataset):
        x, y = data.tensors[0], data.tensors[1]
        if len(x) == 0:
            raise ValueError("data: the dataset holds no sample; pass a non-empty Dataset or DataLoader")
        return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    if isinstance(data, torch.utils.data.Dataset):
        data = torch.utils.data.DataLoader(data, batch_size=batch_size)
    if isinstance(data, Iterable):
        batches = [(b[0], b[1]) for b in data]
        if not batches:
            raise ValueError("data: it holds no batch; pass a non-empty Dataset or DataLoader")
        return batches
    raise TypeError(f"data: expected a Dataset, a DataLoader or a list of (x, y) batches, got {type(data).__name__}")


@torch.no_grad()
def batch_accuracy(model: nn.Module, batches: Batches) -> float:
    """Fraction of correct predictions over materialized ``batches`` (see :func:`correct`)."""
    hits = total = 0
    with eval_mode(model):
        for x, y in batches:
            hits += int(correct(model(x), y).sum())
            total += len(y)
    return hits / total


@torch.no_grad()
def logits(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024) -> tuple[Tensor, Tensor]:
    """All logits and labels of ``data``, in eval mode, on the CPU."""
    device = model_device(model)
    outs, ys = [], []
    with eval_mode(model):
        for x, y in as_loader(data, batch_size):
            outs.append(model(x.to(device)).float().cpu())
            ys.append(y)
    if not outs:
        raise ValueError("data: it holds no batch; pass a non-empty Dataset or DataLoader")
    return torch.cat(outs), torch.cat(ys)


def predict(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024) -> Tensor:
    """Predicted class per example; ``-1`` where the logits are not all finite."""
    out, _ = logits(model, data, batch_size)
    pred = out.argmax(dim=1)
    pred[~torch.isfinite(out).all(dim=1)] = -1
    return pred


@torch.no_grad()
def accuracy(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024) -> float:
    """Fraction of ``data`` classified correctly, in eval mode; examples with NaN/Inf logits count as wrong."""
    device = model_device(model)
    hits = seen = 0
    with eval_mode(model):
        for x, y in as_loader(data, batch_size):
            hits += int(correct(model(x.to(device)), y.to(device)).sum())
            seen += len(y)
    if seen == 0:
        raise ValueError("data must not be empty")
    return hits / seen


def evaluate(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024) -> dict[str, float]:
    """``{"loss": mean cross-entropy, "accuracy": ...}`` on ``data`` (the loss may be inf/nan for a
    corrupted model; the accuracy then counts the non-finite rows as wrong)."""
    out, y = logits(model, data, batch_size)
    if len(y) == 0:
        raise ValueError("data must not be empty")
    # the accuracy as a count over the total, exactly what accuracy() returns (not a float32 mean)
    return {"loss": float(F.cross_entropy(out, y)), "accuracy": int(correct(out, y).sum()) / len(y)}
