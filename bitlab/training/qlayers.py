"""Which layers :func:`bitlab.training.quant.quantize_model` quantizes, which of their parameters and inputs
it reads, and the :class:`~bitlab.coverage.Coverage` report of everything else (design notes: "nothing
silent").

Supported layer kinds ("units"), what is quantized, and what stays float:

* ``Linear``, ``Conv1d/2d/3d``: ``weight``; the input (first positional argument). Bias float.
* ``Embedding``: ``weight``. Its input is integer token ids, so there is no input activation to quantize.
* ``MultiheadAttention``: ``in_proj_weight`` (or ``q/k/v_proj_weight``) and ``out_proj.weight``; the
  query, key and value inputs (one scale per layer). Biases float. ``out_proj``'s input is computed
  inside the functional attention (``out_proj.forward`` is never called): it stays float, reported.
* ``LSTM``, ``GRU``, ``RNN``: every ``weight_*`` (``weight_ih_l0``, ``weight_hh_l0``, ...); the sequence
  input. Biases float. The hidden state (and the input of stacked layers > 0) is internal to the RNN
  kernel: it stays float, reported.

Normalization layers run in float by design. A parameter of any other module type is reported as
unsupported. :func:`slow_path` turns PyTorch's fused Transformer fast path off, so that the layers inside
a ``TransformerEncoderLayer`` run their own ``forward`` (and hooks) during calibration and evaluation.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence
from torch.utils.data import DataLoader, Dataset

from ..coverage import Coverage
from ..evaluate import call, eval_mode, materialize, model_device, to_device

__all__ = [
    "LINEAR",
    "UNITS",
    "NORMS",
    "quantizable_layers",
    "choose_layers",
    "unit_weights",
    "has_input",
    "read_inputs",
    "map_inputs",
    "quant_coverage",
    "slow_path",
    "input_batches",
    "observe_inputs",
    "input_scales",
]

LINEAR = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
UNITS = (*LINEAR, nn.Embedding, nn.MultiheadAttention, nn.RNNBase)
NORMS = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.RMSNorm,
)
KINDS = "Linear, Conv1d/2d/3d, Embedding, MultiheadAttention, LSTM/GRU/RNN"
MHA_WEIGHTS = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the submodules :func:`quantize_model` can quantize (``""`` when the model itself is one),
    model order; a ``MultiheadAttention``'s ``out_proj`` belongs to the attention layer, not listed alone."""
    mha = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    inside = lambda n: any(n.startswith(f"{a}." if a else "") and n != a for a in mha)  # noqa: E731
    return [n for n, m in model.named_modules() if isinstance(m, UNITS) and not inside(n)]


def choose_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    """``layers`` checked against :func:`quantizable_layers` (default: all), in model order."""
    valid = quantizable_layers(model)
    if not valid:
        raise ValueError(f"model: has no layer to quantize; supported kinds: {KINDS}")
    if layers is None:
        return valid
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(
            f"layers: {unknown or names!r} are not quantizable layers of the model ({KINDS}); "
            f"valid names: {', '.join(map(repr, valid))}"
        )
    return [n for n in valid if n in names]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def unit_weights(name: str, module: nn.Module) -> list[tuple[str, Tensor]]:
    """The (full name, parameter) weights of one unit that are quantized (see the module notes)."""
    if isinstance(module, (*LINEAR, nn.Embedding)):
        return [(_join(name, "weight"), module.weight)]
    if isinstance(module, nn.MultiheadAttention):
        own = [(_join(name, k), getattr(module, k)) for k in MHA_WEIGHTS if getattr(module, k) is not None]
        return [*own, (_join(name, "out_proj.weight"), module.out_proj.weight)]
    if isinstance(module, nn.RNNBase):
        return [(_join(name, k), p) for k, p in module.named_parameters() if k.startswith("weight_")]
    raise TypeError(f"layers: {name!r} is a {type(module).__name__}; supported kinds: {KINDS}")


def has_input(module: nn.Module) -> bool:
    """Whether the unit reads a float input activation that a pre-hook can quantize (not Embedding)."""
    return not isinstance(module, nn.Embedding)


def _slots(module: nn.Module) -> tuple[tuple[int, str], ...]:
    """(position, keyword) of the inputs the unit reads."""
    if isinstance(module, nn.MultiheadAttention):
        return ((0, "query"), (1, "key"), (2, "value"))
    return ((0, "input"),)


def map_inputs(
    name: str, module: nn.Module, args: tuple, kwargs: dict, fn: Callable[[Tensor], Tensor]
) -> tuple[tuple, dict]:
    """``(args, kwargs)`` with ``fn`` applied to each input the unit reads (query/key/value for attention;
    a tensor passed several times is mapped once and stays one tensor). A ``PackedSequence`` is refused."""
    items, kwargs, done = list(args), dict(kwargs), {}
    for pos, key in _slots(module):
        holder: Any = items if pos < len(items) else kwargs if key in kwargs else None
        where: Any = pos if holder is items else key
        if holder is None or holder[where] is None:
            continue
        x = holder[where]
        if isinstance(x, PackedSequence):
            raise TypeError(f"layers: {name!r} got a PackedSequence; quantize_model supports padded tensor input only")
        if not isinstance(x, Tensor):
            raise TypeError(f"layers: {name!r} input {key!r} is a {type(x).__name__}; expected a tensor")
        if id(x) not in done:
            done[id(x)] = fn(x)
        holder[where] = done[id(x)]
    return tuple(items), kwargs


def read_inputs(name: str, module: nn.Module, args: tuple, kwargs: dict) -> list[Tensor]:
    """The distinct input tensors the unit reads on this call."""
    seen: list[Tensor] = []

    def grab(x: Tensor) -> Tensor:
        seen.append(x)
        return x

    map_inputs(name, module, args, kwargs, grab)
    return seen


def _is_bias(leaf: str) -> bool:
    return not (leaf.startswith("weight") or leaf in MHA_WEIGHTS)


def quant_coverage(
    model: nn.Module,
    chosen: Sequence[str],
    quantized: dict[int, str],
    observed: Sequence[str],
    explicit: bool,
    detail: str,
) -> Coverage:
    """The report of :func:`quantize_model`: a row for every floating parameter of ``model`` (all tied
    aliases), and the input rows of the ``chosen`` units (``observed``: those calibrated). ``quantized``
    maps ``id(param)`` to the name it was quantized under; ``explicit``: the caller passed ``layers=``."""
    cov = Coverage("quantize_model")
    modules = dict(model.named_modules(remove_duplicate=False))
    unit_of: dict[str, str] = {}
    for u in quantizable_layers(model):
        for n, _ in modules[u].named_parameters(prefix=u, remove_duplicate=False):
            unit_of[n] = u
    for n, p in model.named_parameters(remove_duplicate=False):
        if not p.is_floating_point():
            continue
        owner = n.rpartition(".")[0]
        kind = type(modules[owner]).__name__
        leaf = n.rpartition(".")[2]
        if id(p) in quantized:
            first = quantized[id(p)]
            why = detail if first == n else f"tied: the same tensor as {first!r}, quantized once"
            cov.add(n, "weight", owner, kind, "covered", why)
        elif n in unit_of and unit_of[n] not in chosen:
            cov.add(n, "weight", owner, kind, "by design", "its layer is not in layers=")
        elif n in unit_of and _is_bias(leaf):
            cov.add(n, "weight", owner, kind, "by design", "bias: stays float (the int32 accumulator adds it)")
        elif isinstance(modules[owner], NORMS):
            cov.add(n, "weight", owner, kind, "by design", "normalization runs in float (not folded)")
        elif explicit:
            cov.add(n, "weight", owner, kind, "by design", "not in a layer of layers=")
        else:
            cov.add(n, "weight", owner, kind, "unsupported", f"{kind} is not a supported kind ({KINDS}): stays float")
    for u in chosen:
        m = modules[u]
        kind = type(m).__name__
        if not has_input(m):
            cov.add(u, "input", u, kind, "by design", "reads integer token ids: no input activation to quantize")
            continue
        if u in observed:
            cov.add(u, "input", u, kind, "covered", "query, key, value" if kind == "MultiheadAttention" else "")
        else:
            cov.add(u, "input", u, kind, "unsupported", "forward never called during calibration: input stays float")
        if isinstance(m, nn.MultiheadAttention):
            cov.add(
                _join(u, "out_proj"),
                "input",
                u,
                kind,
                "unsupported",
                "computed inside the functional attention (out_proj.forward is never called): stays float",
            )
        if isinstance(m, nn.RNNBase):
            cov.add(
                u,
                "hidden",
                u,
                kind,
                "unsupported",
                "hidden state (and stacked layers' input) is internal to the kernel",
            )
    return cov


def input_batches(data: object, batch_size: int = 256) -> Iterable[object]:
    """The inputs of ``data`` batch by batch: a Tensor of inputs (split), or anything
    :func:`bitlab.evaluate.materialize` takes (a Dataset, a DataLoader, a list of ``(inputs, targets)``
    batches; inputs a tensor, a tuple of tensors or a dict of keyword arguments)."""
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    if not isinstance(data, (Dataset, DataLoader, list)):
        raise TypeError(
            "calib_data: expected a Tensor of inputs, a Dataset, a DataLoader or a list of (inputs, targets) "
            f"batches, got {type(data).__name__}"
        )
    try:
        batches = materialize(data, batch_size)
    except (TypeError, ValueError) as err:  # name the argument of this entry point
        raise type(err)(str(err).replace("data:", "calib_data:", 1)) from None
    for x, _ in batches:
        yield x


@torch.no_grad()
def observe_inputs(
    model: nn.Module, calib_data: object, names: list[str], method: str
) -> tuple[dict[str, float], dict[str, list[Tensor]], list[str]]:
    """``max|x|`` (and, for percentiles, every ``|x|``) of the inputs of ``names`` over ``calib_data``, in eval
    mode with the fused Transformer fast path off; also the names whose forward was never called."""
    modules = dict(model.named_modules())
    amax: dict[str, float] = {n: 0.0 for n in names}
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    calls = {n: 0 for n in names}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            calls[name] += 1
            for x in read_inputs(name, module, args, kwargs):
                a = x.detach().abs().float()
                amax[name] = max(amax[name], float(a.max()) if a.numel() else 0.0)
                if method == "percentile":
                    seen[name].append(a.reshape(-1).cpu())

        return hook

    handles = [modules[n].register_forward_pre_hook(make_hook(n), with_kwargs=True) for n in names]
    device = model_device(model)
    batches = 0
    try:
        with eval_mode(model), slow_path():
            for x in input_batches(calib_data):
                if isinstance(x, Tensor) and len(x) == 0:
                    continue
                call(model, to_device(x, device))
                batches += 1
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise ValueError("calib_data: is empty; calibration needs at least one batch of inputs")
    return amax, seen, [n for n in names if calls[n] == 0]


def input_scales(
    amax: dict[str, float], seen: dict[str, list[Tensor]], q_max: int, method: str, percentile: float
) -> dict[str, float]:
    """Per layer ``r / q_max``, ``r`` the largest ``|x|`` (``"max"``) or its ``percentile`` (1 if ``r = 0``)."""
    scales: dict[str, float] = {}
    for n in amax:
        r = amax[n] if method == "max" else float(np.percentile(torch.cat(seen[n]).numpy(), percentile))
        scales[n] = r / q_max if r > 0 else 1.0
    return scales


_SLOW = threading.Lock()
_slow_users = [0, True]  # blocks inside slow_path() now, and the setting before the first of them


@contextmanager
def slow_path() -> Iterator[None]:
    """PyTorch's fused Transformer/attention fast path off for the block (it calls no submodule's
    ``forward``, so hooks would not fire); the previous setting restored when the last block that
    overlaps it exits (a process-wide flag: blocks in several threads, e.g. a campaign on a thread
    pool, must not restore each other's setting)."""
    with _SLOW:
        if _slow_users[0] == 0:
            _slow_users[1] = torch.backends.mha.get_fastpath_enabled()
            torch.backends.mha.set_fastpath_enabled(False)
        _slow_users[0] += 1
    try:
        yield
    finally:
        with _SLOW:
            _slow_users[0] -= 1
            if _slow_users[0] == 0:
                torch.backends.mha.set_fastpath_enabled(bool(_slow_users[1]))
