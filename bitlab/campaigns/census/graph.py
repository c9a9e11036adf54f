"""The census on a traced graph: any model ``torch.fx`` can trace (residual blocks, attention,
concatenations, recurrent layers as leaf modules), exact by construction.

The model is traced once (:func:`trace_graph`) and run once on the naive batches through its graph,
keeping a copy of every node's clean value per batch; the graph's logits must equal ``model(x)``
bit for bit, or the census falls back to the full forward and says why. A flip of a parameter then
recomputes only the nodes that depend on it (the modules that own it, the ``get_attr`` nodes that
read it, and everything downstream of them, in graph order) with the same calls on the same inputs as
the naive forward: every other node's value is the cached clean one, which the naive forward
computes the same way. So the outcome is the naive one, float for float, NaN/Inf included.

Two shortcuts keep it exact:

* **packed flipped layer** (:func:`packed_outputs`): flips that move different output units of a
  Conv/Linear/BatchNorm share one call of that module (each output element reads only its own
  weights; the engine's assumption, :mod:`.engine`), and each flip's output is the clean one with its
  unit spliced in, in a buffer of the naive output's strides;
* **unchanged values**: a recomputed value equal to the clean one bit for bit is clean from there on
  (a flip whose flipped layer's output does not change keeps the clean outcome without a suffix).

In-place operations (``+=``, ``inplace=True`` modules and functions, ``x.relu_()``) never touch the
cache: their cached inputs are copied first.
"""

from __future__ import annotations

import hashlib
import inspect
import operator
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ...evaluate import correct

#: a node's value: a tensor, a tuple of them, or any Python value the graph passes along
Value = Any

__all__ = ["CACHE_BYTES", "GraphRun", "dirty_nodes", "graph_counts", "packed_outputs", "packing", "trace_graph"]

#: the most bytes the cached clean values may take before the census falls back to the full forward
CACHE_BYTES = 4 << 30
#: modules whose output unit ``u`` reads only weight row / bias element / channel ``u`` of the named
#: parameter, and the dimension of the output that holds the units (-1: the last)
_UNITS: tuple[tuple[type[nn.Module], int], ...] = (
    (nn.Linear, -1),
    (nn.Conv1d, 1),
    (nn.Conv2d, 1),
    (nn.Conv3d, 1),
    (nn.BatchNorm1d, 1),
    (nn.BatchNorm2d, 1),
    (nn.BatchNorm3d, 1),
)
_IN_PLACE = {
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.iand,
    operator.ior,
    operator.ixor,
    operator.ilshift,
    operator.irshift,
    operator.imatmul,
    operator.setitem,
}


@dataclass(eq=False)
class GraphRun:
    """A traced model and its clean run: ``cache[b][node]`` is node's clean value on batch ``b``."""

    gm: fx.GraphModule
    nodes: list[fx.Node]
    cache: list[dict[fx.Node, Value]]
    labels: list[Tensor]
    modules: dict[str, nn.Module]
    clean_correct: int
    seconds: dict[str, float] = field(default_factory=lambda: {"flipped layer": 0.0, "suffix": 0.0})
    mutating: dict[fx.Node, bool] = field(default_factory=dict, repr=False)
    reads: dict[int, tuple[list[fx.Node], list[fx.Node]]] = field(default_factory=dict, repr=False)

    def counts(self, dirty: list[fx.Node], seeds: list[fx.Node], given: list[Tensor | None] | None = None) -> int:
        """Correct samples with the parameter as it is now stored: the ``dirty`` nodes recomputed on
        every batch, the ``seeds`` (the nodes that read the parameter) always; with ``given``, the one
        seed's value per batch is ``given[b]`` instead (None: its clean value)."""
        n_ok = 0
        for b, cached in enumerate(self.cache):
            env: dict[fx.Node, Value] = {}
            force = set(seeds)
            if given is not None:
                force = set()
                if given[b] is not None:
                    env[seeds[0]] = given[b]
            out = self.evaluate(dirty, force, cached, env)
            n_ok += int(correct(out, self.labels[b]).sum())  # type: ignore[arg-type]
        return n_ok

    def evaluate(
        self, dirty: list[fx.Node], force: set[fx.Node], cached: dict[fx.Node, Value], env: dict[fx.Node, Value]
    ) -> object:
        """The output of one batch: nodes in ``env`` are given, the ``force`` ones and the other ``dirty``
        ones whose inputs changed recomputed in graph order; every other node is its cached value (a
        forced node that comes out bit for bit clean counts as unchanged)."""
        for node in dirty:
            if node in env:
                continue
            if node.op == "output":
                break
            if node in force:
                value = self._run(node, cached, env)
                if not _same(value, cached[node]):
                    env[node] = value
            elif any(n in env for n in node.all_input_nodes):
                env[node] = self._run(node, cached, env)
            # else nothing it reads has changed: its clean value holds
        out = self.nodes[-1]
        arg = out.args[0]
        assert isinstance(arg, fx.Node)
        return env.get(arg, cached[arg])

    def _run(self, node: fx.Node, cached: dict[fx.Node, Value], env: dict[fx.Node, Value]) -> object:
        copy = self.mutating.get(node)
        if copy is None:
            copy = self.mutating[node] = _mutates(node, self.modules)

        def value(n: fx.Node) -> Value:
            if n in env:
                return env[n]
            v = cached[n]
            return _clone(v) if copy else v

        args = fx.node.map_arg(node.args, value)
        kwargs = fx.node.map_arg(node.kwargs, value)
        return _call(self.gm, self.modules, node, args, kwargs)


def _call(gm: fx.GraphModule, modules: dict[str, nn.Module], node: fx.Node, args: object, kwargs: object) -> object:
    assert isinstance(args, tuple) and isinstance(kwargs, dict)
    target = node.target
    if node.op == "call_module":
        assert isinstance(target, str)
        return modules[target](*args, **kwargs)
    if node.op == "call_function":
        assert callable(target)
        return target(*args, **kwargs)
    if node.op == "call_method":
        assert isinstance(target, str)
        return getattr(args[0], target)(*args[1:], **kwargs)
    if node.op == "get_attr":
        assert isinstance(target, str)
        obj: object = gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj
    raise RuntimeError(f"census graph: unexpected node {node.op} {node.name}")


def _mutates(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node`` may write into one of its inputs."""
    if node.op == "call_module":
        return bool(getattr(modules[str(node.target)], "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return name.endswith("_") and not name.startswith("__")
    if node.op == "call_function":
        target = node.target
        if target in _IN_PLACE or getattr(target, "__name__", "").endswith("_"):
            return True
        if node.kwargs.get("inplace", False):
            return True
        try:
            bound = inspect.signature(target).bind_partial(*node.args, **node.kwargs)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return bool(bound.arguments.get("inplace", False))
    return False


def _clone(v: object) -> object:
    if isinstance(v, Tensor):
        return v.clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_clone(u) for u in v)
    return v


def _bits(t: Tensor) -> Tensor:
    if t.is_floating_point() and t.element_size() in (2, 4, 8):
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def _same(a: object, b: object) -> bool:
    """Bit for bit the same value (NaN payloads and signs of zero included)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.stride() == b.stride()
            and a.device == b.device
            and torch.equal(_bits(a), _bits(b))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return bool(a == b) if type(a) is type(b) else False


def _versions(v: object) -> object:
    """The in-place version counters of a value's tensors (they move on every in-place write)."""
    if isinstance(v, Tensor):
        return v._version
    if isinstance(v, (tuple, list)):
        return tuple(_versions(u) for u in v)
    return None


def _nbytes(v: object) -> int:
    if isinstance(v, Tensor):
        return v.numel() * v.element_size()
    if isinstance(v, (tuple, list)):
        return sum(_nbytes(u) for u in v)
    return 0


def trace_graph(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    graph: fx.Graph | None = None,
    limit: int = CACHE_BYTES,
) -> tuple[GraphRun | None, str]:
    """The model traced by ``torch.fx`` and its clean run on the naive ``batches`` (call in
    ``torch.no_grad`` with the model in eval mode), or None and why not: the model cannot be traced,
    its forward needs more than one input, a node reads a value that an in-place operation changed
    after it was made (the graph would not show that dependence), the graph's output is not
    ``model(x)`` bit for bit, or the cached values would take more than ``limit`` bytes. With
    ``graph`` (another copy's trace of the same architecture) the model is not traced again."""
    try:
        gm = fx.symbolic_trace(model) if graph is None else fx.GraphModule(model, graph)
    except Exception as err:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        return None, f"torch.fx cannot trace {type(model).__name__} ({type(err).__name__}: {first[:200]})"
    nodes = list(gm.graph.nodes)
    holders = [n for n in nodes if n.op == "placeholder"]
    if not holders or any(not n.args for n in holders[1:]):
        return None, f"{type(model).__name__}.forward takes more than one input"
    modules = dict(gm.named_modules())
    cache: list[dict[fx.Node, Value]] = []
    total = n_ok = 0
    for x, y in batches:
        env: dict[fx.Node, Value] = {}
        live: dict[fx.Node, Value] = {}
        made: dict[fx.Node, Value] = {}  # the version counters of each value when it was made
        for node in nodes:
            if node.op == "placeholder":
                v: Value = x if node is holders[0] else node.args[0]
                env[node] = live[node] = v  # the batch itself, as the naive run passes it
                made[node] = _versions(v)
                continue
            if node.op == "output":
                break
            for u in node.all_input_nodes:
                if _versions(live[u]) != made[u]:  # written in place by a node the graph does not link
                    return None, (
                        f"node {node.name} reads {u.name} after an in-place operation changed it: the "
                        "graph's data flow is not the model's"
                    )
            args = fx.node.map_arg(node.args, live.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, live.__getitem__)
            v = _call(gm, modules, node, args, kwargs)
            live[node] = v
            made[node] = _versions(v)
            env[node] = _clone(v)  # later in-place ops (and flips of a parameter read by get_attr) leave the copy
            total += _nbytes(env[node])
            if total > limit:
                return None, f"the cached clean values would take more than {limit / 2**30:.1f} GiB"
        out_arg = nodes[-1].args[0]
        logits = live[out_arg] if isinstance(out_arg, fx.Node) else None
        if not isinstance(logits, Tensor) or not _same(logits, model(x)):
            return None, "the traced graph's output is not model(x) bit for bit"
        cache.append(env)
        n_ok += int(correct(logits, y).sum())
    return GraphRun(gm, nodes, cache, [y for _, y in batches], modules, n_ok), ""


def dirty_nodes(run: GraphRun, p: Tensor) -> tuple[list[fx.Node], list[fx.Node]]:
    """The nodes that read parameter ``p`` (the ``call_module`` nodes of every module that holds it,
    tied weights included, and the ``get_attr`` nodes that fetch it) and every node downstream of
    them, in graph order: (seeds, dirty). Computed once per parameter and run."""
    got = run.reads.get(id(p))
    if got is not None:
        return got
    holds = {
        target: any(q is p for q in m.parameters())
        for target, m in run.modules.items()
        if any(n.op == "call_module" and n.target == target for n in run.nodes)
    }
    seeds = [
        n
        for n in run.nodes
        if (n.op == "get_attr" and _call(run.gm, run.modules, n, (), {}) is p)
        or (n.op == "call_module" and holds[str(n.target)])
    ]
    dirty = set(seeds)
    for n in run.nodes:
        if any(u in dirty for u in n.all_input_nodes):
            dirty.add(n)
    got = run.reads[id(p)] = (seeds, [n for n in run.nodes if n in dirty])
    return got


def packing(run: GraphRun, p: Tensor, seeds: list[fx.Node]) -> tuple[int, int] | None:
    """(units, fan) when flips of ``p`` in different output units can share one call of its module:
    one seed, a module of :data:`_UNITS` that holds it directly as ``weight`` or ``bias``; else None."""
    if len(seeds) != 1 or seeds[0].op != "call_module":
        return None
    m = run.modules[str(seeds[0].target)]
    if not any(type(m) is t for t, _ in _UNITS) or not any(getattr(m, a, None) is p for a in ("weight", "bias")):
        return None
    if p.dim() == 0:
        return None
    units = p.shape[0]
    return units, p.numel() // units


def _unit_dim(m: nn.Module) -> int:
    return next(d for t, d in _UNITS if type(m) is t)


def packed_outputs(
    run: GraphRun,
    seed: fx.Node,
    flat: Tensor,
    sel: Tensor,
    values: Tensor,
    units: list[int],
) -> list[tuple[bytes, list[Tensor | None]]]:
    """Each flip's value of ``seed`` per batch, from one call of its module with all the flips written
    (``flat[sel] = values``, flips in different ``units``): the clean output with the flip's unit
    spliced in (None where the unit came out bit for bit clean), and a digest (BLAKE2b, 256 bits) of
    the bit patterns of its changed unit on every batch: flips with equal digests have the same
    flipped-layer output (a collision has probability ~2^-256) and so the same outcome."""
    m = run.modules[str(seed.target)]
    dim = _unit_dim(m)
    old = flat[sel].clone()
    flat[sel] = values.to(flat.dtype)
    try:
        outs = [_call(run.gm, run.modules, seed, *_inputs(seed, cached)) for cached in run.cache]
    finally:
        flat[sel] = old
    per_flip: list[tuple[bytes, list[Tensor | None]]] = []
    for u in units:
        row: list[Tensor | None] = []
        key = hashlib.blake2b(digest_size=32)
        for cached, out in zip(run.cache, outs):
            clean = cached[seed]
            assert isinstance(clean, Tensor) and isinstance(out, Tensor)
            new = out.select(dim, u)
            if _same(new, clean.select(dim, u)):
                row.append(None)
                continue
            key.update(b"%d|" % len(row))
            key.update(_bits(new.contiguous()).cpu().numpy().tobytes())
            buf = clean.clone()
            buf.select(dim, u).copy_(new)
            row.append(buf)
        per_flip.append((key.digest(), row))
    return per_flip


def _inputs(node: fx.Node, cached: dict[fx.Node, Value]) -> tuple[tuple, dict]:
    args = fx.node.map_arg(node.args, cached.__getitem__)
    kwargs = fx.node.map_arg(node.kwargs, cached.__getitem__)
    assert isinstance(args, tuple) and isinstance(kwargs, dict)
    return args, kwargs


def graph_counts(
    run: GraphRun,
    p: Tensor,
    idx: Tensor,
    new: Tensor,
    timer: Callable[[], float] = time.perf_counter,
) -> list[int]:
    """Correct samples of each flip ``p.view(-1)[idx[k]] = new[k]`` of parameter ``p``, exactly as
    the naive forward counts them (see the module docstring)."""
    seeds, dirty = dirty_nodes(run, p)
    if not dirty or dirty[-1].op != "output":
        return [run.clean_correct] * len(idx)  # nothing the output reads uses the parameter
    flat = p.data.view(-1)
    packed = packing(run, p, seeds)
    counts = [0] * len(idx)
    if packed is None:
        for k in range(len(idx)):
            i = int(idx[k])
            old = flat[i].clone()
            flat[i] = new[k].to(flat.dtype)
            t0 = timer()
            try:
                counts[k] = run.counts(dirty, seeds)
            finally:
                flat[i] = old
            run.seconds["suffix"] += timer() - t0
        return counts
    _, fan = packed
    unit = (idx // fan).tolist()
    queues: dict[int, list[int]] = {}
    for k, u in enumerate(unit):
        queues.setdefault(u, []).append(k)
    seen: dict[tuple[int, bytes], int] = {}
    for r in range(max((len(q) for q in queues.values()), default=0)):
        pack = sorted(q[r] for q in queues.values() if r < len(q))
        t0 = timer()
        outs = packed_outputs(run, seeds[0], flat, idx[pack], new[pack], [unit[k] for k in pack])
        t1 = timer()
        for k, (key, row) in zip(pack, outs):
            if all(v is None for v in row):
                counts[k] = run.clean_correct
            elif (unit[k], key) in seen:  # a twin: the same output of the flipped layer
                counts[k] = seen[unit[k], key]
            else:
                counts[k] = seen[unit[k], key] = run.counts(dirty, seeds, row)
        run.seconds["flipped layer"] += t1 - t0
        run.seconds["suffix"] += timer() - t1
    return counts
