"""Post-training symmetric integer quantization of weights and activations (Fasfous et al. 2022 setting).

Fasfous et al. 2022 ("Mind the Scaling Factors") study 8-bit quantized CNNs whose *scale factors*
decide how much damage a flipped bit does: an activation word ``q`` stands for ``q * s``, so a flip
of bit ``k`` adds ``+-2**k * s``. Adversarial training enlarges the activation ranges, hence ``s``,
hence the fault. This module simulates such an integer network in float ("fake quantization").

Number format (the same as :class:`bitlab.formats.Int`)::

    q = clamp(round_half_even(x / s), -qmax, qmax),   qmax = 2**(bits-1) - 1,   x' = q * s

stored as ``bits``-wide two's complement words (a flip can reach ``-2**(bits-1)``).

What is quantized (our reading of "what the integer hardware reads"):

* the **weight** of every chosen ``Conv2d``/``Linear`` layer, with scale ``max|w| / qmax`` per tensor or
  per output channel; the bias stays in float (an int32 accumulator adds it at scale ``s_x * s_w``);
* the **input activation** of every chosen layer, i.e. the tensor the layer reads from memory, with one
  scale per layer calibrated on calibration data (``"max"``: ``max|x| / qmax``; ``"percentile"``: the
  given percentile of ``|x|`` over all calibration values, larger inputs saturate).

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
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..evaluate import eval_mode, model_device
from ..formats import finite_abs, to_signed, to_unsigned

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
QUANTIZABLE = (nn.Conv2d, nn.Linear)


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


def _broadcast_channels(s: Tensor, w: Tensor) -> Tensor:
    return s.reshape(-1, *([1] * (w.dim() - 1))) if s.dim() == 1 else s


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the ``Conv2d``/``Linear`` submodules: the layers :func:`quantize_model` can quantize
    (``""`` when the model itself is one)."""
    return [n for n, m in model.named_modules() if isinstance(m, QUANTIZABLE)]


def _choose_layers(model: nn.Module, layers: str | Sequence[str] | None) -> list[str]:
    valid = quantizable_layers(model)
    if not valid:
        raise ValueError("model: has no Conv2d or Linear layer to quantize")
    if layers is None:
        return valid
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in names if n not in valid]
    if unknown or not names:
        raise ValueError(
            f"layers: {unknown or names!r} are not Conv2d/Linear layers of the model; "
            f"valid names: {', '.join(map(repr, valid))}"
        )
    return [n for n in valid if n in names]  # model order, no duplicates


def _batches(data: Tensor | Dataset | DataLoader, batch_size: int = 256) -> Iterable[Tensor]:
    if isinstance(data, Tensor):
        yield from data.split(batch_size)
        return
    if isinstance(data, Dataset):
        data = DataLoader(data, batch_size=batch_size)
    if not isinstance(data, DataLoader):
        raise TypeError(
            f"calib_data: expected a Tensor of inputs, a Dataset or a DataLoader, got {type(data).__name__}"
        )
    for batch in data:
        yield batch[0] if isinstance(batch, (tuple, list)) else batch


@torch.no_grad()
def calibrate_activations(
    model: nn.Module,
    calib_data: Tensor | Dataset | DataLoader,
    layers: str | Sequence[str] | None = None,
    bits: int = 8,
    method: str = "max",
    percentile: float = 99.99,
) -> tuple[dict[str, float], dict[str, float]]:
    """Scale factors of the input activations of ``layers`` (default: every Conv2d/Linear), observed by
    forward pre-hooks over ``calib_data`` in eval mode. Returns ``(scales, max_abs)``, both dicts
    layer name -> float. ``method="max"``: ``max|x| / qmax``; ``"percentile"``: the ``percentile``-th
    percentile of ``|x|`` over every calibration value of that input, divided by ``qmax``.
    The model's training mode is restored afterwards."""
    _check_bits(bits)
    if method not in ACT_METHODS:
        raise ValueError(f"act_method: {method!r}; allowed {ACT_METHODS}")
    if not (isinstance(percentile, (int, float)) and 0 < percentile <= 100):
        raise ValueError(f"percentile: expected a number in (0, 100], got {percentile!r}")
    names = _choose_layers(model, layers)
    modules = dict(model.named_modules())
    amax: dict[str, float] = {n: 0.0 for n in names}
    seen: dict[str, list[Tensor]] = {n: [] for n in names}
    calls = {n: 0 for n in names}

    def make_hook(name: str) -> Callable:
        def hook(module: nn.Module, inputs: tuple) -> None:
            a = inputs[0].detach().abs().float()
            calls[name] += 1
            amax[name] = max(amax[name], float(a.max()) if a.numel() else 0.0)
            if method == "percentile":
                seen[name].append(a.reshape(-1).cpu())

        return hook

    handles = [modules[n].register_forward_pre_hook(make_hook(n)) for n in names]
    device = model_device(model)
    batches = 0
    try:
        with eval_mode(model):
            for x in _batches(calib_data):
                if len(x) == 0:
                    continue
                model(x.to(device))
                batches += 1
    finally:
        for h in handles:
            h.remove()
    if batches == 0:
        raise ValueError("calib_data: is empty; calibration needs at least one batch of inputs")
    unused = [n for n in names if calls[n] == 0]
    if unused:
        raise ValueError(f"layers: {unused} received no input during calibration (not used in forward)")
    q_max = qmax(bits)
    scales: dict[str, float] = {}
    for n in names:
        if method == "max":
            r = amax[n]
        else:
            r = float(np.percentile(torch.cat(seen[n]).numpy(), percentile))
        scales[n] = r / q_max if r > 0 else 1.0
    return scales, amax


class QuantizedModel(nn.Module):
    """A float model evaluated as its integer counterpart: a deep copy (``.model``) whose chosen layers
    hold fake-quantized weights and fake-quantize their input activations in forward pre-hooks.

    Attributes: ``bits``, ``layers`` (names, model order), ``act_scales`` (name -> float),
    ``act_max_abs`` (name -> ``max |input|`` seen in calibration), ``weight_scales`` (name -> 0-dim tensor,
    or ``(out_channels,)`` when ``per_channel``), ``weight_max_abs`` (name -> float), ``act_method``.
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
    ) -> None:
        super().__init__()
        self.model = model
        self.bits = bits
        self.layers = list(layers)
        self.act_scales = dict(act_scales)
        self.act_max_abs = dict(act_max_abs)
        self.per_channel = per_channel
        self.act_method = act_method
        self.quantize_activations = True
        self.weight_scales: dict[str, Tensor] = {}
        self.weight_max_abs: dict[str, float] = {}
        self._scale_max: dict[str, float] = {}  # weight scale, max over channels with a nonzero range
        self._act_fault: ActFault | None = None
        modules = dict(model.named_modules())
        with torch.no_grad():
            for n in layers:
                w = modules[n].weight
                s = weight_scale(w, bits, per_channel)
                self.weight_scales[n] = s
                self.weight_max_abs[n] = float(w.detach().abs().max())
                nonzero = s[w.detach().reshape(w.shape[0], -1).abs().amax(dim=1) > 0] if s.dim() else s
                self._scale_max[n] = float(nonzero.max()) if nonzero.numel() else float(s.max())
                w.copy_(fake_quantize(w.detach(), _broadcast_channels(s, w), bits))
        self._handles = [modules[n].register_forward_pre_hook(self._make_hook(n)) for n in layers]

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
        """The integer weight levels (int64) of layer ``name``."""
        if name not in self.weight_scales:
            valid = ", ".join(map(repr, self.layers))
            raise ValueError(f"name: {name!r} is not a quantized layer; valid names: {valid}")
        w = dict(self.model.named_modules())[name].weight
        return quantize(w, _broadcast_channels(self.weight_scales[name], w), self.bits)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
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

    def __call__(self, module: nn.Module, inputs: tuple) -> tuple | None:
        if not self.qm.quantize_activations:
            return None
        return (self.qm.quantize_input(self.name, inputs[0]), *inputs[1:])


def quantize_model(
    model: nn.Module,
    calib_data: Tensor | Dataset | DataLoader,
    bits: int = 8,
    act_method: str = "max",
    per_channel: bool = False,
    layers: str | Sequence[str] | None = None,
    percentile: float = 99.99,
) -> QuantizedModel:
    """Post-training quantization of ``model`` to ``bits``-bit weights and input activations of
    ``layers`` (default: every Conv2d/Linear), Fasfous et al. 2022 setting.

    The model is deep-copied (the original is untouched); the copy's weights are quantized first, then the
    activation scales are calibrated on ``calib_data`` (a Tensor of inputs, Dataset or DataLoader) in one
    pass of the weight-quantized copy in eval mode, with the activations in float (so each layer's scale
    sees its inputs under quantized weights, but not the rounding of earlier activations).
    ``act_method`` is ``"max"`` or ``"percentile"`` (with ``percentile``, e.g. 99.99).
    """
    _check_bits(bits)
    if not isinstance(per_channel, bool):
        raise TypeError(f"per_channel: expected a bool, got {type(per_channel).__name__}")
    if act_method not in ACT_METHODS:
        raise ValueError(f"act_method: {act_method!r}; allowed {ACT_METHODS}")
    names = _choose_layers(model, layers)
    clone = copy.deepcopy(model)
    qm = QuantizedModel(clone, bits, names, {n: 1.0 for n in names}, {n: 0.0 for n in names}, per_channel, act_method)
    qm.quantize_activations = False
    try:
        scales, amax = calibrate_activations(clone, calib_data, names, bits, act_method, percentile)
    finally:
        qm.quantize_activations = True
    qm.act_scales, qm.act_max_abs = scales, amax
    qm.training = model.training  # the wrapped deep copy keeps every submodule's own mode
    return qm


def scale_report(qm: QuantizedModel) -> pd.DataFrame:
    """One row per quantized layer: ``layer, kind, weight_scale`` (max over channels when per-channel,
    ignoring all-zero channels),
    ``act_scale, weight_max_abs, act_max_abs, bits`` -- the numbers Fasfous et al. 2022 compare."""
    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"qm: expected a QuantizedModel (from quantize_model), got {type(qm).__name__}")
    modules = dict(qm.model.named_modules())
    rows = [
        {
            "layer": n,
            "kind": type(modules[n]).__name__,
            "weight_scale": qm._scale_max[n],
            "act_scale": qm.act_scales[n],
            "weight_max_abs": qm.weight_max_abs[n],
            "act_max_abs": qm.act_max_abs[n],
            "bits": qm.bits,
        }
        for n in qm.layers
    ]
    return pd.DataFrame(
        rows, columns=["layer", "kind", "weight_scale", "act_scale", "weight_max_abs", "act_max_abs", "bits"]
    )
