"""Forward passes the curvature estimators can differentiate twice.

The fused attention kernels that ``F.scaled_dot_product_attention`` picks by default (flash, memory
efficient, cuDNN; on the CPU ``_scaled_dot_product_flash_attention_for_cpu``) have a backward but no
double backward, so the Hessian-vector product of a model with a stock ``nn.MultiheadAttention`` or
``nn.TransformerEncoderLayer`` fails with ``derivative for aten::..._backward is not implemented``.
:func:`double_backward` runs the forward under ``torch.nn.attention.sdpa_kernel(SDPBackend.MATH)``, the
reference kernel written in differentiable ops: the same attention (equal up to float rounding), with a
double backward. Every estimator of :mod:`bitlab.curvature` does its forward passes inside it.

Where some op still has no double backward (a custom module calling a fused kernel directly, an autograd
Function marked ``@once_differentiable``), :func:`explain` turns the RuntimeError into one that names the
module(s) whose forward recorded that op, found by one forward pass with hooks, and the fix.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.autograd.function import BackwardCFunction
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["double_backward", "explain", "is_double_backward_error", "locate"]

_MISSING = re.compile(r"derivative for (?:aten::)?(\w+) is not implemented")
_ONCE = "once_differentiable"


@contextmanager
def double_backward() -> Iterator[None]:
    """Inside the block, scaled-dot-product attention uses the math kernel (``SDPBackend.MATH``), which has
    a double backward; outside, the previous kernel choice is back."""
    with sdpa_kernel(SDPBackend.MATH):
        yield


def is_double_backward_error(err: BaseException) -> bool:
    """Whether ``err`` is autograd's refusal to differentiate an op's backward."""
    msg = str(err)
    return isinstance(err, RuntimeError) and (_MISSING.search(msg) is not None or _ONCE in msg)


def _node_matcher(err: BaseException) -> tuple[str, Callable[[Any], bool]]:
    """The failing op as words, and a test on autograd graph nodes recorded by its forward."""
    found = _MISSING.search(str(err))
    if found is None:  # @once_differentiable: a custom autograd.Function
        return "a custom autograd.Function marked @once_differentiable", lambda n: isinstance(n, BackwardCFunction)
    op = found.group(1)
    forward = op[: -len("_backward")] if op.endswith("_backward") else op
    node = "".join(part.capitalize() for part in forward.split("_") if part) + "Backward"
    return f"aten::{op}", lambda n: n.name().startswith(node)


def _grad_fns(obj: Any) -> list[Any]:
    if isinstance(obj, Tensor):
        return [obj.grad_fn] if obj.grad_fn is not None else []
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else ()
    return [g for v in items for g in _grad_fns(v)]


def locate(model: nn.Module, run: Callable[[], object], match: Callable[[Any], bool]) -> list[str]:
    """Names of the innermost modules of ``model`` whose forward, during ``run()``, recorded an autograd
    node for which ``match(node)`` holds (a walk of each module's graph from its outputs back to its
    inputs). The root module is named ``"<model>"``."""
    stops: dict[int, set[int]] = {}
    hits: set[str] = set()
    names = {id(m): name for name, m in model.named_modules()}

    def pre(mod: nn.Module, args: Any, kwargs: Any) -> None:
        stops[id(mod)] = {id(g) for g in _grad_fns((args, kwargs))}

    def post(mod: nn.Module, args: Any, kwargs: Any, out: Any) -> None:
        stop, seen, todo = stops.get(id(mod), set()), set(), _grad_fns(out)
        while todo:
            n = todo.pop()
            if n is None or id(n) in seen or id(n) in stop:
                continue
            seen.add(id(n))
            if match(n):
                hits.add(names[id(mod)])
                return
            todo.extend(f for f, _ in n.next_functions)

    handles = []
    for m in model.modules():
        handles.append(m.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    inner = [n for n in hits if not any(o != n and (n == "" or o.startswith(n + ".")) for o in hits)]
    return sorted(n or "<model>" for n in inner)


def explain(err: RuntimeError, model: nn.Module | None = None, run: Callable[[], object] | None = None) -> RuntimeError:
    """A RuntimeError for ``err`` (a missing double backward) naming the op, the module(s) of ``model`` that
    recorded it during ``run()`` (when both are given) and the fix."""
    what, match = _node_matcher(err)
    where = ""
    if model is not None and run is not None:
        try:
            found = locate(model, run, match)
        except Exception:  # the diagnosis must not hide the original error
            found = []
        if found:
            modules = dict(model.named_modules())
            kinds = [type(modules.get(n, model)).__name__ for n in found]
            where = " in module(s) " + ", ".join(f"{n!r} ({k})" for n, k in zip(found, kinds))
    return RuntimeError(
        f"the Hessian needs a double backward, and {what} has none{where}. bitlab already runs the forward "
        "under torch.nn.attention.sdpa_kernel(SDPBackend.MATH) (bitlab.hessian.double_backward), which fixes "
        "the stock attention modules; fix: make that module use ops with a double backward (e.g. "
        "F.scaled_dot_product_attention instead of a fused kernel called directly, no @once_differentiable), "
        "or select with params= only parameters the gradient reaches without passing through it. "
        f"Original error: {err}"
    )
