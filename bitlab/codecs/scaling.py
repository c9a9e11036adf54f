"""Weight scaling (Fuengfusin 2024, "Harden Deep Neural Networks Against Fault Injections Through
Weight Scaling"): store ``c_i * W_i`` instead of ``W_i`` on the faulty medium and divide by ``c_i``
when reading back, with one constant per layer ``c_i = t / max|W_i|``. It costs no stored bits.

* :class:`WeightScaling` -- the codec (works on top of every format).
* :data:`DEFAULT_T` / :func:`default_t` -- the ``t`` used when none is given, per format.
* :func:`bitlab.campaigns.scaling.sweep_t` / :func:`~bitlab.campaigns.scaling.best_t` -- choose ``t``
  on held-out data; :mod:`bitlab.rescale` -- the function-preserving variant for ReLU networks.

Why it helps (the paper: bit errors act like additive noise): in fixed point a flipped bit ``b``
adds ``+-2**(b-n)`` to the stored value whatever the value is, so dividing by ``c`` shrinks the error
by ``c``. In floating point an error is multiplicative: a flip in the exponent multiplies the value
by ``2**(+-2**j)``, and dividing by ``c`` changes nothing about that ratio. What scaling changes is
*which* exponent bits are 1: a weight of magnitude >= 2 has the exponent MSB set, so flipping it
shrinks the weight to ~0 instead of multiplying it by ``2**128`` (FP32) -- but then other exponent
bits are 0 and their flips blow the weight up. The net effect is measured, not assumed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..coverage import Coverage
from ..formats import FloatFormat, Format, Int, Q
from ..params import ParamSelection, select_params
from .base import Codec, State, flat_scale

__all__ = ["WeightScaling", "DEFAULT_T", "default_t", "max_t"]

#: ``t`` used by ``WeightScaling()`` when none is given, keyed by format name. Floats: chosen by
#: :func:`sweep_t` on the digits validation split (small CNN, BER 1e-3, 60 trials; notebook 02):
#: the best ``t`` puts the largest weight just below the top of the exponent range (FP32 ``2**124``:
#: exponent field 251 = 0b11111011; FP16 ``2**12``: 27 = 0b11011), so that every exponent MSB is set
#: and most other exponent bits are 1 too, while few weights sit one flip away from the all-ones
#: (inf/NaN) exponent. BF16 has FP32's exponent field; its own sweep in notebook 02 picks FP32's
#: value, ``2**124``, too.
#: Fixed point ``Q(m, n)`` takes the top of its range; see :func:`default_t`. Re-sweep for your model.
DEFAULT_T: dict[str, float] = {"FP32": 2.0**124, "FP16": 2.0**12, "BF16": 2.0**124}
#: why an all-zero tensor is stored unscaled (the ``"left_alone"`` entry of its state)
ZERO = "every weight is 0 (max|w| = 0): no c = t / max|w| exists, stored unscaled (c = 1)"


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
    raise ValueError(
        f"fmt: no default t for {fmt.name}; pass t explicitly (allowed formats with a default: "
        f"{', '.join(DEFAULT_T)}, Q(m, n), Int(bits))"
    )


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

    A tensor whose weights are all 0 (``max|w| = 0``, e.g. a zero-initialised bias) has no ``c``: it is
    stored unscaled (``c = 1``), its state says so under ``"left_alone"``, a store built on it
    (:class:`bitlab.Store`, :func:`bitlab.corrupted`) warns naming it, and :meth:`coverage` lists it;
    with ``strict=True`` it is an error instead.

    Errors: ``t <= 0``; ``t`` above what the format can hold (:func:`max_t`, e.g. 3.97 for Q2.5);
    a tensor with a non-finite weight; an all-zero tensor with ``strict=True``.
    """

    def __init__(self, t: float | None = None, pow2: bool = False, strict: bool = False) -> None:
        self.t = _check_t(t)
        if not isinstance(pow2, bool):
            raise TypeError(f"pow2: expected a bool, got {type(pow2).__name__}")
        if not isinstance(strict, bool):
            raise TypeError(f"strict: expected a bool, got {type(strict).__name__}")
        self.pow2 = pow2
        self.strict = strict
        tag = "default" if self.t is None else f"{self.t:g}"
        self.name = f"scale(t={tag}{', pow2' if pow2 else ''})"

    def t_for(self, fmt: Format) -> float:
        """The ``t`` used with ``fmt`` (checked against the format's range)."""
        t = default_t(fmt) if self.t is None else self.t
        top = max_t(fmt)
        if t > top:
            raise ValueError(
                f"t: {t:g} does not fit {fmt.name}, whose largest value is {top:g}; allowed 0 < t <= {top:g}"
            )
        return t

    def fit(self, w: Tensor, fmt: Format) -> State:
        t = self.t_for(fmt)
        a = w.detach().abs()
        m = float(a.max()) if a.numel() else 0.0
        if not math.isfinite(m):
            raise ValueError(
                f"w: the tensor holds non-finite weights (max|w| = {m}); weight scaling needs finite weights"
            )
        if m == 0.0:
            if self.strict:
                raise ValueError(
                    "w: every weight of this tensor is 0 (max|w| = 0), so c = t / max|w| does not "
                    "exist; leave the tensor out with params=..., or pass strict=False to store it unscaled"
                )
            return {"c": 1.0, "scale": flat_scale(fmt, w.detach().to(torch.float64)), "left_alone": ZERO}
        c = t / m
        if self.pow2:
            c = 2.0 ** math.floor(math.log2(c))
        scaled = w.detach().to(torch.float64) * c
        return {"c": c, "scale": flat_scale(fmt, scaled)}

    def encode(self, w: Tensor, fmt: Format, state: State) -> Tensor:
        return fmt.encode(w.detach().to(torch.float64) * state["c"], state.get("scale"))

    def coverage(self, model: nn.Module, fmt: Format, params: ParamSelection = None) -> Coverage:
        """Which of the parameters ``params`` selects (default: all) are scaled (``"covered"``, with their
        ``c``) and which are stored unscaled (``"unsupported"``: all zero); a tensor :meth:`fit` refuses
        (non-finite weights) raises naming it."""
        cov = Coverage(self.name)
        modules = dict(model.named_modules())
        for n, p in select_params(model, params):
            owner = n.rpartition(".")[0]
            try:
                state = self.fit(p.detach(), fmt)
            except ValueError as e:
                raise ValueError(f"params: {n!r}: {e}") from e
            kind = type(modules[owner]).__name__
            if "left_alone" in state:
                cov.add(n, "weight", owner, kind, "unsupported", state["left_alone"])
            else:
                cov.add(n, "weight", owner, kind, "covered", f"c = {state['c']:g}")
        return cov

    def decode(self, words: Tensor, fmt: Format, state: State) -> Tensor:
        v = fmt.decode(words, state.get("scale")).to(torch.float64)
        return (v / state["c"]).to(torch.float32)

    def is_exact(self, fmt: Format) -> bool:
        return False
