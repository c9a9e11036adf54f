"""The census's work items: each parameter's flips planned as chunks (:func:`plan_param`), and the
runner's work (:class:`CensusChunks`) that computes a chunk's correct-sample counts on its path, in this
process or on any executor (:mod:`bitlab.campaigns.runner`).

A chunk is the item ``(parameter, start, step)``: flips ``order[start : start + step]`` of the
parameter, in the census's computation order. Its row is ``{"accuracies": [...]}`` plus the counts of
how its flips were decided (``certified``, ``rechecked``, ``recomputed``). A copy of the work that
travels (a process, a Dask worker, a thread's deep copy) rebuilds the clean run and the plan from its
own copy of the model once, before its first chunk; the outcomes are exact on every path, so the rows
do not depend on where a chunk ran (which chunks the bounds decide may, with the per-parameter screen
probe, so the counts of ``attrs["stats"]`` can differ between executors).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import Tensor, nn

from .budget import ELEMENTS_PER_CHUNK
from .certify import certify
from .clean import CleanRun, count_correct, run_clean
from .cost import ScreenChoice
from .exact import exact_packed, packable, recompute_one
from .graph import GraphRun, dirty_nodes, trace_graph
from .graph_flips import flat_view, graph_counts, packing
from .layers import chain_layers, owner
from .rounding import fan_in
from .screen import certifiable, uncertified_reason

__all__ = [
    "BOUNDS",
    "FULL_FORWARD",
    "GRAPH_SUFFIX",
    "NAIVE_LOOP",
    "PACKED_EXACT",
    "SUFFIX_RERUN",
    "CensusChunks",
    "plan_param",
]

#: the path each parameter's flips take (``df.attrs["paths"]``)
BOUNDS, PACKED_EXACT, SUFFIX_RERUN, GRAPH_SUFFIX, FULL_FORWARD, NAIVE_LOOP = (
    "bounds",
    "packed exact",
    "suffix rerun",
    "graph suffix",
    "full forward",
    "naive loop",
)

STATS = ("certified", "rechecked", "recomputed")


@dataclass(eq=False)
class Param:
    """One parameter's flips, in the order the census computes them, and the path they take."""

    name: str
    param: nn.Parameter
    path: str
    layer: int  # the chain layer that owns the parameter (0 with FULL_FORWARD)
    attr: str  # "weight", "bias", ...
    flip_index: Tensor  # (flips,) the weight each flip changes (weight-major, bits inner)
    flip_value: Tensor  # (flips,) what it reads back as
    order: Tensor  # (flips,) computation order: chunk s holds flips order[s : s + step]
    step: int  # flips per chunk
    choice: ScreenChoice = field(default_factory=ScreenChoice)

    def chunks(self) -> list[tuple[str, int, int]]:
        """The items of this parameter's flips: ``(name, start, step)``."""
        return [(self.name, s, self.step) for s in range(0, len(self.order), self.step)]


def plan_param(
    model: nn.Module,
    clean: CleanRun | None,
    n_total: int,
    name: str,
    p: nn.Parameter,
    idx: Tensor,
    flipped: Tensor,
    nb: int,
    batch_flips: int,
    uncertified: dict[str, str],
    graph: GraphRun | None = None,
) -> Param:
    """The path, order and chunk size of one parameter's flips; why the bounds do not cover it (a
    float16/bfloat16 chain, a GPU) goes to ``uncertified``, by name. A parameter the chain does not
    own, or one it cannot index flat (not contiguous: a channels-last weight), takes the traced ``graph``
    (:mod:`.graph`) when there is one, else the full forward."""
    where = None if clean is None or not p.is_contiguous() else owner(clean.layers, model, name)
    flip_index = idx.repeat_interleave(nb)
    order = torch.arange(len(flip_index))
    step = batch_flips
    if (clean is None or where is None) and graph is not None:
        packed = packing(graph, p, dirty_nodes(graph, p)[0])
        if packed is not None:  # interleave output units, so that a chunk's flips share module calls
            units, fan = packed
            bitpos = torch.arange(nb).repeat(len(idx))
            rank = ((flip_index % fan) * nb + bitpos) * units + flip_index // fan
            order = torch.argsort(rank, stable=True)
        return Param(name, p, GRAPH_SUFFIX, 0, "", flip_index, flipped.reshape(-1), order, step)
    if clean is None or where is None:
        return Param(name, p, FULL_FORWARD, 0, "", flip_index, flipped.reshape(-1), order, step)
    l, attr = where
    path = BOUNDS if certifiable(clean, l, attr) else PACKED_EXACT if packable(clean, l, attr) else SUFFIX_RERUN
    why = uncertified_reason(clean, l)
    if path != BOUNDS and why is not None:  # recomputed exactly, said by name
        uncertified[name] = why
    if packable(clean, l, attr):  # interleave output channels, so that a chunk's flips share layer calls
        fan = 1 if attr == "bias" else fan_in(clean.layers[l])
        n_ch = clean.acts[l + 1].shape[1]
        bitpos = torch.arange(nb).repeat(len(idx))
        rank = ((flip_index % fan) * nb + bitpos) * n_ch + flip_index // fan
        order = torch.argsort(rank, stable=True)
    if path == BOUNDS:
        per_flip = 16 * n_total  # the screen's (flips, samples) arrays; rows are sub-batched
        step = max(1, min(batch_flips, ELEMENTS_PER_CHUNK // max(per_flip, 1)))
    return Param(name, p, path, l, attr, flip_index, flipped.reshape(-1), order, step)


@dataclass(eq=False)
class CensusChunks:
    """The runner's work of one census: ``model`` (in eval mode, its weights as stored in the census
    format), the naive ``batches``, the visited weights ``plan`` with their ``flipped`` values, the bit
    count ``nb`` and ``batch_flips``. The clean run and the plan are built where the chunks run, once
    per copy (:meth:`prepare`), and never pickled."""

    model: nn.Module
    batches: list[tuple[Tensor, Tensor]]
    plan: list[tuple[str, Tensor]]
    flipped: dict[str, Tensor]
    nb: int
    batch_flips: int
    clean: CleanRun | None = field(default=None, repr=False)
    n_total: int = 0
    jobs: dict[str, Param] = field(default_factory=dict, repr=False)
    uncertified: dict[str, str] = field(default_factory=dict)
    graph: GraphRun | None = field(default=None, repr=False)
    untraced: str = ""  # why the model took the full forward instead of its traced graph ("" if it did not)
    template: fx.Graph | None = field(default=None, repr=False)  # a thread's copy: the caller's trace

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("clean", "jobs", "graph", "template")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, clean=None, jobs={}, graph=None, template=None)

    def __deepcopy__(self, memo: dict) -> CensusChunks:
        """A copy for a thread: it plans again on its own copy of the model, from this copy's traced
        graph when there is one (``torch.fx`` tracing patches ``nn.Module.__call__`` for every thread
        while it runs, so it must not run next to another thread's census)."""
        new = CensusChunks.__new__(CensusChunks)
        new.__setstate__(copy.deepcopy(self.__getstate__(), memo))
        new.template = None if self.graph is None else copy.deepcopy(self.graph.gm.graph)
        return new

    def prepare(self) -> None:
        """The clean run of the chain (if the model is one), else of its traced graph if any parameter
        needs it, and every parameter's plan (call in ``torch.no_grad``, with the model in eval mode and
        stored in the census format)."""
        layers = chain_layers(self.model)
        self.clean = run_clean(layers, self.batches) if layers is not None else None
        self.n_total = sum(len(b[1]) for b in self.batches) if self.clean is None else len(self.clean.y)
        lookup = dict(self.model.named_parameters())
        clean = self.clean
        needs_graph = clean is None or any(
            owner(clean.layers, self.model, name) is None or not lookup[name].is_contiguous() for name, _ in self.plan
        )
        if needs_graph and not self.untraced:  # a copy of a caller whose graph was refused keeps its answer
            self.graph, self.untraced = trace_graph(self.model, self.batches, self.template)
        self.jobs = {
            name: plan_param(
                self.model,
                self.clean,
                self.n_total,
                name,
                lookup[name],
                idx,
                self.flipped[name],
                self.nb,
                self.batch_flips,
                self.uncertified,
                self.graph,
            )
            for name, idx in self.plan
        }

    def __call__(self, item: tuple[object, ...]) -> dict[str, object]:
        name, start, step = item
        assert isinstance(name, str) and isinstance(start, int) and isinstance(step, int)
        with torch.no_grad():
            if not self.jobs:
                self.model.eval()  # a copy that travelled: pickled in eval mode; a thread's copy too
                self.prepare()
            job = self.jobs[name]
            if job.step != step:
                raise RuntimeError(f"census chunk {item!r}: this copy plans chunks of {job.step} flips")
            sel = job.order[start : start + step]
            stats = dict.fromkeys(STATS, 0)
            counts = self._counts(job, job.flip_index[sel], job.flip_value[sel], stats)
        return {"accuracies": [c / self.n_total for c in counts], **stats}

    def _counts(self, job: Param, idx: Tensor, new: Tensor, stats: dict[str, int]) -> list[int]:
        """Correct-sample counts of one chunk of flips, on the parameter's path; counted in ``stats``."""
        clean = self.clean
        if job.path == GRAPH_SUFFIX:
            assert self.graph is not None
            counts = graph_counts(self.graph, job.param, idx, new)
            stats["recomputed"] += len(counts)
            return counts
        if job.path in (BOUNDS, PACKED_EXACT):
            assert clean is not None
            if job.path == BOUNDS:
                counts, redone, rechecked = certify(clean, job.layer, job.attr, idx, new, job.choice)
                n_redone = int(redone.sum())
                stats["rechecked"] += rechecked
            else:
                counts, _ = exact_packed(clean, job.layer, job.attr, idx, new)
                n_redone = len(counts)
            stats["certified"] += len(counts) - n_redone
            stats["recomputed"] += n_redone
            return counts
        if job.path == FULL_FORWARD:
            counts = [_full_forward(self.model, job.param, int(i), v, self.batches) for i, v in zip(idx, new)]
        else:
            counts = [
                recompute_one(self.model, job.param, int(i), v, clean, job.layer, self.batches)
                for i, v in zip(idx, new)
            ]
        stats["recomputed"] += len(counts)
        return counts


def _full_forward(model: nn.Module, p: nn.Parameter, index: int, value: Tensor, batches: list) -> int:
    """Correct samples of the full forward with ``p.reshape(-1)[index] = value`` (any strides)."""
    flat, pos = flat_view(p)
    i = index if pos is None else int(pos[index])
    old = flat[i].clone()
    flat[i] = value
    try:
        return count_correct(model, batches)
    finally:
        flat[i] = old
