"""Where the bit-flip attack's tried flips start from: the attack batch's clean input to each layer, so that a
tried flip recomputes only the layers after the flipped one (Rakin et al.'s progressive bit search tries
``k`` flips per layer per step, each by its real loss).

* An ``nn.Sequential`` whose parameters each belong to one child (:class:`ChainRun`): the input of every
  child is kept, and a trial runs the children from the flipped one on, as ``Sequential.forward`` does.
* Any other model ``torch.fx`` can trace: its graph (:class:`~.census.graph.GraphRun`).
* Otherwise none: every trial runs the whole forward.

Either way a trial's value is the full forward's, float for float: the same calls on the same inputs.
The clean values are taken without autograd, as the full-forward trials run (a layer's fused fast path,
e.g. ``nn.TransformerEncoderLayer``'s, runs only without it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..evaluate import Output
from .census.graph import GraphRun, traced
from .pbs import LossFn, flipped_values, trial_values
from .prefix import reads_only

__all__ = ["ChainRun", "chain_run", "refresh", "trial_run", "tried_values"]


@dataclass
class ChainRun:
    """The children of an ``nn.Sequential``, which child holds each parameter (``id``), and the attack
    batch's input to each child at the current weights."""

    children: list[nn.Module]
    owner: dict[int, int]
    inputs: list[Tensor]


def chain_run(model: nn.Module, x: Tensor) -> ChainRun | None:
    """A :class:`ChainRun` of ``model`` on ``x``, or None where ``model`` is not a plain ``nn.Sequential``
    (a subclass, hooks on it), two children hold the same parameter or memory, or a layer's output is not a
    tensor."""
    if type(model) is not nn.Sequential or model._forward_hooks or model._forward_pre_hooks:
        return None
    children = list(model)
    owner: dict[int, int] = {}
    memory: dict[int, int] = {}
    for k, child in enumerate(children):
        for p in child.parameters():
            where = p.untyped_storage().data_ptr()
            if memory.setdefault(where, k) != k or owner.setdefault(id(p), k) != k:
                return None
    run = ChainRun(children, owner, [])
    return run if refresh(run, x) is not None else None


def refresh(run: ChainRun | GraphRun, x: Tensor, changed: Tensor | None = None) -> ChainRun | GraphRun | None:
    """``run`` holding the clean values of ``x`` at the current weights, or None where it cannot.
    ``changed``: the only parameter written since ``run`` last held them; a chain then recomputes only the
    inputs of the children after the one holding it (those before see the same values)."""
    with torch.no_grad():
        if isinstance(run, GraphRun):
            try:
                env, _, why = run.clean_pass(x)
            except Exception:  # the graph raised where the model, just run on x, did not
                return None
            if why:
                return None
            run.hold(env, fresh=True)
            return run
        start = 0 if changed is None or not run.inputs else run.owner[id(changed)] + 1
        if start:
            inputs = run.inputs[:start]
            h = run.children[start - 1](inputs[-1].clone())
        else:
            h, inputs = x, []
        for child in run.children[start:]:
            if not isinstance(h, Tensor):
                return None
            inputs.append(h.clone())  # a child may write into its input (ReLU(inplace=True))
            h = child(h)
        run.inputs = inputs
        return run if isinstance(h, Tensor) else None


def trial_run(model: nn.Module, x: Tensor) -> ChainRun | GraphRun | None:
    """The attack's trial run for ``model`` on the attack batch ``x`` (see the module docstring)."""
    with torch.no_grad():
        chain = chain_run(model, x)
    return chain if chain is not None else traced(model, x)


def tried_values(
    run: ChainRun | GraphRun,
    p: Tensor,
    flips: list[tuple[int, float]],
    y: Tensor,
    output: Output,
    loss_fn: LossFn,
) -> list[float]:
    """The attack objective with each flip ``p.reshape(-1)[i] = new`` of ``flips`` on its own, recomputing
    only what follows the layer of ``p``. Call under ``torch.no_grad``; ``p`` is as it was on return."""
    if isinstance(run, GraphRun):
        return trial_values(run, p, flips, y, output, loss_fn)
    k = run.owner[id(p)]
    first, rest = run.children[k], run.children[k + 1 :]
    # the kept input goes to the flipped layer only: a copy where that layer might write into it (a stock
    # Linear / Conv never does, and without hooks nothing else runs on it; every later layer reads fresh outputs)
    pure = reads_only(first)

    def forward() -> Tensor:
        h = first(run.inputs[k] if pure else run.inputs[k].clone())
        for child in rest:
            h = child(h)
        return h

    return flipped_values(p, flips, forward, y, output, loss_fn)
