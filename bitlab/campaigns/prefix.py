"""Trials that start where the first flip is: for an ``nn.Sequential`` chain, a BER trial runs only the
children from the first one whose stored tensors were hit, from the cached clean input of that child.

The cache is the input of every child on every evaluation batch, taken once per store inside its
fault-free read (so a lossy store's read-back weights, e.g. FP16 of float32 weights, are what it saw), in
eval mode, in the grad mode the full evaluation runs in. A trial then calls the same children on the same
inputs as ``Sequential.forward``: every value, and so every row, is the full forward's, float for float
(tested against the full forward on the same frames). Children before the first hit one hold exactly the
weights the cache was taken with: an unhit tensor of a native store is not touched, and a dense store
writes its fault-free read into every tensor on every trial.

Where it does not apply, a trial runs the whole forward, and the frame's ``attrs["trial path"]`` says
which path ran and why: the model is not a plain ``nn.Sequential`` (a subclass, or hooks on it), a stored
tensor belongs to two children or to none, an input is not one tensor, or the cache would take more than
:data:`PREFIX_BYTES`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..evaluate import Batches, Output, eval_mode, model_device, pick, to_device
from ..faults import BitErrorRate
from ..inject import InjectionReport, Store
from ..metrics import Metric

__all__ = ["PREFIX_BYTES", "READ_ONLY", "ChainPrefix", "chain_prefix", "reads_only"]

#: the most bytes the cached inputs of one store may take (read when a campaign builds its cache)
PREFIX_BYTES = 1 << 30

#: layers that never write into their input (their kept input is passed without a copy)
READ_ONLY = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding)


def reads_only(m: nn.Module) -> bool:
    """Whether calling ``m`` leaves its input as it was: a stock layer of :data:`READ_ONLY` without hooks
    (a hook may write into the input)."""
    return type(m) in READ_ONLY and not (m._forward_pre_hooks or m._forward_hooks)


@dataclass
class ChainPrefix:
    """The children of a chain, the child that holds each stored tensor (by name), and ``inputs[b][k]``,
    the clean input of child ``k`` on batch ``b``."""

    children: list[nn.Module]
    owner: dict[str, int]
    inputs: list[list[Tensor]]

    def first_hit(self, report: InjectionReport) -> int:
        """The first child whose stored tensors the injection hit (the report holds at least one flip)."""
        return min(self.owner[name] for name, n in report.per_param.items() if n)

    def score(self, model: nn.Module, batches: Batches, metric: Metric, output: Output, start: int) -> float:
        """``metric``'s mean over ``batches`` with the children from ``start`` on run from their cached
        input: :func:`bitlab.evaluate.score`'s value, float for float."""
        first, rest = self.children[start], self.children[start + 1 :]
        copy = not reads_only(first)
        parts = []
        with eval_mode(model):
            for b, (_, y) in enumerate(batches):
                h = self.inputs[b][start]
                h = first(h.clone() if copy else h)
                for child in rest:
                    h = child(h)
                out = pick(h, output)
                parts.append(metric.scores(out, y.to(out.device)).cpu())
        return metric.mean(torch.cat(parts))


def chain_prefix(model: nn.Module, batches: Batches, store: Store, limit: int | None = None) -> ChainPrefix | str:
    """The cache of ``model``'s chain on ``batches`` at the fault-free read of ``store``, or why there is
    none (a reason by name; see the module notes). ``limit``: bytes, default :data:`PREFIX_BYTES`."""
    limit = PREFIX_BYTES if limit is None else limit
    if type(model) is not nn.Sequential or model._forward_hooks or model._forward_pre_hooks:
        return f"the model is a {type(model).__name__}, not a plain nn.Sequential without hooks"
    children = list(model)
    held: dict[int, int] = {}
    for k, child in enumerate(children):
        for t in [*child.parameters(), *child.buffers()]:
            if held.setdefault(id(t), k) != k:
                return "a tensor is held by two children of the chain"
    owner: dict[str, int] = {}
    for slot in store.slots:
        holder = held.get(id(slot.tensor))
        if holder is None:
            return f"the stored tensor {slot.name!r} belongs to no child of the chain"
        owner[slot.name] = holder
    if not all(isinstance(x, Tensor) for x, _ in batches):
        return "an input of the batches is not one tensor"
    device = model_device(model)
    inputs: list[list[Tensor]] = []
    total = 0
    with store.corrupted(BitErrorRate(0.0)), eval_mode(model):
        for x, _ in batches:
            h = to_device(x, device)
            kept = []
            for k, child in enumerate(children):
                if not isinstance(h, Tensor):
                    return f"child {k} of the chain gets a {type(h).__name__}, not a tensor"
                kept.append(h.detach().clone())  # a child may write into its input (ReLU(inplace=True))
                total += kept[-1].element_size() * kept[-1].numel()
                if total > limit:
                    return f"the cached inputs would take more than {limit / 2**30:.1f} GiB (PREFIX_BYTES)"
                h = child(h)
            inputs.append(kept)
    return ChainPrefix(children, owner, inputs)
