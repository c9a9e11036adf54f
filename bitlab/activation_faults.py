"""Transient faults in the activations (outputs) of chosen modules: :func:`corrupted_activations`.

At every forward pass of a chosen module, its output -- or the element ``output=`` picks from a tuple,
dict, named tuple or dataclass output (LSTM/GRU: the sequence output, MultiheadAttention: the
attention output) -- is stored in a number format (by default its own dtype), faults are sampled afresh
over its words, and the read-back values replace it; the rest of the output passes through unchanged.

Gradients pass the fault straight through (the straight-through estimator, Bengio et al. 2013): the
backward pass sees the identity, so fault-aware training reaches every layer before a faulted module,
and with no flip the gradient is the clean model's. Nothing is skipped silently: a module whose output
holds no float tensor, a format wider than the activation, a compiled model, and a module whose
forward never ran inside the block are each refused by name.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .faults import Fault, Sites, fault_words
from .formats import BF16, FP16, FP32, FloatFormat, Format, resolve_bits, to_signed
from .params import select_modules
from .validate import check_cpu_generator

__all__ = ["corrupted_activations", "ActivationReport", "OutputSelection", "FORMAT_OF_DTYPE"]

Key = int | str
Path = tuple[Key, ...]
#: which element of a module's output takes the faults: ``None`` (the first floating tensor), an index
#: or key, a path of them (``(1, 0)``: LSTM's ``h_n``), or a mapping module name -> one of these
OutputSelection = Key | Path | Mapping[str, Key | Path | None] | None
#: the format an activation is stored in when ``fmt=None``: its own dtype
FORMAT_OF_DTYPE: dict[torch.dtype, FloatFormat] = {torch.float32: FP32, torch.float16: FP16, torch.bfloat16: BF16}


@dataclass
class ActivationReport:
    """What an activation-fault context did, per module: forward ``calls`` seen, ``flips`` applied
    (faulty bit sites, all calls), the ``outputs`` element faulted (e.g. ``"output[0]"``), the
    ``formats`` used and the ``sites`` of the module's latest call (word = flat index into that element)."""

    calls: dict[str, int] = field(default_factory=dict)
    flips: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)
    sites: dict[str, Sites] = field(default_factory=dict)

    @property
    def total_flips(self) -> int:
        return sum(self.flips.values())


def _check_path(name: str, sel: object) -> Path | None:
    if sel is None:
        return None
    path = sel if isinstance(sel, tuple) else (sel,)
    if not path or not all(isinstance(k, str) or (isinstance(k, int) and not isinstance(k, bool)) for k in path):
        raise TypeError(
            f"output: {sel!r} for {name!r}; allowed None (the first floating tensor), an int index, "
            "a str key or field name, a tuple of them (a path), or a mapping module name -> one of these"
        )
    return path


def _paths(output: OutputSelection, names: Sequence[str]) -> dict[str, Path | None]:
    if isinstance(output, Mapping):
        unknown = [k for k in output if k not in names]
        if unknown:
            raise ValueError(f"output: {unknown!r} are not chosen modules; allowed keys: {list(names)}")
        return {n: _check_path(n, output.get(n)) for n in names}
    return {n: _check_path(n, output) for n in names}


def _children(out: object) -> list[tuple[Key, object]]:
    if isinstance(out, Mapping):
        return list(out.items())
    if isinstance(out, tuple) and hasattr(type(out), "_fields"):  # named tuple (PackedSequence too)
        return list(zip(type(out)._fields, out))  # type: ignore[attr-defined]
    if isinstance(out, tuple | list):
        return list(enumerate(out))
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [(f.name, getattr(out, f.name)) for f in dataclasses.fields(out)]
    return []


def _first_float(out: object, path: Path = ()) -> Path | None:
    """The path to the first floating-point tensor of ``out`` (depth first, in order)."""
    if isinstance(out, Tensor):
        return path if out.is_floating_point() else None
    for key, child in _children(out):
        found = _first_float(child, (*path, key))
        if found is not None:
            return found
    return None


def _describe(path: Path) -> str:
    return "output" + "".join(f"[{k!r}]" for k in path)


def _kind(out: object) -> str:
    if isinstance(out, Tensor):
        return f"a {out.dtype} tensor"
    return f"a {type(out).__name__} with keys {[k for k, _ in _children(out)]}"


def _get(name: str, out: object, path: Path) -> object:
    for i, key in enumerate(path):
        if isinstance(out, tuple | list) and isinstance(key, int) and -len(out) <= key < len(out):
            out = out[key]
            continue
        if isinstance(out, Mapping):
            if key in out:
                out = out[key]
                continue
        else:  # named tuple and dataclass fields
            match = [c for k, c in _children(out) if isinstance(k, str) and k == key]
            if match:
                out = match[0]
                continue
        raise ValueError(
            f"output: {_describe(path[: i + 1])} does not exist in the output of {name!r}, which is "
            f"{_kind(out)}; choose one of its keys (or output=None for the first floating tensor)"
        )
    return out


def _replace(out: object, path: Path, value: Tensor) -> object:
    """``out`` with the element at ``path`` replaced by ``value`` (containers copied, never modified)."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(out, Mapping):
        new = copy.copy(out)
        new[key] = _replace(out[key], rest, value)  # type: ignore[index]
        return new
    if isinstance(out, tuple | list):
        fields: tuple[str, ...] = getattr(type(out), "_fields", ())
        index = fields.index(key) if isinstance(key, str) else key
        items = list(out)
        items[index] = _replace(items[index], rest, value)
        if fields:
            return type(out)(*items)
        return items if type(out) is list else tuple(items) if type(out) is tuple else type(out)(items)
    assert isinstance(key, str)  # a dataclass: _get checked the field
    return dataclasses.replace(out, **{key: _replace(getattr(out, key), rest, value)})  # type: ignore[type-var]


def _format_for(name: str, act: Tensor, fmt: Format | None) -> Format:
    if fmt is None:
        if act.dtype not in FORMAT_OF_DTYPE:
            raise TypeError(
                f"fmt: the activation of {name!r} is {act.dtype}; fmt=None stores it in its own dtype, allowed "
                f"{', '.join(map(str, FORMAT_OF_DTYPE))}; pass fmt= (e.g. FP32) to store it in another format"
            )
        return FORMAT_OF_DTYPE[act.dtype]
    if fmt.width > 8 * act.element_size():
        raise ValueError(
            f"fmt: {fmt.name} is {fmt.width} bits wide, wider than the activation of {name!r} "
            f"({act.dtype}, {8 * act.element_size()} bits); use fmt=None (its own dtype) or a narrower format"
        )
    return fmt


def _faulty(act: Tensor, fmt: Format, sites: Sites, mode: str, scale: Tensor | float | None) -> Tensor:
    """``act`` as read back from ``fmt`` words with the faults at ``sites``; the gradient is the identity
    (a clone whose values are overwritten outside autograd)."""
    same = isinstance(fmt, FloatFormat) and fmt.dtype == act.dtype
    if same and len(sites) == 0:
        return act
    flat = act.detach().reshape(-1)
    if torch.is_tensor(scale):
        scale = scale.to(act.device)
        if scale.numel() > 1:
            scale = torch.broadcast_to(scale, act.shape).reshape(-1)
    result = act.clone(memory_format=torch.contiguous_format)
    with torch.no_grad():
        vals = result.view(-1)
        if not same:
            vals.copy_(fmt.decode(fmt.encode(flat, scale), scale).to(act.dtype))
        if len(sites):
            word, bit = sites.word.to(act.device), sites.bit.to(act.device)
            uidx, inv = torch.unique(word, return_inverse=True)
            s = scale[uidx] if torch.is_tensor(scale) and scale.numel() > 1 else scale
            words = fault_words(fmt.encode(flat[uidx], s), inv, bit, mode)
            if same:  # bit exact, NaN payloads included (no round trip through float32)
                assert isinstance(fmt, FloatFormat)
                vals[uidx] = to_signed(words, fmt.width).to(fmt.int_dtype).view(fmt.dtype)
            else:
                vals[uidx] = fmt.decode(words, s).to(act.dtype)
    return result.view(act.shape)


def _compiled(m: nn.Module) -> bool:
    """``torch.compile(m)`` (an ``OptimizedModule`` wrapping ``_orig_mod``) or ``m.compile()`` in place."""
    return isinstance(getattr(m, "_orig_mod", None), nn.Module) or getattr(m, "_compiled_call_impl", None) is not None


def _refuse_compiled(model: nn.Module) -> None:
    if _compiled(model):
        raise TypeError(
            f"model: a compiled {type(getattr(model, '_orig_mod', model)).__name__} (torch.compile); compiled "
            "graphs do not run forward hooks reliably, so activation faults would be lost; pass the uncompiled "
            "module (model._orig_mod for torch.compile(model)) and compile it again after the block"
        )


def _refuse_unhookable(model: nn.Module, chosen: list[tuple[str, nn.Module]]) -> None:
    """Compiled submodules and MultiheadAttention's ``out_proj`` never run the Python forward hooks."""
    named = dict(model.named_modules())
    for name, _ in chosen:
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            anc = ".".join(parts[:i])
            if _compiled(named[anc]):
                raise TypeError(
                    f"modules: {name!r} lies inside the compiled module {anc!r} (torch.compile), "
                    "which does not run its submodules' forward hooks reliably; pass the uncompiled module"
                )
        parent = named.get(name.rpartition(".")[0]) if "." in name else model
        if isinstance(parent, nn.MultiheadAttention) and parts[-1] == "out_proj":
            raise ValueError(
                f"modules: {name!r} is a MultiheadAttention's output projection; its forward is never called "
                "(the attention uses its weight and bias directly), so faults there would never apply; target "
                f"{name.rpartition('.')[0]!r} instead: its output[0] is the out_proj output"
            )


def _never_called(model: nn.Module, names: list[str], report: ActivationReport) -> None:
    missing = [n for n in names if report.calls.get(n, 0) == 0]
    if not missing:
        return
    named = dict(model.named_modules())
    hints = []
    for n in missing:
        parents = [p for p in named if p and n.startswith(p + ".")]
        layer = next((p for p in parents if isinstance(named[p], nn.TransformerEncoderLayer)), None)
        if layer is not None:
            hints.append(f"{n!r}: TransformerEncoderLayer's fast path never calls it; target the layer {layer!r}")
        else:
            hints.append(f"{n!r}: its forward never ran (a functional call of its weights, or not reached)")
    raise RuntimeError(
        f"modules: {missing} were never called inside the block, so they took no activation fault; " + "; ".join(hints)
    )


@contextmanager
def corrupted_activations(
    model: nn.Module,
    fault: Fault,
    modules: str | Sequence[str],
    fmt: Format | None = None,
    scales: Mapping[str, float | Tensor] | None = None,
    generator: torch.Generator | None = None,
    output: OutputSelection = None,
) -> Iterator[ActivationReport]:
    """Faults in the activations (outputs) of the chosen ``modules`` (name globs), stored in ``fmt``.

    ``fmt=None`` stores each activation in its own dtype (FP32, FP16 or BF16); an explicit format must
    not be wider than the activation. At every forward pass, each chosen module's output element
    (``output``: see :data:`OutputSelection`) is encoded (with ``scales[name]`` for scaled formats, else
    a scale calibrated on that output), the fault is sampled afresh over its words with ``generator``
    (a CPU generator; the sites move to the activation's device), and the decoded values, in the
    activation's dtype, replace it. The gradient passes straight through. Yields an
    :class:`ActivationReport`. The hooks are removed on exit, also when the block raises; on a normal
    exit, a chosen module that was never called is an error naming it.
    """
    if not isinstance(fault, Fault):
        raise TypeError(
            "fault: expected a bitlab fault (BitErrorRate, BitFlips, SingleBitFlip, StuckAt), "
            f"got {type(fault).__name__}"
        )
    if fmt is not None and not isinstance(fmt, Format):
        raise TypeError(
            "fmt: expected None (the activation's own dtype) or a bitlab number format (FP32, FP16, BF16, "
            f"Q(m, n), Int(bits)), got {type(fmt).__name__}"
        )
    check_cpu_generator("generator", generator)
    _refuse_compiled(model)
    chosen = select_modules(model, modules)
    names = [n for n, _ in chosen]
    _refuse_unhookable(model, chosen)
    if fmt is not None:
        resolve_bits(fault.bits, fmt.width, fmt.fields)  # a bad selection fails here, not at the first call
    paths = _paths(output, names)
    report = ActivationReport(calls=dict.fromkeys(names, 0))

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple, out: object) -> object:
            path = paths[name] if paths[name] is not None else _first_float(out)
            if path is None:
                raise TypeError(
                    f"modules: the output of {name!r} is {_kind(out)} and holds no floating-point tensor; "
                    "activation faults need float activations: choose another module"
                )
            act = _get(name, out, path)
            if not isinstance(act, Tensor) or not act.is_floating_point():
                what = f"a {act.dtype} tensor" if isinstance(act, Tensor) else type(act).__name__
                raise TypeError(
                    f"output: {_describe(path)} of {name!r} is {what}; activation faults need a floating-point "
                    "tensor: choose another element with output= or another module"
                )
            f = _format_for(name, act, fmt)
            bits = resolve_bits(fault.bits, f.width, f.fields)
            scale = None
            if f.needs_scale:
                scale = scales[name] if scales and name in scales else f.calibrate(act)
            sites = fault.sample([name], [torch.Size([act.numel()])], bits, generator)
            report.calls[name] += 1
            report.flips[name] = report.flips.get(name, 0) + len(sites)
            report.outputs[name], report.formats[name], report.sites[name] = _describe(path), f.name, sites
            new = _faulty(act, f, sites, fault.mode, scale)
            return out if new is act else _replace(out, path, new)

        return hook

    handles = []
    try:
        for name, m in chosen:
            handles.append(m.register_forward_hook(make_hook(name)))
        yield report
    finally:
        for h in handles:
            h.remove()
    _never_called(model, names, report)
