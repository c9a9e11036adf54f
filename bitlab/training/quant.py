"""Post-training symmetric integer quantization of weights and activations (Fasfous et al. 2022 setting).

Fasfous et al. 2022 ("Mind the Scaling Factors") study 8-bit quantized CNNs whose *scale factors*
decide how much damage a flipped bit does: an activation word ``q`` stands for ``q * s``, so a flip
of bit ``k`` adds ``+-2**k * s``. Adversarial training enlarges the activation ranges, hence ``s``,
hence the fault. This module simulates such an integer network in float ("fake quantization").

Number format (the same as :class:`bitlab.formats.Int`)::

    q = clamp(round_half_even(x / s), -qmax, qmax),   qmax = 2**(bits-1) - 1,   x' = q * s

stored as ``bits``-wide two's complement words (a flip can reach ``-2**(bits-1)``).

What is quantized (our reading of "what the integer hardware reads"):

* the **weights** of every chosen layer (Linear, Conv1d/2d/3d, Embedding, MultiheadAttention, LSTM/GRU/RNN;
  see :mod:`.qlayers`), with scale ``max|w| / qmax`` per tensor or per output channel (dim 0); the bias
  stays in float (an int32 accumulator adds it at scale ``s_x * s_w``);
* the **input activation** of every chosen layer, i.e. the tensor the layer reads from memory, with one
  scale per layer calibrated on calibration data (``"max"``: ``max|x| / qmax``; ``"percentile"``: the
  given percentile of ``|x|`` over all calibration values, larger inputs saturate).

What is not quantized is listed by name in ``qm.coverage`` (:class:`bitlab.coverage.Coverage`).

Layers not chosen, and every other module (ReLU, pooling, BatchNorm, residual additions), run in float.
BatchNorm is *not* folded into the convolutions. A chosen layer then computes
``y = (q_x * s_x) @ (q_w * s_w)^T + b = (q_x @ q_w^T) * s_x * s_w + b``, what an integer accelerator with
an int32 accumulator and float requantization computes.

Activation faults: :meth:`QuantizedModel.set_act_fault` installs ``fn(layer_name, words) -> words``,
applied to the integer activation words of each chosen layer's input *after* quantization and *before*
dequantization, at every forward pass. See its docstring for the word format.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from ..coverage import Coverage, enforce
from ..formats import finite_abs, to_signed, to_unsigned
from .qlayers import (
    UNITS,
    choose_layers,
    has_input,
    input_scales,
    map_inputs,
    observe_inputs,
    quant_coverage,
    slow_path,
    unit_weights,
)
from .qlayers import quantizable_layers as quantizable_layers

__all__ = [
    "qmax",
    "quantize",
    "dequantize",
    "fake_quantize",
    "weight_scale",
    "quantizable_layers",
    "calibrate_activations",
    "quantize_model",
    "QuantizedModel",
    "scale_report",
    "ActFault",
    "ACT_METHODS",
]

ACT_METHODS = ("max", "percentile")
#: ``fn(layer_name, words) -> words`` on unsigned two's complement activation words (see set_act_fault)
ActFault = Callable[[str, Tensor], Tensor]
QUANTIZABLE = UNITS


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 32:
        raise ValueError(f"bits: expected an int in 2..32, got {bits!r}")
    return bits


def qmax(bits: int = 8) -> int:
    """Largest integer level of symmetric ``bits``-bit quantization: ``2**(bits-1) - 1`` (127 for 8 bits)."""
    return (1 << (_check_bits(bits) - 1)) - 1


def _as_scale(scale: Tensor | float, like: Tensor) -> Tensor:
    s = torch.as_tensor(scale, dtype=torch.float64, device=like.device)
    if not bool(torch.isfinite(s).all()) or bool((s <= 0).any()):
        raise ValueError(f"scale: must be finite and > 0, got {scale!r}")
    return s


def quantize(x: Tensor, scale: Tensor | float, bits: int = 8) -> Tensor:
    """Signed integer levels ``clamp(round(x / scale), -qmax, qmax)`` as int64 (round half to even,
    saturating; NaN -> 0). ``scale`` is a positive float or a tensor broadcastable to ``x``."""
    q_max = qmax(bits)
    q = torch.round(x.detach().to(torch.float64) / _as_scale(scale, x))
    q = torch.nan_to_num(q, nan=0.0, posinf=q_max, neginf=-q_max).clamp(-q_max, q_max)
    return q.to(torch.int64)


def dequantize(q: Tensor, scale: Tensor | float) -> Tensor:
    """Float32 values ``q * scale`` of integer levels ``q``."""
    s = torch.as_tensor(scale, dtype=torch.float64, device=q.device)
    return (q.to(torch.float64) * s).to(torch.float32)


def fake_quantize(x: Tensor, scale: Tensor | float, bits: int = 8) -> Tensor:
    """``dequantize(quantize(x))`` in ``x``'s dtype, with a straight-through gradient (identity), so that
    gradient-based attacks can run through a quantized model."""
    xq = dequantize(quantize(x, scale, bits), scale).to(x.dtype)
    return x + (xq - x).detach() if x.requires_grad else xq


def weight_scale(w: Tensor, bits: int = 8, per_channel: bool = False) -> Tensor:
    """``max|w| / qmax`` over the finite weights: a 0-dim tensor, or shape ``(w.shape[0],)`` per output
    channel. A range of 0 gets scale 1 (every level is 0 anyway), as :class:`bitlab.formats.Int` does."""
    a = finite_abs(w)
    amax = a.reshape(a.shape[0], -1).amax(dim=1) if per_channel and w.dim() > 1 else a.max()
    s = amax / qmax(bits)
    return torch.where(s > 0, s, torch.ones_like(s))


def _nonzero_max(s: Tensor, w: Tensor) -> float:
    """The largest scale over the channels with a nonzero range (all channels if none has one)."""
    nonzero = s[w.detach().reshape(w.shape[0], -1).abs().amax(dim=1) > 0] if s.dim() else s
    return float(nonzero.max()) if nonzero.numel() else float(s.max())


def _broadcast_channels(s: Tensor, w: Tensor) -> Tensor:
    return s.reshape(-1, *([1] * (w.dim() - 1))) if s.dim() == 1 else s


def _check_act_args(bits: int, method: str, percentile: float) -> None:
    _check_bits(bits)
    if method not in ACT_METHODS:
        raise ValueError(f"act_method: {method!r}; allowed {ACT_METHODS}")
    if not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")


def calibrate_activations(
    model: nn.Module,
    calib_data: object,
    layers: str | Sequence[str] | None = None,
    bits: int = 8,
    method: str = "max",
    percentile: float = 99.99,
) -> tuple[dict[str, float], dict[str, float]]:
    """Scale factors of the input activations of ``layers`` (default: every quantizable layer that reads a
    float input, see :mod:`.qlayers`), observed by forward pre-hooks over ``calib_data`` in eval mode.
    Returns ``(scales, max_abs)``, both dicts layer name -> float. ``method="max"``: ``max|x| / qmax``;
    ``"percentile"``: the ``percentile``-th percentile of ``|x|`` over every calibration value of that
    input, divided by ``qmax``. An attention layer's query, key and value share one scale. A named layer
    whose forward is never called, or that reads no float input (Embedding), is an error naming it.
    Every submodule's mode is restored afterwards."""
    _check_act_args(bits, method, percentile)
    modules = dict(model.named_modules())
    names = choose_layers(model, layers)
    if layers is None:
        names = [n for n in names if has_input(modules[n])]
    no_input = [n for n in names if not has_input(modules[n])]
    if no_input:
        raise ValueError(f"layers: {no_input} read integer token ids (Embedding): no input activation to calibrate")
    amax, seen, unused = observe_inputs(model, calib_data, names, method)
    if unused:
        raise ValueError(
            f"layers: {unused} received no input during calibration: their forward was never called "
            "(unused in the model's forward, or computed functionally by their parent)"
        )
    return input_scales(amax, seen, qmax(bits), method, percentile), amax


class QuantizedModel(nn.Module):
    """A float model evaluated as its integer counterpart: a deep copy (``.model``) whose chosen layers
    hold fake-quantized weights and fake-quantize their input activations in forward pre-hooks.

    Attributes: ``bits``, ``weight_layers`` (units with quantized weights, model order), ``layers`` (those
    whose input activation is quantized: what activation faults hit), ``act_scales`` (name -> float),
    ``act_max_abs`` (name -> ``max |input|`` seen in calibration), ``param_scales`` (parameter name -> 0-dim
    tensor, or ``(shape[0],)`` when ``per_channel``), ``weight_scales`` (the same keyed by layer, for layers
    with one ``weight``), ``weight_max_abs`` (layer -> float), ``act_method``, ``coverage`` (a
    :class:`~bitlab.coverage.Coverage`: what was quantized, what stays float and why).
    ``quantize_activations = False`` switches the activation quantizers (and fault hook) off.
    Build it with :func:`quantize_model`.
    """

    def __init__(
        self,
        model: nn.Module,
        bits: int,
        layers: list[str],
        act_scales: dict[str, float],
        act_max_abs: dict[str, float],
        per_channel: bool,
        act_method: str,
        weight_layers: list[str] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.bits = bits
        self.weight_layers = list(layers if weight_layers is None else weight_layers)
        self.per_channel = per_channel
        self.act_method = act_method
        self.quantize_activations = True
        self.coverage = Coverage("quantize_model")
        self.param_scales: dict[str, Tensor] = {}
        self.weight_scales: dict[str, Tensor] = {}
        self.weight_max_abs: dict[str, float] = {}
        self._scale_max: dict[str, float] = {}  # weight scale, max over channels with a nonzero range
        self._param_of: dict[str, str] = {}  # every weight's name (tied aliases too) -> name quantized under
        self._quantized: dict[int, str] = {}  # id(param) -> name quantized under
        self._act_fault: ActFault | None = None
        modules = dict(model.named_modules())
        max_abs: dict[int, float] = {}
        with torch.no_grad():
            for n in self.weight_layers:
                weights = unit_weights(n, modules[n])
                for pname, w in weights:
                    if id(w) not in self._quantized:
                        self._quantized[id(w)] = pname
                        s = weight_scale(w, bits, per_channel)
                        self.param_scales[pname] = s
                        max_abs[id(w)] = float(w.detach().abs().max()) if w.numel() else 0.0
                        w.copy_(fake_quantize(w.detach(), _broadcast_channels(s, w), bits))
                    self._param_of[pname] = self._quantized[id(w)]
                firsts = [self._param_of[p] for p, _ in weights]
                self.weight_max_abs[n] = max(max_abs[id(w)] for _, w in weights)
                self._scale_max[n] = max(_nonzero_max(self.param_scales[f], w) for f, (_, w) in zip(firsts, weights))
                if len(weights) == 1:
                    self.weight_scales[n] = self.param_scales[firsts[0]]
        self.layers: list[str] = []
        self.act_scales: dict[str, float] = {}
        self.act_max_abs: dict[str, float] = {}
        self._handles: list = []
        self.attach(layers, act_scales, act_max_abs)

    def attach(self, layers: list[str], act_scales: dict[str, float], act_max_abs: dict[str, float]) -> None:
        """Quantize the input activations of ``layers`` with ``act_scales`` (replacing any earlier hooks)."""
        for h in self._handles:
            h.remove()
        modules = dict(self.model.named_modules())
        self.layers = list(layers)
        self.act_scales = {n: act_scales[n] for n in layers}
        self.act_max_abs = {n: act_max_abs[n] for n in layers}
        self._handles = [
            modules[n].register_forward_pre_hook(self._make_hook(n), with_kwargs=True) for n in self.layers
        ]

    def _make_hook(self, name: str) -> Callable:
        return _InputQuantizer(self, name)

    def quantize_input(self, name: str, x: Tensor) -> Tensor:
        """What layer ``name`` reads: ``x`` quantized with its activation scale, passed through the
        fault hook (if any) as words, dequantized; straight-through gradient."""
        s = self.act_scales[name]
        if self._act_fault is None:
            return fake_quantize(x, s, self.bits)
        q = quantize(x, s, self.bits)
        words = to_unsigned(q, self.bits)
        out = self._act_fault(name, words)
        if not isinstance(out, Tensor) or out.shape != words.shape:
            raise ValueError(
                f"act fault: fn({name!r}, words) must return a tensor of shape "
                f"{tuple(words.shape)}, got {getattr(out, 'shape', type(out).__name__)}"
            )
        if out.is_floating_point() or out.is_complex():
            raise TypeError(f"act fault: fn({name!r}, words) must return integer words, got {out.dtype}")
        xq = dequantize(to_signed(out, self.bits), s).to(x.dtype)
        return x + (xq - x).detach() if x.requires_grad else xq

    def set_act_fault(self, fn: ActFault | None) -> ActFault | None:
        """Install (or with ``None`` remove) the activation fault hook; returns the previous one.

        ``fn(layer_name, words) -> words`` is called at every forward pass of every quantized layer,
        on the layer's *input* activation after quantization and before dequantization:

        * ``layer_name``: the layer's name in ``model.named_modules()`` (one of ``self.layers``);
        * ``words``: int64 tensor with the shape of the input activation (e.g. ``(N, C, H, W)``), each
          element a ``bits``-wide two's complement word as an unsigned value in ``[0, 2**bits)`` --
          the encoding of :class:`bitlab.formats.Int` (bit 0 = LSB, bit ``bits-1`` = sign). Clean
          words encode levels in ``[-qmax, qmax]``;
        * return: an integer tensor of the same shape (e.g. ``words ^ mask``); only the low ``bits``
          bits of each returned value are read, as two's complement, and multiplied by the layer's
          activation scale ``act_scales[layer_name]``. A flip of bit ``k`` changes the value by
          ``+-2**k * act_scales[layer_name]``.

        ``fn`` must not modify ``words`` in place expecting it to matter: only the return value is used.
        """
        if fn is not None and not callable(fn):
            raise TypeError(f"fn: expected a callable (layer_name, words) -> words or None, got {type(fn).__name__}")
        prev, self._act_fault = self._act_fault, fn
        return prev

    @contextmanager
    def act_fault(self, fn: ActFault | None) -> Iterator[QuantizedModel]:
        """``with qm.act_fault(fn): ...`` -- :meth:`set_act_fault` for the block, the previous hook restored
        on exit (also when the block raises)."""
        prev = self.set_act_fault(fn)
        try:
            yield self
        finally:
            self._act_fault = prev

    def weight_int(self, name: str) -> Tensor:
        """The integer weight levels (int64) of layer ``name`` (one with a single ``weight``) or of the
        quantized parameter ``name`` (e.g. ``"lstm.weight_hh_l0"``, a tied alias too)."""
        pname = self._param_of.get(name) or self._param_of.get(f"{name}.weight" if name else "weight")
        if pname is None or (name not in self._param_of and name not in self.weight_scales):
            valid = ", ".join(map(repr, [*self.weight_scales, *self._param_of]))
            raise ValueError(f"name: {name!r} is not a quantized layer or weight; valid names: {valid}")
        w = self.model.get_parameter(pname)
        return quantize(w, _broadcast_channels(self.param_scales[pname], w), self.bits)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with slow_path():  # the layers inside a TransformerEncoderLayer run their own (hooked) forward
            return self.model(*args, **kwargs)

    def extra_repr(self) -> str:
        return (
            f"bits={self.bits}, layers={len(self.layers)}, act_method={self.act_method!r}, "
            f"per_channel={self.per_channel}"
        )


class _InputQuantizer:
    """Forward pre-hook of one layer. An object rather than a closure, so that ``copy.deepcopy`` of a
    QuantizedModel yields hooks bound to the copy (its scales and fault hook), not to the original."""

    def __init__(self, qm: QuantizedModel, name: str) -> None:
        self.qm, self.name = qm, name

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if not self.qm.quantize_activations:
            return None
        return map_inputs(self.name, module, args, kwargs, lambda x: self.qm.quantize_input(self.name, x))


def quantize_model(
    model: nn.Module,
    calib_data: object,
    bits: int = 8,
    act_method: str = "max",
    per_channel: bool = False,
    layers: str | Sequence[str] | None = None,
    percentile: float = 99.99,
    strict: bool = False,
) -> QuantizedModel:
    """Post-training quantization of ``model`` to ``bits``-bit weights and input activations of
    ``layers`` (default: every quantizable layer, see :mod:`.qlayers`), Fasfous et al. 2022 setting.

    The model is deep-copied (the original is untouched); the copy's weights are quantized first, then the
    activation scales are calibrated on ``calib_data`` (a Tensor of inputs, a Dataset, a DataLoader or a
    list of ``(inputs, targets)`` batches with tensor, tuple or dict inputs) in one pass of the
    weight-quantized copy in eval mode, with the activations in float (so each layer's scale sees its
    inputs under quantized weights, but not the rounding of earlier activations).
    ``act_method`` is ``"max"`` or ``"percentile"`` (with ``percentile``, e.g. 99.99).

    ``qm.coverage`` lists every floating parameter and layer input: quantized, float by design (biases,
    normalization, layers outside ``layers=``), or unsupported (a module kind bitlab does not quantize, an
    input it cannot observe: an attention's ``out_proj`` input, an RNN's hidden state, a layer whose
    forward is never called). Unsupported rows give one :class:`~bitlab.coverage.CoverageWarning` naming
    them, or with ``strict=True`` a ``ValueError``. A layer named in ``layers=`` whose forward is never
    called is an error.
    """
    _check_act_args(bits, act_method, percentile)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel: expected a bool, got {type(per_channel).__name__}")
    if not isinstance(strict, bool):
        raise TypeError(f"strict: expected a bool, got {type(strict).__name__}")
    names = choose_layers(model, layers)
    clone = copy.deepcopy(model)
    qm = QuantizedModel(clone, bits, [], {}, {}, per_channel, act_method, weight_layers=names)
    modules = dict(clone.named_modules())
    readers = [n for n in names if has_input(modules[n])]
    amax, seen, unused = observe_inputs(clone, calib_data, readers, act_method)
    if unused and layers is not None:
        raise ValueError(f"layers: {unused} received no input during calibration: their forward was never called")
    act = [n for n in readers if n not in unused]
    scales = input_scales({n: amax[n] for n in act}, seen, qmax(bits), act_method, percentile)
    qm.attach(act, scales, amax)
    detail = f"int{bits} {'per channel (dim 0)' if per_channel else 'per tensor'}"
    qm.coverage = quant_coverage(model, names, _renamed(qm, model), act, layers is not None, detail)
    enforce(qm.coverage, strict)
    qm.training = model.training  # the wrapped deep copy keeps every submodule's own mode
    return qm


def _renamed(qm: QuantizedModel, model: nn.Module) -> dict[int, str]:
    """``id(param)`` in the original ``model`` -> the name its copy was quantized under."""
    return {id(model.get_parameter(n)): n for n in qm._quantized.values()}


def scale_report(qm: QuantizedModel) -> pd.DataFrame:
    """One row per quantized layer: ``layer, kind, weight_scale`` (max over channels when per-channel,
    ignoring all-zero channels, and over the layer's weights: an LSTM has several),
    ``act_scale, weight_max_abs, act_max_abs, bits`` -- the numbers Fasfous et al. 2022 compare. A layer
    whose input is not quantized (Embedding) has NaN activation columns."""
    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"qm: expected a QuantizedModel (from quantize_model), got {type(qm).__name__}")
    modules = dict(qm.model.named_modules())
    rows = [
        {
            "layer": n,
            "kind": type(modules[n]).__name__,
            "weight_scale": qm._scale_max[n],
            "act_scale": qm.act_scales.get(n, math.nan),
            "weight_max_abs": qm.weight_max_abs[n],
            "act_max_abs": qm.act_max_abs.get(n, math.nan),
            "bits": qm.bits,
        }
        for n in qm.weight_layers
    ]
    return pd.DataFrame(
        rows, columns=["layer", "kind", "weight_scale", "act_scale", "weight_max_abs", "act_max_abs", "bits"]
    )
