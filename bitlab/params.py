"""Which parameters and submodules a fault, an estimator or an attack may touch: selection by name
glob(s) or by a predicate, with errors that list the valid names.

:func:`select_params` chooses parameters (what has a gradient); :func:`select_tensors` chooses what a
faulty store may hold: parameters and floating-point buffers (BatchNorm running statistics), a tied
weight under any of its names (stored once, under the first name that selects it).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence
from typing import cast

from torch import Tensor, nn

from .formats import Format, native_format

__all__ = ["ParamSelection", "select_params", "select_tensors", "select_modules", "store_format"]

ParamSelection = None | str | Sequence[str] | Callable[[str, nn.Parameter], bool]


def _match(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def select_params(model: nn.Module, params: ParamSelection = None) -> list[tuple[str, nn.Parameter]]:
    """Parameters chosen by name glob(s) (``"fc*.weight"``, ``["conv1.*", "fc.weight"]``) or by a
    predicate ``(name, param) -> bool``; ``None`` selects every parameter."""
    named = list(model.named_parameters())
    if params is None:
        chosen = named
    elif callable(params):
        chosen = [(n, p) for n, p in named if params(n, p)]
    else:
        patterns = [params] if isinstance(params, str) else list(params)
        if not all(isinstance(p, str) for p in patterns):
            raise TypeError("params: expected None, a name pattern, a list of patterns or a predicate")
        chosen = [(n, p) for n, p in named if _match(n, patterns)]
    if not chosen:
        names = ", ".join(n for n, _ in named[:12]) + (" ..." if len(named) > 12 else "")
        raise ValueError(f"params: {params!r} selects no parameter; the model's parameters are: {names}")
    for n, p in chosen:
        if not p.is_floating_point():
            raise TypeError(
                f"params: {n!r} has dtype {p.dtype}; only floating-point parameters can be "
                "stored in a number format (select float parameters only)"
            )
    return chosen


def _patterns(params: str | Sequence[str]) -> list[str]:
    patterns = [params] if isinstance(params, str) else list(params)
    if not all(isinstance(p, str) for p in patterns):
        raise TypeError("params: expected None, a name pattern, a list of patterns or a predicate")
    return patterns


def select_tensors(model: nn.Module, params: ParamSelection = None) -> list[tuple[str, Tensor]]:
    """Parameters and buffers a faulty store holds: ``None`` is every parameter (no buffer); name glob(s)
    and a predicate ``(name, tensor) -> bool`` see every parameter under each of its names (tied weights)
    and every floating-point buffer (``"bn1.running_mean"``, ``"*.running_*"``). A tensor reached under
    several names is chosen once, under the first. An integer buffer (``num_batches_tracked``) or
    parameter named exactly is refused by name; globs skip integer tensors."""
    if params is None:
        return list(select_params(model, None))
    named: list[tuple[str, Tensor]] = list(model.named_parameters(remove_duplicate=False))
    named += list(model.named_buffers(remove_duplicate=False))
    if callable(params):
        pred = cast(Callable[[str, Tensor], bool], params)  # buffers are plain tensors
        hits = [(n, t) for n, t in named if t.is_floating_point() and pred(n, t)]
    else:
        patterns = _patterns(params)
        exact = {p for p in patterns if not any(c in p for c in "*?[")}
        for n, t in named:
            if n in exact and not t.is_floating_point():
                raise TypeError(
                    f"params: {n!r} has dtype {t.dtype}; only floating-point parameters and buffers can be "
                    "stored in a number format (select float tensors only)"
                )
        hits = [(n, t) for n, t in named if t.is_floating_point() and _match(n, patterns)]
        missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, t in named)]
        if missing and hits:
            raise ValueError(f"params: {missing!r} match no parameter or buffer; {_valid(named)}")
    seen: set[int] = set()
    chosen = []
    for n, t in hits:
        if id(t) not in seen:
            seen.add(id(t))
            chosen.append((n, t))
    if not chosen:
        raise ValueError(f"params: {params!r} selects no parameter (nor floating-point buffer); {_valid(named)}")
    return chosen


def store_format(model: nn.Module, fmt: Format | None, params: ParamSelection = None) -> Format:
    """``fmt`` if given, else the one native format of the selected tensors (float32 -> FP32, float16 -> FP16,
    bfloat16 -> BF16), for campaigns that report a single format; selected tensors of different dtypes are
    refused by name (select one dtype with ``params=``, or pass ``fmt=`` on purpose)."""
    if fmt is not None:
        return fmt
    chosen = select_tensors(model, params)
    found: dict[str, str] = {}
    for n, t in chosen:  # the first tensor of each format, in selection order
        found.setdefault(native_format(t.dtype, n).name, n)
    if len(found) > 1:
        raise ValueError(
            "fmt: None (native) but the selected tensors are stored in different formats: "
            + ", ".join(f"{n!r} as {f}" for f, n in found.items())
            + "; allowed: select tensors of one dtype with params=, or pass fmt= explicitly"
        )
    return native_format(chosen[0][1].dtype, chosen[0][0])


def _valid(named: Sequence[tuple[str, Tensor]]) -> str:
    names = [n for n, _ in named]
    return "the model's parameters and buffers are: " + ", ".join(names[:16]) + (" ..." if len(names) > 16 else "")


def select_modules(model: nn.Module, modules: str | Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Submodules chosen by name glob(s); an unknown name is an error listing the valid ones."""
    patterns = [modules] if isinstance(modules, str) else list(modules)
    named = [(n, m) for n, m in model.named_modules() if n]
    chosen = [(n, m) for n, m in named if _match(n, patterns)]
    missing = [p for p in patterns if not any(fnmatch.fnmatchcase(n, p) for n, _ in named)]
    if missing or not chosen:
        valid = ", ".join(n for n, _ in named[:20]) + (" ..." if len(named) > 20 else "")
        raise ValueError(f"modules: {missing or patterns!r} match no submodule; valid names: {valid}")
    return chosen
