"""Function-preserving rescaling of ReLU networks (the weight-scaling idea of Fuengfusin 2024 without
a division at read time): scale layer ``i`` up and layer ``i+1`` down, since ReLU is positively
homogeneous, so the stored network computes the same function with rebalanced weight ranges.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = ["rescale_relu_network", "balance_factors", "weight_layers"]


def _tensor(value: object) -> Tensor:
    """A weight layer's ``weight``, typed as the tensor it is (weight_layers admits Linear/Conv only)."""
    assert isinstance(value, Tensor)
    return value


_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# modules f with f(a x) = a f(x) for every a > 0 (positive homogeneity), and that hold no weights
_HOMOGENEOUS = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Identity,
)


def _flatten(seq: nn.Sequential, prefix: str = "") -> list[tuple[str, nn.Module]]:
    out: list[tuple[str, nn.Module]] = []
    for name, m in seq.named_children():
        full = f"{prefix}{name}"
        out += _flatten(m, full + ".") if isinstance(m, nn.Sequential) else [(full, m)]
    return out


def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The Linear/Conv layers of a ReLU ``nn.Sequential`` in order, after checking that everything
    between the first and the last of them is positively homogeneous (ReLU, max/avg pooling,
    flatten, dropout). Anything else -- BatchNorm, tanh, a residual model -- is a ValueError/TypeError
    naming the module, because scaling through it would change the network's function."""
    if not isinstance(model, nn.Sequential):
        raise TypeError(
            f"model: function-preserving rescaling needs an nn.Sequential of Linear/Conv layers "
            f"joined by ReLU/pooling/flatten; got {type(model).__name__} (residual connections and "
            "other non-sequential graphs are not supported: use the WeightScaling codec instead)"
        )
    mods = _flatten(model)
    idx = [i for i, (_, m) in enumerate(mods) if isinstance(m, _WEIGHT)]
    if len(idx) < 2:
        raise ValueError(f"model: needs at least two Linear/Conv layers to move scale between; found {len(idx)}")
    for name, m in mods[idx[0] : idx[-1] + 1]:
        if isinstance(m, _WEIGHT):
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.padding_mode != "zeros":
                raise ValueError(
                    f"model: layer {name!r} pads with {m.padding_mode!r}; only zero padding commutes with scaling"
                )
            continue
        if not isinstance(m, _HOMOGENEOUS):
            raise ValueError(
                f"model: module {name!r} ({type(m).__name__}) sits between weight layers and is not "
                "positively homogeneous (f(a x) != a f(x)), so rescaling would change the function; "
                "allowed in between: ReLU, LeakyReLU, max/avg pooling, Flatten, Dropout, Identity"
            )
    return [mods[i] for i in idx]


def rescale_relu_network(model: nn.Module, factors: Sequence[float]) -> nn.Module:
    """A deep copy of a ReLU ``nn.Sequential`` that computes the same function with rescaled weights.

    ``factors[i] = a_i > 0`` multiplies the output of weight layer ``i`` (for every layer but the
    last): its weight is multiplied by ``a_i / a_(i-1)`` and its bias by ``a_i`` (``a_(-1) = 1``);
    the last layer's weight is divided by ``a_(L-2)`` and its bias is unchanged. Because
    ``relu(a x) = a relu(x)`` for ``a > 0`` (and pooling commutes with ``a`` too), the output is the
    same up to float rounding -- with no division at run time. The product of the layers' scale
    changes is 1: moving scale between layers can balance their ranges, not enlarge them all.
    """
    layers = weight_layers(model)
    a = [float(f) for f in factors]
    if len(a) != len(layers) - 1:
        raise ValueError(
            f"factors: {len(a)} given; allowed exactly one per weight layer but the last "
            f"({len(layers) - 1} for this model)"
        )
    if not all(f > 0 and math.isfinite(f) for f in a):
        raise ValueError(f"factors: {a}; allowed finite numbers > 0 (ReLU is homogeneous for positive factors only)")
    new = copy.deepcopy(model)
    new_layers = weight_layers(new)
    prev = 1.0
    with torch.no_grad():
        for i, (_, m) in enumerate(new_layers):
            cur = a[i] if i < len(a) else 1.0
            weight, bias = _tensor(m.weight), m.bias
            weight.mul_(cur / prev)
            if isinstance(bias, Tensor):
                bias.mul_(cur)
            prev = cur
    return new


def balance_factors(model: nn.Module, target: Callable[[list[float]], float] | None = None) -> list[float]:
    """Factors for :func:`rescale_relu_network` that give every weight layer the same ``max|W|``:
    the geometric mean of the layers' maxima (the only common value reachable, since the product of
    the maxima is invariant). Useful before storing in fixed point, where every layer then has the
    same range; ``target`` maps the list of maxima to another common value -- then the last layer
    takes whatever remains."""
    layers = weight_layers(model)
    maxima = [float(_tensor(m.weight).detach().abs().max()) for _, m in layers]
    for (name, _), mx in zip(layers, maxima):
        if not mx > 0:
            raise ValueError(f"model: layer {name!r} has all-zero weights (max|W| = 0); it cannot be rescaled")
    goal = math.exp(sum(math.log(m) for m in maxima) / len(maxima)) if target is None else float(target(maxima))
    if not goal > 0:
        raise ValueError(f"target: returned {goal}; allowed values > 0")
    factors, prev = [], 1.0
    for mx in maxima[:-1]:
        cur = prev * goal / mx  # layer weight becomes mx * cur / prev = goal
        factors.append(cur)
        prev = cur
    return factors
