"""The screen: per weight, bounds on how far any of its flips can move the naive logits, and the
(flip, sample) pairs whose outcome they settle (certainly the clean one), all bits of a weight at once."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .budget import CACHE_ELEMENTS
from .clean import CleanRun
from .follow import spread_bounds
from .layers import MIXING, route, supported
from .rounding import SAFE_MAX, TINY, dot_gamma, fan_in, weight_of

__all__ = [
    "ScreenBounds",
    "ScreenLayer",
    "bound_width",
    "certifiable",
    "screen_bounds",
    "screen_layer",
    "uncertified_reason",
]


@dataclass(eq=False)
class ScreenBounds:
    """The screen's bounds for one chunk of K flips of W distinct weights (see :func:`screen_bounds`)."""

    settled: Tensor  # (K, N) bool: the sample's outcome is certainly the clean one
    per_delta: Tensor  # A, (W, N, classes): logit change per unit |delta|, per distinct weight
    rounding: Tensor  # B, (C, N, classes): flip-independent rounding part, per output channel of the layer
    weight_of_flip: Tensor  # (K,) flip -> distinct weight
    channel_of_weight: Tensor  # (W,) output channel / unit of each distinct weight
    abs_delta: Tensor  # (K,) |delta|, rounded up
    safe: Tensor  # (K,) bool: no partial sum of the flipped run can overflow
    gamma_sum: float  # G: sum of the gammas of the mixing layers from the flipped one on


@dataclass(eq=False)
class ScreenLayer:
    """What the screen needs of mixing layer ``l`` for every flip in it (see :func:`screen_layer`)."""

    rounding: Tensor  # B, (C, N, classes)
    rounding_top: Tensor  # (C,) the largest B anywhere on the way, per output channel
    rooms: Tensor  # (C, N, classes): s * room_k, the clean gap less both B's (inf/-inf at the label)
    sign: Tensor  # (N,) +1 for a clean right sample, -1 for a wrong one
    top_sum: float  # the largest clean sum |W||x| + |b| at any mixing layer from l on


def uncertified_reason(clean: CleanRun, l: int) -> str | None:
    """Why the bounds cannot cover any flip from layer ``l`` on, by name: mixing layers or activations
    that are not float32 (the rounding constants are float32's; float16/bfloat16 kernels round and
    accumulate differently), or a chain that is not on the CPU (the bounds' bookkeeping is CPU code).
    None where neither applies."""
    for u in range(l, len(clean.layers)):
        m = clean.layers[u]
        if isinstance(m, MIXING) and weight_of(m).dtype != torch.float32:
            return f"{weight_of(m).dtype} weights in layer {u} (the bounds cover float32 arithmetic only)"
    for u in range(l, len(clean.acts)):
        if clean.acts[u].dtype != torch.float32:
            return f"{clean.acts[u].dtype} activations at layer {u} (the bounds cover float32 arithmetic only)"
    device = clean.acts[l].device
    if device.type != "cpu":
        return f"device {device} (the bounds run on the CPU only)"
    return None


def certifiable(clean: CleanRun, l: int, attr: str) -> bool:
    """Whether the bounds cover a flip of ``attr`` of layer ``l``: a supported Linear/Conv2d, followed
    by supported modules only, full-precision float32 matmuls on the CPU and finite clean activations."""
    layers = clean.layers
    if attr not in ("weight", "bias") or not isinstance(layers[l], MIXING) or not supported(layers[l]):
        return False
    if uncertified_reason(clean, l) is not None:
        return False
    if any(
        a.dim() != (2 if isinstance(m, nn.Linear) else 4)
        for m, a in zip(layers[l:], clean.acts[l:])
        if isinstance(m, MIXING)
    ):
        return False
    if any(not supported(m) for m in layers[l:]):
        return False
    if torch.get_float32_matmul_precision() != "highest":
        return False  # reduced-precision matmuls would break the rounding bounds
    if any(a.dtype != torch.float32 for a in clean.acts[l:]):
        return False
    return all(bool(torch.isfinite(a).all()) for a in clean.acts[l:])


def bound_width(clean: CleanRun, l: int) -> int:
    """The widest bound per sample that :func:`spread_bounds` carries for one weight of layer ``l``:
    one channel of its output, then whole activations from the next mixing layer on."""
    _, t = route(clean.layers, l)
    plane = clean.acts[l + 1][0].numel() // clean.acts[l + 1].shape[1]
    dense = [a[0].numel() for a in clean.acts[t + 1 :]] if t is not None else []
    return max([plane] + dense) + 16


def screen_layer(clean: CleanRun, l: int) -> ScreenLayer:
    """The flip-independent part of the screen for mixing layer ``l`` (memoize with
    ``clean.memo(screen_layer, l)``).

    Per weight and sample the screen needs the largest |delta| that certainly keeps the clean
    outcome. A clean right sample stays right while |delta| (A_y + A_k) < (z_y - z_k) - (B_y + B_k)
    for every k != y; a wrong one stays wrong while |delta| (A_y + A_k) < (z_k - z_y) - (B_y + B_k)
    for some k. With s = +1 (right) / -1 (wrong) both are one minimum over s * room_k / A'_k, and
    the threshold is s times it; ``rooms`` holds s * room_k."""
    layers = clean.layers
    m = layers[l]
    N = clean.y.shape[0]
    C = clean.acts[l + 1].shape[1]
    P = clean.abs_sums(l)[0].numel() // C
    g = dot_gamma(m)
    S = clean.abs_sums(l).reshape(N, C, P).transpose(0, 1)
    B, B_top = spread_bounds(clean, l, torch.arange(C), S * (2 * g) + 2 * TINY * (fan_in(m) + 2), True)
    z = clean.acts64(len(layers))  # (N, classes)
    y = clean.y[:, None]
    gap = (z.gather(1, y) - z) * (1 - 1e-12)  # z_y - z_k
    Bw = B * (1 + 1e-9)  # (C, N, classes)
    Bsum = Bw.gather(2, y[None].expand(C, N, 1)) + Bw
    right = (gap[None] - Bsum).scatter_(2, y[None].expand(C, N, 1), math.inf)
    wrong = (-gap[None] - Bsum).scatter_(2, y[None].expand(C, N, 1), -math.inf)
    sign = torch.where(clean.ok, 1.0, -1.0).double()
    rooms = torch.where(clean.ok[None, :, None], right, -wrong)
    mixing = [u for u in range(l, len(layers)) if isinstance(layers[u], MIXING)]
    top_sum = max(float(clean.abs_sums(u).max()) for u in mixing)
    return ScreenLayer(B, B_top, rooms, sign, top_sum)


def screen_bounds(clean: CleanRun, l: int, attr: str, idx: Tensor, new: Tensor) -> ScreenBounds:
    """The screen: bounds on how far the flipped naive logits can be from the clean naive logits,
    and the (flip, sample) pairs whose outcome they settle (certainly the clean one). Raises
    :class:`~.follow.Untracked` if the chain cannot be followed.

    Per sample and class the change is at most ``e = |delta| A + B``: ``A`` propagates the
    flipped weight's inputs |x| through |W| of every later layer (ReLU and max-pooling are
    1-Lipschitz), each mixing layer times (1 + g); ``B`` propagates both runs' rounding bounds
    2 g S (Higham eq. 3.5, ``S = sum |w||x| + |b|``). Both are computed once per weight and shared
    by all its bits, so a flip is screened by one comparison per sample: the outcome is unchanged
    when ``e_y + e_k`` is below the clean gap ``z_y - z_k`` for every class ``k`` (for a clean right
    sample; for a wrong one, when some ``k`` stays above ``y``). Overflow is excluded per flip from
    the largest bound on the way. Samples whose inputs to the flipped weight are all zero are
    unchanged (exact zero terms)."""
    layers = clean.layers
    m = layers[l]
    N = clean.y.shape[0]
    flat = getattr(m, attr).detach().reshape(-1)
    abs_delta = (new.double() - flat[idx].double()).abs() * (1 + 1e-12)  # (K,)
    weights, weight_of_flip = idx.unique(return_inverse=True)
    fan = 1 if attr == "bias" else fan_in(m)
    chans = weights // fan
    C = clean.acts[l + 1].shape[1]
    P = clean.abs_sums(l)[0].numel() // C
    if attr == "bias":
        planes, X = torch.zeros(len(weights), dtype=torch.int64), torch.ones(1, N, P, dtype=torch.float64)
    else:  # the distinct input planes of the weights (shared by all output channels)
        distinct, planes = (weights % fan).unique(return_inverse=True)
        X = clean.input_planes(l).abs().index_select(1, distinct).transpose(0, 1)  # (Q, N, P)
    untouched = (X.amax(2) == 0).index_select(0, planes)  # (W, N)
    g = dot_gamma(m)
    layer = clean.memo(screen_layer, l)
    gammas = [dot_gamma(layers[u]) for u in range(l, len(layers)) if isinstance(layers[u], MIXING)]
    X = X * (1 + g)
    n_cls = clean.acts[-1].shape[1]
    A = torch.empty(len(weights), N, n_cls, dtype=torch.float64)
    A_top = torch.empty(len(weights), dtype=torch.float64)
    threshold = torch.empty(len(weights), N, dtype=torch.float64)  # the largest |delta| that settles
    per = max(1, CACHE_ELEMENTS // (N * max(bound_width(clean, l), 4 * n_cls)))
    y = clean.y[None, :, None]
    for s in range(0, len(weights), per):  # in small steps: big temporaries cost page faults
        a, A_top[s : s + per] = spread_bounds(clean, l, chans[s : s + per], X, False, planes[s : s + per])
        A[s : s + per] = a
        D = a.add_(a.gather(2, y.expand(a.shape[0], N, 1))).mul_(1 + 1e-9)
        # 0/0 gives NaN, which compares false (not settled)
        threshold[s : s + per] = (layer.rooms.index_select(0, chans[s : s + per]) / D).amin(2).mul_(layer.sign[None])
    threshold.masked_fill_(untouched, math.inf)
    # overflow: no naive partial sum of the flipped run may reach SAFE_MAX
    reach = layer.top_sum + abs_delta * A_top[weight_of_flip] + layer.rounding_top[chans][weight_of_flip]
    safe = reach * (1 + max(gammas)) * (1 + 1e-9) < SAFE_MAX
    settled = ((abs_delta[:, None] < threshold[weight_of_flip]) & safe[:, None]) | untouched[weight_of_flip]
    return ScreenBounds(settled, A, layer.rounding, weight_of_flip, chans, abs_delta, safe, sum(gammas))
