"""Scoring a model: the one evaluation core under every campaign.

Every function that scores a model (``accuracy``, ``evaluate``, ``ber_sweep``, the census, the
activation campaigns, the attack, ``sweep_t``, ``loss_slice``) goes through :func:`score` and its pieces:

* **batches** are ``(inputs, targets)`` pairs whose inputs are a tensor (``model(x)``), a tuple of
  tensors (``model(*x)``) or a dict of keyword arguments (``model(**x)``); :func:`materialize` builds
  them once from a Dataset, a DataLoader or a list, on the model's device;
* **output** picks the tensor to score from what the model returns (:func:`pick`): ``None`` for a
  tensor, a key (dict, dataclass or named tuple), an index (tuple) or a callable;
* **metric** is one of :mod:`bitlab.metrics` (accuracy by default; top-5, loss, MSE or a callable
  returning per-sample scores). A sample whose outputs hold NaN or Inf counts as wrong for accuracy;
* :func:`eval_mode` restores every submodule's own train/eval mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import fields, is_dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .metrics import METRICS, Metric, MetricSpec, correct, resolve_metric
from .zoo.data import as_loader

__all__ = [
    "Batches",
    "Output",
    "eval_mode",
    "model_device",
    "map_tensors",
    "tensors",
    "to_device",
    "take",
    "gather",
    "concat",
    "call",
    "pick",
    "correct",
    "materialize",
    "per_sample",
    "score",
    "batch_accuracy",
    "logits",
    "predict",
    "accuracy",
    "evaluate",
]

Batches = list[tuple[object, Tensor]]
Output = None | str | int | Callable[[object], Tensor]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode inside the block; on exit (also on an exception) give every submodule
    back its own previous mode, so a model with some submodules in train mode and others in eval mode
    comes back exactly as it was (restoring with the root's flag alone would reset them all to it)."""
    flags = [(m, m.training) for m in model.modules()]
    if any(mode for _, mode in flags):  # a model already in eval mode (every trial of a campaign) is left be
        model.eval()
    try:
        yield model
    finally:
        for m, mode in flags:
            if m.training != mode:
                m.training = mode


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (else its first buffer; CPU for a model with neither).
    A model on the meta device holds no values and is refused."""
    t: Tensor | None = next(model.parameters(), None)
    if t is None:
        t = next(model.buffers(), None)
    device = t.device if t is not None else torch.device("cpu")
    if device.type == "meta":
        raise ValueError(
            f"model: this {type(model).__name__} is on the meta device (its tensors hold no values); "
            "materialize it first, e.g. model.to_empty(device='cpu') and load its weights"
        )
    return device


def map_tensors(obj: object, fn: Callable[[Tensor], Tensor]) -> object:
    """``obj`` with ``fn`` applied to every tensor in it, nested in tuples (named tuples kept), lists and
    dicts; anything else as it is. The one walk behind :func:`to_device`, :func:`take` and :func:`gather`."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, Mapping):
        return {k: map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        mapped = [map_tensors(v, fn) for v in obj]
        return type(obj)(*mapped) if hasattr(obj, "_fields") else type(obj)(mapped)  # type: ignore[arg-type]
    return obj


def tensors(obj: object) -> Iterator[Tensor]:
    """Every tensor in ``obj`` (nested as :func:`map_tensors` walks it)."""
    if isinstance(obj, Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from tensors(v)
    elif isinstance(obj, (tuple, list)):
        for v in obj:
            yield from tensors(v)


def to_device(obj: object, device: torch.device | str, dtype: torch.dtype | None = None) -> object:
    """``obj`` with every tensor in it (nested in tuples, lists and dicts) moved to ``device``; with
    ``dtype``, floating tensors are cast to it as well."""
    if dtype is None:
        return map_tensors(obj, lambda t: t.to(device))
    return map_tensors(obj, lambda t: t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device))


def take(inputs: object, n: int) -> object:
    """The first ``n`` samples of one batch's inputs (every tensor in a tuple, list or dict sliced)."""
    return map_tensors(inputs, lambda t: t[:n])


def gather(inputs: object, index: Tensor) -> object:
    """The samples ``index`` (indices or a boolean mask) of one batch's inputs, every tensor indexed."""
    return map_tensors(inputs, lambda t: t[index.to(t.device)])


def concat(parts: list[object]) -> object:
    """Several batches' inputs joined along the batch dimension (same structure in each)."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)  # type: ignore[arg-type]
    if isinstance(first, Mapping):
        return {k: concat([p[k] for p in parts]) for k in first}  # type: ignore[index]
    if isinstance(first, (tuple, list)):
        return type(first)(concat([p[i] for p in parts]) for i in range(len(first)))  # type: ignore[index]
    raise TypeError(f"data: inputs of type {type(first).__name__} cannot be joined; use tensors, tuples or dicts")


def call(model: nn.Module, inputs: object) -> object:
    """The model on one batch's inputs: ``model(**x)`` for a dict, ``model(*x)`` for a tuple or list,
    else ``model(x)``."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _keys(out: object) -> list[str]:
    if isinstance(out, Mapping):
        return [str(k) for k in out]
    if is_dataclass(out):
        return [f.name for f in fields(out)]
    return list(getattr(out, "_fields", []))


def pick(out: object, output: Output = None) -> Tensor:
    """The tensor to score from a model's output: ``output=None`` takes a tensor as it is; a ``str`` is a
    key of a dict (or a field of a dataclass / named tuple), an ``int`` an index into a tuple or list,
    a callable is applied to the output."""
    got: object
    if callable(output):
        got = output(out)
    elif output is None:
        got = out
    elif isinstance(output, bool) or not isinstance(output, (str, int)):
        raise TypeError(f"output: expected None, a key, an index or a callable, got {type(output).__name__}")
    elif isinstance(output, str):
        keys = _keys(out)
        if output not in keys:
            raise KeyError(f"output: {output!r} is not in the model's {type(out).__name__} output; its keys are {keys}")
        got = out[output] if isinstance(out, Mapping) else getattr(out, output)
    elif isinstance(out, (tuple, list)):
        if not -len(out) <= output < len(out):
            raise IndexError(f"output: index {output} is out of range for a model output of {len(out)} elements")
        got = out[output]
    else:
        raise TypeError(
            f"output: the index {output} needs a tuple or list output, the model returned {type(out).__name__}"
        )
    if not isinstance(got, Tensor):
        what = f" with keys {_keys(got)}" if _keys(got) else ""
        raise TypeError(
            f"output: the model's output is a {type(got).__name__}{what}, not a tensor; pass output= a key, an "
            "index or a callable that picks the tensor to score"
        )
    return got


def materialize(data: object, batch_size: int = 2048, device: torch.device | str | None = None) -> Batches:
    """The data as a list of ``(inputs, targets)`` batches, built once and reused by every trial, with
    every tensor on ``device`` (as given when ``None``). Accepts a Dataset (a TensorDataset of n tensors
    gives the first n-1 as inputs, the last as targets), a DataLoader, or a list of ``(inputs, targets)``."""
    if isinstance(data, list) and data and all(isinstance(b, tuple) and len(b) == 2 for b in data):
        batches: Batches = data
    elif isinstance(data, torch.utils.data.TensorDataset):
        ts = data.tensors
        if len(ts) < 2:
            raise ValueError("data: a TensorDataset needs inputs and targets (at least two tensors)")
        if len(ts[0]) == 0:
            raise ValueError("data: the dataset holds no sample; pass a non-empty Dataset or DataLoader")
        batches = []
        for i in range(0, len(ts[0]), batch_size):
            xs = tuple(t[i : i + batch_size] for t in ts[:-1])
            batches.append((xs[0] if len(xs) == 1 else xs, ts[-1][i : i + batch_size]))
    elif isinstance(data, (torch.utils.data.Dataset, Iterable)) and not isinstance(data, (str, bytes, Tensor)):
        if isinstance(data, torch.utils.data.Dataset) and not isinstance(data, Iterable):
            data = torch.utils.data.DataLoader(data, batch_size=batch_size)
        batches = [_pair(b) for b in data]
        if not batches:
            raise ValueError("data: it holds no batch; pass a non-empty Dataset or DataLoader")
    else:
        raise TypeError(
            f"data: expected a Dataset, a DataLoader or a list of (inputs, targets) batches, got {type(data).__name__}"
        )
    if device is not None and not all(_on(b, torch.device(device)) for b in batches):
        batches = [(to_device(x, device), y.to(device)) for x, y in batches]
    return batches


def _on(obj: object, device: torch.device) -> bool:
    """Whether every tensor in ``obj`` already lives on ``device`` (then no copy is made)."""
    return all(t.device == device or (device.index is None and t.device.type == device.type) for t in tensors(obj))


def _batches(data: object, batch_size: int) -> Batches:
    if isinstance(data, (Dataset, DataLoader, list)):
        return materialize(data, batch_size)
    return materialize(as_loader(data, batch_size))  # type: ignore[arg-type]  # raises, with a hint for a Split


def _pair(b: object) -> tuple[object, Tensor]:
    if isinstance(b, (tuple, list)) and len(b) >= 2 and isinstance(b[-1], Tensor):
        return (b[0] if len(b) == 2 else tuple(b[:-1])), b[-1]
    raise TypeError(
        f"data: each batch must be (inputs, targets) with a tensor of targets, got a {type(b).__name__}; "
        "inputs may be a tensor, a tuple of tensors or a dict of keyword arguments"
    )


@torch.no_grad()
def per_sample(model: nn.Module, batches: Batches, metric: MetricSpec = "accuracy", output: Output = None) -> Tensor:
    """The metric's score of every sample of ``batches`` (float64, CPU), in eval mode on the model's device."""
    m = resolve_metric(metric)
    device = model_device(model)
    parts = []
    with eval_mode(model):
        for x, y in batches:
            out = pick(call(model, to_device(x, device)), output)
            parts.append(m.scores(out, y.to(out.device)).cpu())
    if not parts:
        raise ValueError("data: it holds no batch; pass a non-empty Dataset or DataLoader")
    return torch.cat(parts)


def score(model: nn.Module, data: object, metric: MetricSpec = "accuracy", output: Output = None) -> float:
    """The mean of ``metric`` over ``data`` (materialized batches, a Dataset or a DataLoader): for accuracy
    the count of correct samples over the total, exactly."""
    return resolve_metric(metric).mean(per_sample(model, materialize(data), metric, output))


def batch_accuracy(model: nn.Module, batches: Batches, output: Output = None) -> float:
    """Fraction of correct predictions over materialized ``batches`` (see :func:`correct`)."""
    return score(model, batches, "accuracy", output)


@torch.no_grad()
def logits(
    model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024, output: Output = None
) -> tuple[Tensor, Tensor]:
    """All outputs (picked by ``output``) and targets of ``data``, in eval mode, on the CPU."""
    device = model_device(model)
    outs, ys = [], []
    with eval_mode(model):
        for x, y in _batches(data, batch_size):
            outs.append(pick(call(model, to_device(x, device)), output).float().cpu())
            ys.append(y.cpu())
    return torch.cat(outs), torch.cat(ys)


def predict(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024, output: Output = None) -> Tensor:
    """Predicted class per example; ``-1`` where the logits are not all finite."""
    out, _ = logits(model, data, batch_size, output)
    pred = out.argmax(dim=1)
    pred[~torch.isfinite(out).all(dim=1)] = -1
    return pred


def accuracy(model: nn.Module, data: Dataset | DataLoader, batch_size: int = 1024, output: Output = None) -> float:
    """Fraction of ``data`` classified correctly, in eval mode; examples with NaN/Inf logits count as wrong."""
    return score(model, _batches(data, batch_size), "accuracy", output)


def evaluate(
    model: nn.Module,
    data: Dataset | DataLoader,
    batch_size: int = 1024,
    metrics: Iterable[MetricSpec] = ("loss", "accuracy"),
    output: Output = None,
) -> dict[str, float]:
    """Each of ``metrics`` on ``data``, by name (default ``{"loss": mean cross-entropy, "accuracy": ...}``;
    the loss may be inf/nan for a corrupted model, the accuracy counts those rows as wrong)."""
    ms: list[Metric] = [resolve_metric(m) for m in metrics]
    if not ms:
        raise ValueError("metrics: empty; name at least one metric")
    out, y = logits(model, data, batch_size, output)
    res = {}
    for m in ms:
        s = m.scores(out, y)  # also checks that the outputs and targets suit the metric
        # the loss as the mean cross-entropy torch computes, as evaluate() always reported it
        res[m.name] = float(F.cross_entropy(out, y)) if m is METRICS["loss"] else m.mean(s)
    return res
