"""Weight scaling (Fuengfusin 2024, "Harden Deep Neural Networks Against Fault Injections Through
Weight Scaling"): store ``c_i * W_i`` instead of ``W_i`` on the faulty medium and divide by ``c_i``
when reading back, with one constant per layer ``c_i = t / max|W_i|``. It costs no stored bits.

* :class:`WeightScaling` -- the codec (works on top of every format).
* :data:`DEFAULT_T` / :func:`default_t` -- the ``t`` used when none is given, per format.
* :func:`sweep_t` / :func:`best_t` -- choose ``t`` on held-out data.
* :func:`rescale_relu_network` / :func:`balance_factors` -- the function-preserving variant for ReLU
  networks: scale layer ``i`` up and layer ``i+1`` down (ReLU is positively homogeneous), so the
  stored network computes the same function with no division at run time.

Why it helps (the paper: bit errors act like additive noise): in fixed point a flipped bit ``b``
adds ``+-2**(b-n)`` to the stored value whatever the value is, so dividing by ``c`` shrinks the error
by ``c``. In floating point an error is multiplicative: a flip in the exponent multiplies the value
by ``2**(+-2**j)``, and dividing by ``c`` changes nothing about that ratio. What scaling changes is
*which* exponent bits are 1: a weight of magnitude >= 2 has the exponent MSB set, so flipping it
shrinks the weight to ~0 instead of multiplying it by ``2**128`` (FP32) -- but then other exponent
bits are 0 and their flips blow the weight up. The net effect is measured, not assumed.
"""
from __future__ import annotations

import copy
import math
from typing import Callable, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from .formats import FloatFormat, Format, Int, Q
from .protect import Codec, State, _flat_scale

__all__ = ["WeightScaling", "DEFAULT_T", "default_t", "max_t", "sweep_t", "best_t", "rescale_relu_network",
           "balance_factors", "weight_layers"]

#: ``t`` used by ``WeightScaling()`` when none is given, keyed by format name. Floats: chosen by
#: :func:`sweep_t` on the digits validation split (small CNN, BER 1e-3, 60 trials; notebook 02):
#: the best ``t`` puts the largest weight just below the top of the exponent range (FP32 ``2**124``:
#: exponent field 251 = 0b11111011; FP16 ``2**12``: 27 = 0b11011), so that every exponent MSB is set
#: and most other exponent bits are 1 too, while few weights sit one flip away from the all-ones
#: (inf/NaN) exponent. BF16 has FP32's exponent and takes its value (not swept separately).
#: Fixed point ``Q(m, n)`` takes the top of its range; see :func:`default_t`. Re-sweep for your model.
DEFAULT_T: dict[str, float] = {"FP32": 2.0 ** 124, "FP16": 2.0 ** 12, "BF16": 2.0 ** 124}


def max_t(fmt: Format) -> float:
    """The largest ``t`` a format can store without overflow/saturation (``inf`` for :class:`Int`,
    whose own scale factor absorbs any ``c``)."""
    if isinstance(fmt, FloatFormat):
        return float(torch.finfo(fmt.dtype).max)
    if isinstance(fmt, Q):
        return fmt.max_value
    if isinstance(fmt, Int):
        return math.inf
    raise TypeError(f"fmt: expected FP32, FP16, BF16, Q(m, n) or Int(bits), got {type(fmt).__name__}")


def default_t(fmt: Format) -> float:
    """The documented default ``t`` for ``fmt``: :data:`DEFAULT_T` for floats, the top of the range
    ``2**m - 2**-n`` for ``Q(m, n)``, and 1 for :class:`Int` (where scaling changes nothing)."""
    if fmt.name in DEFAULT_T:
        return DEFAULT_T[fmt.name]
    if isinstance(fmt, Q):
        return fmt.max_value
    if isinstance(fmt, Int):
        return 1.0
    raise ValueError(f"fmt: no default t for {fmt.name}; pass t explicitly (allowed formats with a default: "
                     f"{', '.join(DEFAULT_T)}, Q(m, n), Int(bits))")


def _check_t(t: object) -> float | None:
    if t is None:
        return None
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t: expected a positive number (or None for the format's default), got {type(t).__name__}")
    if not (t > 0 and math.isfinite(t)):
        raise ValueError(f"t: {t!r}; allowed values are finite numbers > 0")
    return float(t)


class WeightScaling(Codec):
    """Fuengfusin 2024: store ``c * w`` with ``c = t / max|w|`` per tensor (per layer), read back
    ``decode(word) / c``. ``t`` is the magnitude the largest weight of each tensor is stored at;
    ``None`` takes :func:`default_t` of the format. No stored overhead (``c`` is one number per layer).

    ``pow2=True`` rounds ``c`` down to a power of two: then float formats scale exactly (only the
    exponent moves) and a fault-free FP32 store reads back bit for bit; otherwise the round trip is
    exact up to the format's rounding of ``c * w`` (at most one unit in the last place for FP32, half
    a step ``2**-n / c`` for ``Q(m, n)``). With :class:`Int`, scaling is a no-op: the format's own
    scale factor absorbs ``c``, so the stored words are the unscaled ones.

    Errors: ``t <= 0``; ``t`` above what the format can hold (:func:`max_t`, e.g. 3.97 for Q2.5);
    a tensor whose weights are all 0 (``max|w| = 0``, no ``c`` exists: leave it out with ``params=``).
    """

    def __init__(self, t: float | None = None, pow2: bool = False) -> None:
        self.t = _check_t(t)
        if not isinstance(pow2, bool):
            raise TypeError(f"pow2: expected a bool, got {type(pow2).__name__}")
        self.pow2 = pow2
        tag = "default" if self.t is None else f"{self.t:g}"
        self.name = f"scale(t={tag}{', pow2' if pow2 else ''})"

    def t_for(self, fmt: Format) -> float:
        """The ``t`` used with ``fmt`` (checked against the format's range)."""
        t = default_t(fmt) if self.t is None else self.t
        top = max_t(fmt)
        if t > top:
            raise ValueError(f"t: {t:g} does not fit {fmt.name}, whose largest value is {top:g}; "
                             f"allowed 0 < t <= {top:g}")
        return t

    def fit(self, w: Tensor, fmt: Format) -> State:
        t = self.t_for(fmt)
        a = w.detach().abs()
        m = float(a.max()) if a.numel() else 0.0
        if not math.isfinite(m):
            raise ValueError(f"w: the tensor holds non-finite weights (max|w| = {m}); weight scaling needs "
                             "finite weights")
        if m == 0.0:
            raise ValueError("w: every weight of this tensor is 0 (max|w| = 0), so c = t / max|w| does not "
                             "exist; leave the tensor out of the store with params=...")
        c = t / m
        if self.pow2:
            c = 2.0 ** math.floor(math.log2(c))
        scaled = w.detach().to(torch.float64) * c
        return {"c": c, "scale": _flat_scale(fmt, scaled)}

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        return fmt.encode(w.detach().to(torch.float64) * state["c"], state.get("scale"))

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        v = fmt.decode(words, state.get("scale")).to(torch.float64)
        return (v / state["c"]).to(torch.float32)

    def is_exact(self, fmt: Format) -> bool:
        return False


# ---------------------------------------------------------------------------------------------
# choosing t


def sweep_t(model: nn.Module, val_data: object, ts: Sequence[float], fmt: Format, ber: float | Sequence[float],
            trials: int = 20, seed: int = 0, params: object = None, pow2: bool = False,
            progress: bool | None = None) -> pd.DataFrame:
    """Accuracy on held-out ``val_data`` with weights stored in ``fmt`` under :class:`WeightScaling`
    for each ``t`` in ``ts`` (``None`` means no scaling), at bit error rate(s) ``ber``, ``trials``
    draws each. Every ``t`` sees the same fault draws (same ``seed``), so differences come from ``t``.

    Returns one row per trial (the :func:`~bitlab.campaign.ber_sweep` columns plus ``t`` and
    ``clean_accuracy``, the fault-free accuracy with that ``t``); ``df.attrs["best_t"]`` is
    :func:`best_t` of the frame. ``t`` values that do not fit the format are an error (see ``max_t``).
    """
    from .campaign import ber_sweep  # late import: campaign -> inject -> protect

    bers = [float(ber)] if isinstance(ber, (int, float)) else [float(b) for b in ber]
    if not ts:
        raise ValueError("ts: empty; give at least one t > 0 (or None for no scaling)")
    frames = []
    for t in ts:
        codec = None if t is None else WeightScaling(t, pow2=pow2)
        if codec is not None:
            codec.t_for(fmt)
        df = ber_sweep(model, val_data, bers, trials=trials, fmt=fmt, codec=codec, params=params, seed=seed,
                       progress=progress)
        df["t"] = float("nan") if t is None else float(t)
        df["clean_accuracy"] = df.attrs["clean_accuracy"]
        frames.append(df)
    out = pd.concat(frames, ignore_index=True)
    out.attrs["best_t"] = best_t(out)
    return out


def best_t(df: pd.DataFrame) -> float:
    """The ``t`` with the highest mean accuracy in a :func:`sweep_t` frame (ties: higher fault-free
    accuracy, then the smaller ``t``). ``nan`` means no scaling was best."""
    g = df.groupby("t", dropna=False).agg(acc=("accuracy", "mean"), clean=("clean_accuracy", "first"))
    g = g.reset_index()
    g["neg_t"] = -g["t"].fillna(0.0)
    top = g.sort_values(["acc", "clean", "neg_t"], ascending=False).iloc[0]
    return float(top["t"])


# ---------------------------------------------------------------------------------------------
# function-preserving rescaling of ReLU networks

_WEIGHT = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# modules f with f(a x) = a f(x) for every a > 0 (positive homogeneity), and that hold no weights
_HOMOGENEOUS = (nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
                nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d,
                nn.AdaptiveMaxPool2d, nn.Flatten, nn.Dropout, nn.Identity)


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
        raise TypeError(f"model: function-preserving rescaling needs an nn.Sequential of Linear/Conv layers "
                        f"joined by ReLU/pooling/flatten; got {type(model).__name__} (residual connections and "
                        "other non-sequential graphs are not supported: use the WeightScaling codec instead)")
    mods = _flatten(model)
    idx = [i for i, (_, m) in enumerate(mods) if isinstance(m, _WEIGHT)]
    if len(idx) < 2:
        raise ValueError(f"model: needs at least two Linear/Conv layers to move scale between; found {len(idx)}")
    for name, m in mods[idx[0]:idx[-1] + 1]:
        if isinstance(m, _WEIGHT):
            if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d) and m.padding_mode != "zeros":
                raise ValueError(f"model: layer {name!r} pads with {m.padding_mode!r}; only zero padding "
                                 "commutes with scaling")
            continue
        if not isinstance(m, _HOMOGENEOUS):
            raise ValueError(f"model: module {name!r} ({type(m).__name__}) sits between weight layers and is not "
                             "positively homogeneous (f(a x) != a f(x)), so rescaling would change the function; "
                             "allowed in between: ReLU, LeakyReLU, max/avg pooling, Flatten, Dropout, Identity")
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
        raise ValueError(f"factors: {len(a)} given; allowed exactly one per weight layer but the last "
                         f"({len(layers) - 1} for this model)")
    if not all(f > 0 and math.isfinite(f) for f in a):
        raise ValueError(f"factors: {a}; allowed finite numbers > 0 (ReLU is homogeneous for positive factors only)")
    new = copy.deepcopy(model)
    new_layers = weight_layers(new)
    prev = 1.0
    with torch.no_grad():
        for i, (_, m) in enumerate(new_layers):
            cur = a[i] if i < len(a) else 1.0
            m.weight.mul_(cur / prev)
            if m.bias is not None:
                m.bias.mul_(cur)
            prev = cur
    return new


def balance_factors(model: nn.Module, target: Callable[[list[float]], float] | None = None) -> list[float]:
    """Factors for :func:`rescale_relu_network` that give every weight layer the same ``max|W|``:
    the geometric mean of the layers' maxima (the only common value reachable, since the product of
    the maxima is invariant). Useful before storing in fixed point, where every layer then has the
    same range; ``target`` maps the list of maxima to another common value -- then the last layer
    takes whatever remains."""
    layers = weight_layers(model)
    maxima = [float(m.weight.detach().abs().max()) for _, m in layers]
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
