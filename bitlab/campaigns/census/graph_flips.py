"""The census's flips on a traced graph (:mod:`.graph`), per parameter: flips that move different
output units of a Conv/Linear/BatchNorm share one call of it (:func:`packed_outputs`; each output
element reads only its own weights, the engine's assumption), each flip's output is the clean one
with its unit spliced in, and flips whose flipped layer gives the same output share the rest
(:func:`graph_counts`). A parameter of any strides (channels-last) is indexed in logical (row-major)
order, as ``p.reshape(-1)`` numbers its elements."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

import torch
import torch.fx as fx
from torch import Tensor, nn

from .graph import GraphRun, Value, bit_view, call_node, copy_value, dirty_nodes, same_bits, span, storage_key

__all__ = ["flat_view", "graph_counts", "packed_outputs", "packing"]

#: modules whose output unit ``u`` reads only weight row / bias element / channel ``u`` of the named
#: parameter, the dimension of the output that holds the units (-1: the last) and the dimensions of
#: the batched input that puts them there (0: any; an unbatched Conv input has its channels on dim 0)
_UNITS: tuple[tuple[type[nn.Module], int, int], ...] = (
    (nn.Linear, -1, 0),
    (nn.Conv1d, 1, 3),
    (nn.Conv2d, 1, 4),
    (nn.Conv3d, 1, 5),
    (nn.BatchNorm1d, 1, 0),
    (nn.BatchNorm2d, 1, 0),
    (nn.BatchNorm3d, 1, 0),
)


def flat_view(p: Tensor) -> tuple[Tensor, Tensor | None]:
    """A writable flat view of the memory of ``p`` (its ``.data``) and where each of its elements, in
    the logical (row-major) order of ``p.reshape(-1)``, sits in it: None where ``p`` is contiguous (at
    its own index), else a tensor of positions (a channels-last weight)."""
    data = p.data
    if data.is_contiguous():
        return data.view(-1), None
    where = torch.arange(span(data), device=data.device).as_strided(data.shape, data.stride())
    return data.as_strided((span(data),), (1,)), where.reshape(-1)


def packing(run: GraphRun, p: Tensor, seeds: list[fx.Node]) -> tuple[int, int] | None:
    """(units, fan) when flips of ``p`` in different output units can share one call of its module:
    one seed, a module of :data:`_UNITS` that holds it directly as ``weight`` or ``bias`` (no other
    tensor of it on the same memory) and gets a batched input on every batch; else None."""
    if len(seeds) != 1 or seeds[0].op != "call_module" or p.dim() == 0:
        return None
    m = run.modules[str(seeds[0].target)]
    kind = next((u for u in _UNITS if type(m) is u[0]), None)
    if kind is None or not any(getattr(m, a, None) is p for a in ("weight", "bias")):
        return None
    if any(q is not p and storage_key(q) == storage_key(p) for q in [*m.parameters(), *m.buffers()]):
        return None
    arg = seeds[0].args[0] if seeds[0].args else None
    batched = [isinstance(arg, fx.Node) and isinstance(c[arg], Tensor) and c[arg].dim() == kind[2] for c in run.cache]
    if kind[2] and not all(batched):
        return None
    units = p.shape[0]
    return units, p.numel() // units


def _unit_dim(m: nn.Module) -> int:
    return next(d for t, d, _ in _UNITS if type(m) is t)


def packed_outputs(
    run: GraphRun,
    seed: fx.Node,
    flat: Tensor,
    sel: Tensor,
    values: Tensor,
    units: list[int],
    keys: bool = True,
) -> list[tuple[bytes, list[Tensor | None]]]:
    """Each flip's value of ``seed`` per batch, from one call of its module with all the flips written
    (``flat[sel] = values``, flips in different ``units``): the clean output with the flip's unit
    spliced in (None where the unit came out bit for bit clean), and a digest (BLAKE2b, 256 bits) of
    the bit patterns of its changed unit on every batch: flips with equal digests have the same
    flipped-layer output (a collision has probability ~2^-256) and so the same outcome (``keys=False``:
    no digests, ``b""``)."""
    m = run.modules[str(seed.target)]
    dim = _unit_dim(m)
    old = flat[sel].clone()
    flat[sel] = values.to(flat.dtype)
    try:
        outs = [call_node(run.gm, run.modules, seed, *_inputs(seed, cached)) for cached in run.cache]
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
            if same_bits(new, clean.select(dim, u)):
                row.append(None)
                continue
            if keys:
                key.update(b"%d|" % len(row))
                key.update(bit_view(new.contiguous()).cpu().numpy().tobytes())
            buf = copy_value(clean)
            assert isinstance(buf, Tensor)
            buf.select(dim, u).copy_(new)
            row.append(buf)
        per_flip.append((key.digest() if keys else b"", row))
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
    flat, pos = flat_view(p)
    where = idx if pos is None else pos[idx]  # each flip's element in flat
    packed = packing(run, p, seeds)
    counts = [0] * len(idx)
    if packed is None:
        for k in range(len(idx)):
            i = int(where[k])
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
        outs = packed_outputs(run, seeds[0], flat, where[pack], new[pack], [unit[k] for k in pack])
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
