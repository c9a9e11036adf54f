"""One-dimensional slices of the loss landscape: ``L(w + alpha * d)`` for a direction ``d``.

* :func:`loss_slice` -- loss and accuracy along ``w + alpha * d`` (Goodfellow et al. 2015, 1-D linear
  interpolation; Li et al. 2018, Sec. 4); the weights are restored bit for bit afterwards.
* :func:`random_direction` -- a Gaussian direction, filter-normalized as in Li et al. 2018 (Sec. 4):
  each filter (output row) of a weight scaled to the norm of the same filter of the weight, 1-D
  parameters (biases, BatchNorm) left at zero.
* :func:`bitflip_direction` -- a *bit-flip-like* direction: sparse and multiplicative, like the errors
  that SAR (Zhou et al. 2024) starts from. A random fraction of the weights gets ``d_i = +-(|w_i| + eta)``,
  all others 0, so ``alpha = 1`` doubles or zeroes each hit weight (an exponent-LSB-sized change) and
  larger ``alpha`` reaches further, as higher exponent bits do.

A sharp minimum shows as a loss that rises fast with ``|alpha|``; Foret et al. 2021 (SAM) and Zhou et
al. 2024 (SAR) argue that flat minima tolerate weight perturbations, bit flips included, better.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..evaluate import Output, call, eval_mode, materialize, model_device, pick
from ..metrics import MetricSpec, resolve_metric
from ..params import ParamSelection, select_params
from ..validate import check_cpu_generator

__all__ = ["Direction", "loss_slice", "random_direction", "bitflip_direction"]

Direction = dict[str, Tensor]  # parameter name -> a tensor of its shape
LossFn = Callable[[Tensor, Tensor], Tensor]


def random_direction(
    model: nn.Module,
    generator: torch.Generator | None = None,
    filter_normalized: bool = True,
    params: ParamSelection = None,
) -> Direction:
    """A Gaussian direction over ``model``'s parameters (``params`` selects them by name, default all).

    ``filter_normalized`` (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", Sec. 4): every
    filter ``d[j]`` of a parameter with 2+ dimensions is rescaled to ``||w[j]||`` (a filter is a slice
    along the first, output, dimension), and 1-D parameters (biases, BatchNorm) get ``d = 0``. Without
    it the raw N(0, 1) draw is returned."""
    check_cpu_generator("generator", generator)
    if not isinstance(filter_normalized, bool):
        raise TypeError(f"filter_normalized must be a bool, got {type(filter_normalized).__name__}")
    out: Direction = {}
    with torch.no_grad():
        for name, p in select_params(model, params):
            d = torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device)
            if filter_normalized:
                if p.dim() <= 1:
                    d.zero_()
                else:
                    w = p.detach().reshape(p.shape[0], -1)
                    dn = d.reshape(p.shape[0], -1)
                    scale = w.norm(dim=1, keepdim=True) / dn.norm(dim=1, keepdim=True).clamp_min(1e-12)
                    d = (dn * scale).reshape(p.shape)
            out[name] = d
    return out


def bitflip_direction(
    model: nn.Module,
    fraction: float = 0.01,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    signs: str = "random",
    params: ParamSelection = None,
) -> Direction:
    """A sparse multiplicative direction shaped like bit-flip errors (our reading of the "occurrence and
    intensity" of Zhou et al. 2024): ``k = ceil(fraction * n)`` weights drawn uniformly without replacement
    over all selected parameters get ``d_i = s_i * (|w_i| + eta)``, the others 0.

    ``signs``: ``"random"`` (``s_i = +-1``, so ``w + 1 * d`` doubles or zeroes each hit weight) or
    ``"grow"`` (``s_i = sign(w_i)``, every hit weight grows in magnitude, like a 0 -> 1 flip of a high
    exponent bit). ``eta >= 0`` lets zero weights move too."""
    check_cpu_generator("generator", generator)
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ValueError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0 <= eta < math.inf:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    if signs not in ("random", "grow"):
        raise ValueError(f"signs must be 'random' or 'grow', got {signs!r}")
    chosen = select_params(model, params)
    sizes = [p.numel() for _, p in chosen]
    n = sum(sizes)
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    hit = torch.zeros(n, dtype=torch.bool)
    hit[torch.randperm(n, generator=generator)[:k]] = True
    if signs == "random":
        s = torch.randint(0, 2, (n,), generator=generator).mul(2).sub(1)
    out: Direction = {}
    start = 0
    with torch.no_grad():
        for (name, p), size in zip(chosen, sizes):
            w = p.detach()
            mask = hit[start : start + size].view(p.shape).to(p.device)
            if signs == "random":
                sign = s[start : start + size].view(p.shape).to(device=p.device, dtype=p.dtype)
            else:
                sign = torch.where(w < 0, -1.0, 1.0).to(p.dtype)
            out[name] = torch.where(mask, sign * (w.abs() + eta), torch.zeros_like(w))
            start += size
    return out


def loss_slice(
    model: nn.Module,
    loss_fn: LossFn | None,
    data: object,
    direction: Direction,
    alphas: Sequence[float],
    metric: MetricSpec = "accuracy",
    output: Output = None,
) -> pd.DataFrame:
    """Mean loss and ``metric`` (accuracy by default) of ``model`` on ``data`` at ``w + alpha * d`` for
    each ``alpha``; ``output`` picks the scored tensor from a tuple/dict output (as in ``ber_sweep``).

    ``loss_fn(logits, y)`` returns a mean loss (default ``F.cross_entropy``); ``direction`` maps parameter
    names to tensors of their shapes (see :func:`random_direction`, :func:`bitflip_direction`). The model
    is evaluated in eval mode (BatchNorm with its running statistics) and handed back with its weights
    bit for bit as before and in the mode it came in, also when evaluation raises. Non-finite logits
    count as wrong (the loss may then be inf/nan). Returns one row per alpha: ``alpha, loss, <metric>``."""
    m = resolve_metric(metric)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    loss_fn = F.cross_entropy if loss_fn is None else loss_fn
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable (logits, y) -> loss or None, got {type(loss_fn).__name__}")
    if not isinstance(direction, dict) or not direction:
        raise ValueError("direction must be a non-empty dict of parameter name -> tensor")
    params = dict(model.named_parameters())
    for name, d in direction.items():
        if name not in params:
            raise ValueError(f"direction: {name!r} is not a parameter of the model; parameters are {sorted(params)}")
        if not isinstance(d, Tensor) or d.shape != params[name].shape:
            raise ValueError(f"direction[{name!r}] must be a tensor of shape {tuple(params[name].shape)}")
    alphas = [float(a) for a in alphas]
    if not alphas or not all(math.isfinite(a) for a in alphas):
        raise ValueError("alphas must be a non-empty sequence of finite numbers")
    batches = materialize(data, device=model_device(model))
    saved = {name: params[name].detach().clone() for name in direction}
    rows = []
    try:
        with eval_mode(model), torch.no_grad():
            for a in alphas:
                for name, d in direction.items():
                    params[name].copy_(saved[name] + a * d.to(saved[name]))
                tot = 0.0
                scores = []
                for x, y in batches:
                    out = pick(call(model, x), output)
                    tot += float(loss_fn(out, y)) * len(y)
                    scores.append(m.scores(out, y))
                s = torch.cat(scores)
                rows.append({"alpha": a, "loss": tot / len(s), m.name: m.mean(s)})
    finally:
        with torch.no_grad():
            for name, w in saved.items():
                params[name].copy_(w)
    return pd.DataFrame(rows)
