"""The census on a traced graph: any model ``torch.fx`` can trace (residual blocks, attention,
concatenations, recurrent layers as leaf modules), exact by construction.

The model is traced once (:func:`trace_graph`) and run once on the naive batches through its graph,
keeping a copy of every node's clean value per batch; the graph's logits must equal ``model(x)``
bit for bit, or the census falls back to the full forward and says why. A flip of a parameter then
recomputes only the nodes that depend on it (the modules that own it, the ``get_attr`` nodes that
read it, and everything downstream of them, in graph order) with the same calls on the same inputs as
the naive forward: every other node's value is the cached clean one, which the naive forward
computes the same way. So the outcome is the naive one, float for float, NaN/Inf included.

Shortcuts that keep it exact: a node none of whose inputs changed keeps its clean value; a flipped
layer whose output comes out bit for bit clean keeps the clean outcome without a suffix; and, per
parameter (:mod:`.graph_flips`), flips in different output units of a Conv/Linear/BatchNorm share one
call of it, and flips whose flipped layer gives the same output share the rest. The bit-flip attack
uses the same machinery for the flips it tries (:func:`bitlab.campaigns.pbs.trial_values`).

In-place operations (``inplace=True`` modules and functions, ``x.relu_()``, ``x[i] = v``) never touch
the cache: their cached inputs are copied first; a model whose graph hides an in-place write (a value
read after an in-place operation changed it) is refused, and the census says why. (fx records
``a += b`` as ``a + b``.)
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn

from ...evaluate import correct

#: a node's value: a tensor, a tuple of them, or any Python value the graph passes along
Value = Any

__all__ = [
    "CACHE_BYTES",
    "GraphRun",
    "bit_view",
    "call_node",
    "dirty_nodes",
    "same_bits",
    "trace_graph",
    "traced",
]

#: the most bytes the cached clean values may take before the census falls back to the full forward
CACHE_BYTES = 4 << 30
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

    def clean_pass(self, x: Tensor, limit: int = CACHE_BYTES) -> tuple[dict[fx.Node, Value], Value, str]:
        """One batch through the graph, as the naive forward runs it: (a copy of every node's value,
        the output as computed, "") or ``({}, None, why)`` when a node reads a value an in-place
        operation changed after it was made (the graph would not show that dependence) or the copies
        would take more than ``limit`` bytes. Under autograd the output keeps its graph."""
        env: dict[fx.Node, Value] = {}
        live: dict[fx.Node, Value] = {}
        made: dict[fx.Node, Value] = {}  # the version counters of each value when it was made
        total = 0
        first = next(n for n in self.nodes if n.op == "placeholder")
        for node in self.nodes:
            if node.op == "placeholder":
                v: Value = x if node is first else node.args[0]
                env[node] = live[node] = v  # the batch itself, as the naive run passes it
                made[node] = _versions(v)
                continue
            if node.op == "output":
                break
            for u in node.all_input_nodes:
                if _versions(live[u]) != made[u]:  # written in place by a node the graph does not link
                    why = f"node {node.name} reads {u.name} after an in-place operation changed it: the "
                    return {}, None, why + "graph's data flow is not the model's"
            args = fx.node.map_arg(node.args, live.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, live.__getitem__)
            v = call_node(self.gm, self.modules, node, args, kwargs)
            live[node] = v
            made[node] = _versions(v)
            env[node] = _detached(v)  # later in-place ops (and flips of a parameter read by get_attr) leave the copy
            total += _nbytes(env[node])
            if total > limit:
                return {}, None, f"the cached clean values would take more than {limit / 2**30:.1f} GiB"
        return env, fx.node.map_arg(self.nodes[-1].args[0], live.__getitem__), ""

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
        self,
        dirty: list[fx.Node],
        force: set[fx.Node],
        cached: dict[fx.Node, Value],
        env: dict[fx.Node, Value],
        check: bool = True,
    ) -> object:
        """The output of one batch: nodes in ``env`` are given, the ``force`` ones and the other ``dirty``
        ones whose inputs changed recomputed in graph order; every other node is its cached value (with
        ``check``, a forced node that comes out bit for bit clean counts as unchanged)."""
        for node in dirty:
            if node in env:
                continue
            if node.op == "output":
                break
            if node in force:
                value = self._run(node, cached, env)
                if not (check and same_bits(value, cached[node])):
                    env[node] = value
            elif any(n in env for n in node.all_input_nodes):
                env[node] = self._run(node, cached, env)
            # else nothing it reads has changed: its clean value holds
        return fx.node.map_arg(self.nodes[-1].args[0], lambda n: env[n] if n in env else cached[n])

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
        return call_node(self.gm, self.modules, node, args, kwargs)


def call_node(gm: fx.GraphModule, modules: dict[str, nn.Module], node: fx.Node, args: object, kwargs: object) -> object:
    """What ``node`` computes from its ``args`` and ``kwargs`` (the values of its inputs)."""
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


def _detached(v: object) -> object:
    if isinstance(v, Tensor):
        return v.detach().clone()
    if isinstance(v, (tuple, list)):
        return type(v)(_detached(u) for u in v)
    return v


def bit_view(t: Tensor) -> Tensor:
    """A float tensor as integers of its width (its bit patterns); any other tensor as it is."""
    if t.is_floating_point() and t.element_size() in (2, 4, 8):
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def same_bits(a: object, b: object) -> bool:
    """Bit for bit the same value (NaN payloads and signs of zero included)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return (
            a.dtype == b.dtype
            and a.shape == b.shape
            and a.stride() == b.stride()
            and a.device == b.device
            and torch.equal(bit_view(a), bit_view(b))
        )
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_bits(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_bits(a[k], b[k]) for k in a)
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


def traced(model: nn.Module, x: Tensor) -> GraphRun | None:
    """The model's graph with the clean values of one batch ``x`` (no labels), or None where the
    census would fall back (see :func:`trace_graph`); the output may be any structure."""
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # fx raises many types
        return None
    nodes = list(gm.graph.nodes)
    holders = [n for n in nodes if n.op == "placeholder"]
    if not holders or any(not n.args for n in holders[1:]):
        return None
    run = GraphRun(gm, nodes, [], [], dict(gm.named_modules()), 0)
    with torch.no_grad():
        env, out, why = run.clean_pass(x)
        if why or not same_bits(out, model(x)):
            return None
    run.cache.append(env)
    return run


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
    run = GraphRun(gm, nodes, [], [y for _, y in batches], modules, 0)
    total = 0
    for x, y in batches:
        env, out, why = run.clean_pass(x, limit - total)
        if why:
            return None, why
        if not isinstance(out, Tensor) or not same_bits(out, model(x)):
            return None, "the traced graph's output is not model(x) bit for bit"
        run.cache.append(env)
        total += sum(_nbytes(v) for v in env.values())
        run.clean_correct += int(correct(out, y).sum())
    return run, ""


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
        if (n.op == "get_attr" and call_node(run.gm, run.modules, n, (), {}) is p)
        or (n.op == "call_module" and holds[str(n.target)])
    ]
    dirty = set(seeds)
    for n in run.nodes:
        if any(u in dirty for u in n.all_input_nodes):
            dirty.add(n)
    got = run.reads[id(p)] = (seeds, [n for n in run.nodes if n in dirty])
    return got
