"""The census on a traced graph: any model ``torch.fx`` can trace (residual blocks, attention,
concatenations, recurrent layers as leaf modules), exact by construction.

The model is traced once (:func:`trace_graph`) and run once on the naive batches through its graph,
keeping a copy of every node's clean value per batch; the graph's logits must equal ``model(x)``
bit for bit, or the census falls back to the full forward and says why. A flip of a parameter then
recomputes only the nodes that read its memory (the modules that hold it or a tensor on the same
memory, the ``get_attr`` nodes that fetch one) and everything downstream of them, in graph order, with
the same calls on the same inputs as the naive forward: every other node's value is the cached clean
one, which the naive forward computes the same way. So the outcome is the naive one, float for float.

Shortcuts that keep it exact: a node none of whose inputs changed keeps its clean value; a flipped
layer whose output comes out bit for bit clean keeps the clean outcome without a suffix; and, per
parameter (:mod:`.graph_flips`), flips in different output units of a Conv/Linear/BatchNorm share one
call of it, and flips whose flipped layer gives the same output share the rest. The bit-flip attack
uses the same machinery for the flips it tries (:func:`bitlab.campaigns.pbs.trial_values`).

In-place operations (``inplace=True``, ``x.relu_()``, ``x[i] = v``, ``out=``, and ``a += b``, traced
as the in-place ``operator.iadd`` Python runs, not as a plain trace's ``a + b``) never touch the
cache: their inputs on the cache's memory (a cached value, or a view of one a recomputed node returns)
are copied first. A graph that hides an in-place write (a node reads a value, a tensor or a tuple,
list or dict of them, after an in-place operation changed it: seen by version counters and by writes
to the memory, ``x.data.add_(...)`` included) is refused, and the census says why. Cached copies keep
each tensor's strides (a broadcast stays a broadcast).
"""

from __future__ import annotations

import copy
import inspect
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import Tensor, nn
from torch.fx.proxy import Attribute

from ...evaluate import correct
from ...formats import bit_view, same_bits

#: a node's value: a tensor, a tuple of them, or any Python value the graph passes along
Value = Any

__all__ = [
    "CACHE_BYTES",
    "GraphRun",
    "bit_view",
    "call_node",
    "copy_value",
    "dirty_nodes",
    "same_bits",
    "span",
    "storage_key",
    "trace_graph",
    "traced",
]

#: the most bytes the cached clean values may take before the census falls back to the full forward
#: (read when a census starts: set ``bitlab.campaigns.census.graph.CACHE_BYTES`` higher to allow more)
CACHE_BYTES = 4 << 30
_AUGMENTED = "iadd isub imul itruediv ifloordiv imod ipow iand ior ixor ilshift irshift imatmul".split()
_IN_PLACE = {getattr(operator, name) for name in _AUGMENTED} | {operator.setitem, operator.delitem}
#: methods that change their object: of Python containers, and the dunders of in-place operators
_METHODS = {"append", "extend", "insert", "pop", "popitem", "remove", "clear", "update", "setdefault"}
_METHODS |= {"__setitem__", "__delitem__"} | {f"__{name}__" for name in _AUGMENTED}


class _Proxy(fx.Proxy):
    """A ``torch.fx`` proxy that records ``a += b`` (and the other augmented assignments) as the
    in-place ``operator.iadd(a, b)`` that eager Python runs on a tensor, not as ``a + b``."""

    def __getattr__(self, k: str) -> Attribute:
        return _Attribute(self, k)


class _Attribute(Attribute, _Proxy):
    """``proxy.name``, with the augmented assignments of :class:`_Proxy`."""


def _augmented(op: Any) -> Any:
    return lambda a, b: a.tracer.create_proxy("call_function", op, (a, b), {})


for _name in _AUGMENTED:
    setattr(_Proxy, f"__{_name}__", _augmented(getattr(operator, _name)))


class _Tracer(fx.Tracer):
    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)


@dataclass(eq=False)
class GraphRun:
    """A traced model and its clean run: ``cache[b][node]`` is node's clean value on batch ``b``
    (kept with :meth:`hold`, which also notes the memory the cache is on, in ``held``)."""

    gm: fx.GraphModule
    nodes: list[fx.Node]
    cache: list[dict[fx.Node, Value]]
    labels: list[Tensor]
    modules: dict[str, nn.Module]
    clean_correct: int
    seconds: dict[str, float] = field(default_factory=lambda: {"flipped layer": 0.0, "suffix": 0.0})
    mutating: dict[fx.Node, bool] = field(default_factory=dict, repr=False)
    reads: dict[int, tuple[list[fx.Node], list[fx.Node]]] = field(default_factory=dict, repr=False)
    held: set[int | None] = field(default_factory=set, repr=False)

    def hold(self, env: dict[fx.Node, Value], fresh: bool = False) -> None:
        """Keep ``env`` (a :meth:`clean_pass`'s values) as the next batch's cache (``fresh``: the only one)."""
        if fresh:
            self.cache, self.held = [], set()
        self.cache.append(env)
        self.held.update(storage_key(t) for v in env.values() for t in _tensors(v))
        self.held.discard(None)

    def clean_pass(self, x: Tensor, limit: int | None = None, used: int = 0) -> tuple[dict[fx.Node, Value], Value, str]:
        """One batch through the graph, as the naive forward runs it: (a copy of every node's value,
        the output as computed, "") or ``({}, None, why)`` when a node reads a value an in-place
        operation changed after it was made (the graph would not show that dependence) or the copies
        would take more than ``limit`` bytes (default :data:`CACHE_BYTES`) on top of ``used``."""
        limit = CACHE_BYTES if limit is None else limit
        env: dict[fx.Node, Value] = {}
        live: dict[fx.Node, Value] = {}
        made: dict[fx.Node, object] = {}  # each value's state when it was made (see _state)
        writes: dict[int | None, int] = {}  # in-place writes seen, per memory (storage)
        total = used
        first = next(n for n in self.nodes if n.op == "placeholder")
        for node in self.nodes:
            if node.op == "placeholder":
                v: Value = x if node is first else node.args[0]
                env[node] = live[node] = v  # the batch itself, as the naive run passes it
                made[node] = _state(v, writes)
                continue
            for u in node.all_input_nodes:
                if _state(live[u], writes) != made[u]:  # written in place by a node the graph does not link
                    why = f"node {node.name} reads {u.name} after an in-place operation changed it: the "
                    return {}, None, why + "graph's data flow is not the model's"
            if node.op == "output":
                break
            args = fx.node.map_arg(node.args, live.__getitem__)
            kwargs = fx.node.map_arg(node.kwargs, live.__getitem__)
            before = [(t, t._version) for t in _tensors((args, kwargs))]
            v = call_node(self.gm, self.modules, node, args, kwargs)
            for t, version in before:
                if t._version != version:  # written: every value on this memory has changed
                    key = storage_key(t)
                    writes[key] = writes.get(key, 0) + 1
            live[node] = v
            made[node] = _state(v, writes)
            env[node] = copy_value(v)  # later in-place ops (and flips of a parameter read by get_attr) leave the copy
            total += _nbytes(env[node])
            if total > limit:
                why = f"the cached clean values would take more than {limit / 2**30:.1f} GiB (the limit is "
                return {}, None, why + "bitlab.campaigns.census.graph.CACHE_BYTES: set it higher to allow more)"
        return env, fx.node.map_arg(self.nodes[-1].args[0], live.__getitem__), ""

    def counts(self, dirty: list[fx.Node], seeds: list[fx.Node], given: list[Tensor | None] | None = None) -> int:
        """Correct samples with the parameter as it is now stored: the ``dirty`` nodes recomputed on
        every batch, the ``seeds`` (the nodes that read the parameter) always; with ``given``, the one
        seed's value per batch is ``given[b]`` instead (None: its clean value)."""
        n_ok = 0
        for b, cached in enumerate(self.cache):
            env: dict[fx.Node, Value] = {}
            force = set(seeds) if given is None else set()
            if given is not None and given[b] is not None:
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
        writes = self.mutating.get(node)
        if writes is None:
            writes = self.mutating[node] = _mutates(node, self.modules)
        held = self.held

        def value(n: fx.Node) -> Value:
            if n in env:  # a recomputed value may be a cached tensor or a view of one (x.view_as(y))
                return _unaliased(env[n], held) if writes else env[n]
            return copy_value(cached[n]) if writes else cached[n]

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
    if "out" in node.kwargs:
        return True
    if node.op == "call_module":
        return bool(getattr(modules[str(node.target)], "inplace", False))
    if node.op == "call_method":
        name = str(node.target)
        return (name.endswith("_") and not name.startswith("__")) or name in _METHODS
    if node.op == "call_function":
        target = node.target
        if target in _IN_PLACE or getattr(target, "__name__", "").endswith("_") or node.kwargs.get("inplace"):
            return True
        try:
            bound = inspect.signature(target).bind_partial(*node.args, **node.kwargs)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
        return bool(bound.arguments.get("inplace", False))
    return False


def _rebuilt(v: object, f: Any) -> object:
    """A tuple, list or dict (NamedTuples, ``torch.return_types`` and dict subclasses too) with ``f``
    applied to each item; any other value as it is."""
    if isinstance(v, torch.Size) or not isinstance(v, (tuple, list, dict)):
        return v
    if isinstance(v, dict):
        out = {} if type(v) is dict else copy.copy(v)
        for k, u in v.items():
            out[k] = f(u)
        return out
    items = [f(u) for u in v]
    if type(v) in (tuple, list):
        return type(v)(items)
    return type(v)(*items) if hasattr(v, "_fields") else type(v)(items)


def span(t: Tensor) -> int:
    """Elements of memory from a tensor's first to its last (its numel when contiguous)."""
    return 1 + sum((n - 1) * s for n, s in zip(t.shape, t.stride())) if t.numel() else 0


def copy_value(v: object) -> object:
    """A copy of a node's value that nothing else writes to: each tensor detached, on its own memory,
    with its own strides (a broadcast stays a broadcast, a channels-last map channels-last)."""
    if not isinstance(v, Tensor):
        return _rebuilt(v, copy_value)
    t = v.detach()
    if t.is_contiguous() or t.layout != torch.strided or t.is_conj() or t.is_neg():
        return t.clone()
    return t.as_strided((span(t),), (1,)).clone().as_strided(t.shape, t.stride())


def _unaliased(v: object, held: set[int | None]) -> object:
    """``v`` with a copy of each tensor on the memory of one in ``held``."""
    if isinstance(v, Tensor):
        return copy_value(v) if storage_key(v) in held else v
    return _rebuilt(v, lambda u: _unaliased(u, held))


def storage_key(t: Tensor) -> int | None:
    """Where a tensor's memory (storage) starts: tensors on the same memory have the same key (None:
    no memory, or none the tensor can name)."""
    try:
        return t.untyped_storage().data_ptr() or None
    except (RuntimeError, NotImplementedError, TypeError):  # sparse, nested and other tensors
        return None


def _tensors(v: object) -> list[Tensor]:
    """The tensors of a value (in tuples, lists and dicts, at any depth)."""
    if isinstance(v, Tensor):
        return [v]
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (tuple, list)) else ()
    return [t for u in items for t in _tensors(u)]


def _state(v: object, writes: dict[int | None, int]) -> object:
    """What moves when a value changes in place: its tensors' version counters (they move on every
    in-place write), the writes seen to their memory and, in tuples, lists and dicts, which items they hold."""
    if isinstance(v, Tensor):
        return id(v), v._version, writes.get(storage_key(v), 0)
    if isinstance(v, (tuple, list)):
        return type(v), tuple(_state(u, writes) for u in v)
    if isinstance(v, dict):
        return type(v), tuple((k, _state(u, writes)) for k, u in v.items())
    return None


def _nbytes(v: object) -> int:
    return sum(span(t) * t.element_size() for t in _tensors(v))


def _set_up(model: nn.Module, graph: fx.Graph | None, labels: list[Tensor]) -> tuple[GraphRun | None, str]:
    try:  # with graph (another copy's trace of the same architecture) the model is not traced again
        gm = fx.GraphModule(model, _Tracer().trace(model) if graph is None else graph, type(model).__name__)
    except Exception as err:  # fx raises many types (TraceError, TypeError, NotImplementedError, ...)
        return None, f"torch.fx cannot trace {type(model).__name__} ({_said(err)})"
    nodes = list(gm.graph.nodes)
    holders = [n for n in nodes if n.op == "placeholder"]
    if not holders or any(not n.args for n in holders[1:]):
        return None, f"{type(model).__name__}.forward takes more than one input"
    return GraphRun(gm, nodes, [], labels, dict(gm.named_modules()), 0), ""


def _clean(run: GraphRun, model: nn.Module, x: Tensor, limit: int | None = None, used: int = 0) -> tuple:
    """:meth:`GraphRun.clean_pass`; where the graph raises, the model's own error (as the full forward
    raises it), else why not."""
    try:
        return run.clean_pass(x, limit, used)
    except Exception as err:
        model(x)
        return {}, None, f"the traced graph raised {_said(err)} where model(x) does not"


def _said(err: Exception) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first[:200]}"


def traced(model: nn.Module, x: Tensor) -> GraphRun | None:
    """The model's graph with the clean values of one batch ``x`` (no labels), or None where the
    census would fall back (see :func:`trace_graph`); the output may be any structure."""
    run, _ = _set_up(model, None, [])
    if run is None:
        return None
    with torch.no_grad():
        env, out, why = _clean(run, model, x)
        if why or not same_bits(out, model(x)):
            return None
    run.hold(env)
    return run


def trace_graph(
    model: nn.Module,
    batches: list[tuple[Tensor, Tensor]],
    graph: fx.Graph | None = None,
    limit: int | None = None,
) -> tuple[GraphRun | None, str]:
    """The model traced by ``torch.fx`` and its clean run on the naive ``batches`` (call in
    ``torch.no_grad``, the model in eval mode), or None and why not: fx cannot trace it, its forward
    takes more than one input, a node reads a value an in-place operation changed after it was made,
    the graph raises where ``model(x)`` does not (where it raises too, its error is raised), its output
    is not ``model(x)`` bit for bit, or the cache would take more than ``limit`` bytes (default
    :data:`CACHE_BYTES`). With ``graph`` (another copy's trace of this architecture) no new trace."""
    run, why = _set_up(model, graph, [y for _, y in batches])
    if run is None:
        return None, why
    total = 0
    for x, y in batches:
        env, out, why = _clean(run, model, x, limit, total)
        if why:
            return None, why
        if not isinstance(out, Tensor) or not same_bits(out, model(x)):
            return None, "the traced graph's output is not model(x) bit for bit"
        run.hold(env)
        total += sum(_nbytes(v) for v in env.values())
        run.clean_correct += int(correct(out, y).sum())
    return run, ""


def _reads(m: nn.Module) -> list[Tensor]:  # parameters, buffers, plain tensor attributes, submodules' too
    return [*m.parameters(), *m.buffers(), *(v for u in m.modules() for v in vars(u).values() if isinstance(v, Tensor))]


def dirty_nodes(run: GraphRun, p: Tensor) -> tuple[list[fx.Node], list[fx.Node]]:
    """The nodes that read parameter ``p``'s memory (the ``call_module`` nodes of every module that
    holds it or a tensor on the same memory, tied weights and ``b.weight.data = a.weight.data`` included,
    and the ``get_attr`` nodes that fetch such a tensor) and every node downstream of them, in graph
    order: (seeds, dirty). Computed once per parameter and run."""
    got = run.reads.get(id(p))
    if got is not None:
        return got
    key = storage_key(p)

    def on(ts: list[Tensor]) -> bool:
        return any(t is p or (key is not None and storage_key(t) == key) for t in ts)

    called = {str(n.target) for n in run.nodes if n.op == "call_module"}
    holds = {target: on(_reads(run.modules[target])) for target in called}
    seeds = [
        n
        for n in run.nodes
        if (n.op == "get_attr" and on(_tensors(call_node(run.gm, run.modules, n, (), {}))))
        or (n.op == "call_module" and holds[str(n.target)])
    ]
    dirty = set(seeds)
    for n in run.nodes:
        if any(u in dirty for u in n.all_input_nodes):
            dirty.add(n)
    got = run.reads[id(p)] = (seeds, [n for n in run.nodes if n in dirty])
    return got
