"""Which parameters and submodules a fault, an estimator or an attack may touch: selection by name
glob(s) or by a predicate, with errors that list the valid names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Sequence

from torch import nn

__all__ = ["ParamSelection", "select_params", "select_modules"]

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
