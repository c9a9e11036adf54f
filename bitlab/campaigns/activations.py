"""Activation fault campaigns on quantized models (Fasfous et al. 2022, "Mind the Scaling Factors").

A :class:`~bitlab.quant.QuantizedModel` stores the input activation of every quantized layer as
``bits``-wide two's complement words ``q`` standing for ``q * s`` (``s`` = the layer's calibrated
activation scale). A flip of bit ``k`` adds ``+-2**k * s`` (the sign bit: ``-+2**(bits-1) * s``), so the
damage of a fault grows with the scale factor -- the paper's point. This module flips bits of those words
(transient faults, drawn afresh for every inference) and measures the accuracy.

* :func:`act_fault_fn` -- a ``qm.set_act_fault`` hook from a bitlab fault, sampled at every layer call over
  the whole activation tensor (positions drawn without a dense per-bit mask).
* :func:`flips_per_inference_fn` -- a hook that flips exactly ``k`` activation bits per inference (per
  input image), spread uniformly over the bits of all chosen layers.
* :func:`activation_sweep` -- accuracy at a range of bit error rates or flip counts, many trials each:
  a tidy DataFrame like :func:`bitlab.campaign.ber_sweep`.
* :func:`resilience_auc` -- one number per sweep: the normalized area under the accuracy vs
  log10(fault rate) curve (our reading of "fault resilience"; the paper's exact metric is not public).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..evaluate import Batches, Output, call, eval_mode, materialize, model_device, score, take, to_device
from ..faults import BitErrorRate, Fault, fault_words, sample_distinct
from ..formats import BitSelection, Int, resolve_bits
from ..metrics import Metric, MetricSpec, frame_attrs, frame_metric, relative_drop, resolve_metric
from ..training.quant import ActFault, QuantizedModel
from ..validate import check_int
from .journal import Journal, campaign_key, describe
from .runner import Item, Row, Rows, Turns
from .runner import run as run_items
from .seeds import trial_generator
from .sweep import FORMAT, VERSION

__all__ = ["act_fault_fn", "flips_per_inference_fn", "activation_sizes", "activation_sweep", "resilience_auc", "MODES"]

MODES = ("ber", "flips")


def _check_layers(qm: QuantizedModel, layers: str | Sequence[str] | None) -> list[str]:
    if layers is None:
        return list(qm.layers)
    names = [layers] if isinstance(layers, str) else list(layers)
    unknown = [n for n in names if n not in qm.layers]
    if unknown or not names:
        raise ValueError(
            f"layers: {unknown or names!r} are not quantized layers of the model; "
            f"valid names: {', '.join(map(repr, qm.layers))}"
        )
    return [n for n in qm.layers if n in names]  # model order, no duplicates


def _positions(bits: BitSelection, width: int) -> tuple[int, ...]:
    return resolve_bits(bits, width, Int(width).fields)


def _add(counts: dict[str, int] | None, name: str, n: int) -> None:
    if counts is not None:
        counts[name] = counts.get(name, 0) + n


def _apply(words: Tensor, word: Tensor, bit: Tensor, mode: str) -> Tensor:
    """``words`` with the faults at the (flat ``word``, ``bit``) sites, sampled on the CPU, applied on the
    words' own device."""
    word, bit = word.to(words.device), bit.to(words.device)
    flat = words.reshape(-1).clone()
    uidx, inv = torch.unique(word, return_inverse=True)
    flat[uidx] = fault_words(flat[uidx], inv, bit, mode)
    return flat.view_as(words)


def act_fault_fn(
    fault: Fault,
    generator: torch.Generator | None = None,
    bits: int = 8,
    layers: Sequence[str] | None = None,
    counts: dict[str, int] | None = None,
) -> ActFault:
    """A hook ``fn(layer_name, words) -> words`` for :meth:`QuantizedModel.set_act_fault` that applies
    ``fault`` (e.g. :class:`~bitlab.faults.BitErrorRate`, :class:`~bitlab.faults.StuckAt`) to the
    ``bits``-wide activation words of the layers in ``layers`` (default: every layer it is called for).

    The sites are sampled afresh at every call, over the whole tensor (all images of the batch), among the
    bit positions ``fault.bits`` selects; only the hit words are touched (no dense mask). For a bit error
    rate this is the same as i.i.d. flips per inference; a ``BitFlips(k)`` fault gives ``k`` flips per
    layer *call* (use :func:`flips_per_inference_fn` for ``k`` per image). ``counts`` (a dict) accumulates
    the number of faulty sites per layer."""
    if not isinstance(fault, Fault):
        raise TypeError(f"fault: expected a bitlab fault (BitErrorRate, BitFlips, StuckAt), got {type(fault).__name__}")
    positions = _positions(fault.bits, bits)
    chosen = None if layers is None else set(layers)

    def fn(name: str, words: Tensor) -> Tensor:
        if chosen is not None and name not in chosen:
            return words
        sites = fault.sample([name], [words.shape], positions, generator)
        _add(counts, name, len(sites))
        if len(sites) == 0:
            return words
        return _apply(words, sites.word, sites.bit, fault.mode)

    return fn


def _distinct_rows(n: int, k: int, total: int, generator: torch.Generator | None) -> Tensor:
    """An ``(n, k)`` tensor whose rows are ``k`` distinct integers drawn uniformly from ``[0, total)``
    (redraws the rows that hold a repeat; a permutation per row when ``k`` is a large share)."""
    if k == 0:
        return torch.empty(n, 0, dtype=torch.int64)
    if 4 * k > total:
        return (
            torch.stack([sample_distinct(total, k, generator) for _ in range(n)])
            if n
            else torch.empty(0, k, dtype=torch.int64)
        )
    out = torch.randint(0, total, (n, k), generator=generator)
    while True:
        s = out.sort(dim=1).values
        bad = (s[:, 1:] == s[:, :-1]).any(dim=1).nonzero().flatten()
        if bad.numel() == 0:
            return out
        out[bad] = torch.randint(0, total, (bad.numel(), k), generator=generator)


class _PerInference:
    """The hook of :func:`flips_per_inference_fn`: at the first layer call of a forward pass it draws the
    sites of every chosen layer for the whole batch; each layer call then applies its share. State is real
    here (the plan lives across the layer calls of one forward pass)."""

    def __init__(
        self,
        k: int,
        sizes: Mapping[str, int],
        generator: torch.Generator | None,
        bits: int,
        positions: tuple[int, ...],
        counts: dict[str, int] | None,
    ) -> None:
        self.k, self.sizes, self.generator, self.bits = k, dict(sizes), generator, bits
        self.names = list(sizes)
        self.positions = torch.tensor(positions, dtype=torch.int64)
        self.counts = counts
        sizes_bits = torch.tensor([self.sizes[n] * len(positions) for n in self.names], dtype=torch.int64)
        self.bounds = torch.cat([torch.zeros(1, dtype=torch.int64), sizes_bits.cumsum(0)])
        self.total = int(self.bounds[-1])
        if k > self.total:
            raise ValueError(
                f"k: {k} flips per inference requested but the chosen activations hold only "
                f"{self.total} bits per inference; allowed 0..{self.total}"
            )
        self.plan: dict[str, tuple[Tensor, Tensor]] = {}

    def _draw(self, n: int) -> None:
        pos = _distinct_rows(n, self.k, self.total, self.generator)  # (n, k) in the per-image bit space
        image = torch.arange(n).unsqueeze(1).expand_as(pos).reshape(-1)
        pos = pos.reshape(-1)
        layer = torch.searchsorted(self.bounds, pos, right=True) - 1
        local = pos - self.bounds[layer]
        nb = len(self.positions)
        self.plan = {}
        for i, name in enumerate(self.names):
            m = layer == i
            word = image[m] * self.sizes[name] + local[m] // nb
            self.plan[name] = (word, self.positions[local[m] % nb])

    def __call__(self, name: str, words: Tensor) -> Tensor:
        if name not in self.sizes:
            return words
        per_image = words[0].numel() if words.dim() else 1
        if per_image != self.sizes[name]:
            raise ValueError(
                f"sizes: layer {name!r} reads {per_image} words per inference, but sizes says {self.sizes[name]}"
            )
        if name not in self.plan:  # every layer consumed its share: a new forward pass starts
            self._draw(words.shape[0])
        word, bit = self.plan.pop(name)
        _add(self.counts, name, int(word.numel()))
        if word.numel() == 0:
            return words
        return _apply(words, word, bit, "flip")


def flips_per_inference_fn(
    k: int,
    sizes: Mapping[str, int],
    generator: torch.Generator | None = None,
    bits: int = 8,
    bit_sel: BitSelection = None,
    counts: dict[str, int] | None = None,
) -> ActFault:
    """A hook that flips exactly ``k`` distinct activation bits per inference (per input image), drawn
    uniformly from the selected bit positions (``bit_sel``, default all ``bits``) of the activations of the
    layers in ``sizes`` (layer name -> words per image, see :func:`activation_sizes`), in forward order.

    Assumes each chosen layer is called once per forward pass (true for the bitlab models): the sites of a
    forward pass are drawn when a layer is called whose share has already been used."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"k: expected an int >= 0 (flips per inference), got {k!r}")
    if not sizes:
        raise ValueError("sizes: empty; give layer name -> activation words per inference")
    return _PerInference(k, sizes, generator, bits, _positions(bit_sel, bits), counts)


@torch.no_grad()
def activation_sizes(qm: QuantizedModel, x: object, layers: Sequence[str] | None = None) -> dict[str, int]:
    """Activation words per inference of each chosen layer (model order), seen on one forward pass of
    the first input of ``x`` (a tensor, or a tuple/dict of inputs); a layer that is not called, or
    called more than once, is an error."""
    names = _check_layers(qm, layers)
    seen: dict[str, list[int]] = {}

    def probe(name: str, words: Tensor) -> Tensor:
        seen.setdefault(name, []).append(words[0].numel())
        return words

    with eval_mode(qm), qm.act_fault(probe), torch.no_grad():
        call(qm, to_device(take(x, 1), model_device(qm)))
    bad = [n for n in names if len(seen.get(n, [])) != 1]
    if bad:
        raise ValueError(
            f"layers: {bad} are not called exactly once per forward pass; "
            "per-inference activation faults need each layer once"
        )
    return {n: seen[n][0] for n in names}


def _check_rates(rates: Sequence[float], mode: str, bits_per_inference: int) -> list:
    if isinstance(rates, (str, bytes)) or not isinstance(rates, Sequence) or not rates:
        what = "bit error rates in [0, 1]" if mode == "ber" else "flip counts (ints >= 0)"
        raise ValueError(f"rates: expected a non-empty list of {what}, got {rates!r}")
    out = []
    for r in rates:
        if mode == "ber":
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) <= 1.0:
                raise ValueError(f"rates: {r!r} is not a bit error rate; allowed values are in [0, 1]")
            out.append(float(r))
        else:
            if isinstance(r, bool) or not isinstance(r, (int, np.integer)) or not 0 <= r <= bits_per_inference:
                raise ValueError(
                    f"rates: {r!r} is not a flip count; allowed ints in 0..{bits_per_inference} "
                    "(the activation bits of one inference)"
                )
            out.append(int(r))
    return out


@dataclass
class ActivationTrials:
    """The trials of an activation sweep, the runner's work (:mod:`.runner`): item ``(rate, trial)`` is
    one pass over the data with transient faults drawn from ``trial_generator(seed, "activations", mode,
    rate, layer_label, trial)``."""

    qm: QuantizedModel
    batches: Batches
    names: list[str]
    positions: tuple[int, ...]
    sizes: dict[str, int]
    mode: str
    metric: Metric
    output: Output
    seed: int
    layer_label: str
    clean: float
    turns: Turns = field(default_factory=Turns, repr=False)

    def __call__(self, item: Item) -> Row:
        rate, t = item
        assert isinstance(rate, (int, float)) and isinstance(t, int)
        m, qm = self.metric, self.qm
        counts: dict[str, int] = {}
        g = trial_generator(self.seed, "activations", self.mode, rate, self.layer_label, t)
        if self.mode == "ber":
            fn = act_fault_fn(BitErrorRate(float(rate), bits=self.positions), g, qm.bits, self.names, counts)
        else:
            fn = flips_per_inference_fn(int(rate), self.sizes, g, qm.bits, self.positions, counts)
        with self.turns.lock, qm.act_fault(fn):
            value = score(qm, self.batches, m, self.output)
        flips = sum(counts.values())
        row = {
            "rate": rate,
            "trial": t,
            "flips": flips,
            "flips_per_inference": flips / sum(len(y) for _, y in self.batches),
            m.name: value,
            "rad": relative_drop(self.clean, value, m),
            "mode": self.mode,
            "layers": self.layer_label,
            "seed": self.seed,
        }
        if self.mode == "ber":
            row["ber"] = rate
        return row


def activation_sweep(
    qm: QuantizedModel,
    data: object,
    rates: Sequence[float],
    trials: int = 20,
    layers: str | Sequence[str] | None = None,
    mode: str = "ber",
    bits: BitSelection = None,
    seed: int = 0,
    progress: bool | None = None,
    label: str | None = None,
    metric: MetricSpec = "accuracy",
    output: Output = None,
    executor: object = None,
    checkpoint: str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """``metric`` (accuracy by default; ``output`` picks the scored tensor, as in
    :func:`bitlab.campaigns.ber_sweep`) of the quantized model ``qm`` on ``data`` under transient bit
    flips in the integer input activations of ``layers`` (default: every quantized layer), ``trials``
    draws per rate (Fasfous et al. 2022, activation bit-flip campaigns).

    ``mode="ber"``: every selected activation bit of every inference flips independently with probability
    ``rate``; ``mode="flips"``: exactly ``rate`` (an int) bits flip per inference (per test image), spread
    uniformly over the selected bits of all chosen layers. ``bits`` selects bit positions (``"sign"``,
    ``"magnitude"``, indices; default all). Faults are drawn afresh for every batch; each trial has its
    own generator, ``trial_generator(seed, "activations", mode, rate, layers, t)`` (counter-based, see
    :mod:`bitlab.campaigns.seeds`: a subset or an extension of the trials keeps every row).

    Returns one row per (rate, trial): ``rate, trial, flips`` (total over the data),
    ``flips_per_inference``, ``<metric>`` (``accuracy`` by default), ``rad`` (its relative drop),
    ``mode, layers, seed`` (+ ``ber`` in BER mode, so that :func:`bitlab.campaign.tolerable_ber` and
    :func:`bitlab.plot.accuracy_vs_ber` apply; + ``model`` if ``label``). ``attrs``: ``metric``,
    ``clean`` and ``clean_<metric>`` (quantized, fault-free), ``mode``, ``layers``,
    ``bits_per_inference``, ``from_checkpoint``. The model's previous fault hook is restored on exit,
    also when evaluation raises. ``executor`` and ``checkpoint`` as in
    :func:`bitlab.campaigns.ber_sweep`."""

    if not isinstance(qm, QuantizedModel):
        raise TypeError(f"qm: expected a QuantizedModel (from bitlab.quant.quantize_model), got {type(qm).__name__}")
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r}; allowed {MODES}")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials: {trials!r}; allowed ints >= 1")
    seed = check_int("seed", seed, 0)
    names = _check_layers(qm, layers)
    positions = _positions(bits, qm.bits)
    m = resolve_metric(metric)
    batches = materialize(data, device=model_device(qm))
    sizes = activation_sizes(qm, batches[0][0], names)
    bits_per_inference = sum(sizes.values()) * len(positions)
    rates = _check_rates(rates, mode, bits_per_inference)
    with qm.act_fault(None):
        clean = score(qm, batches, m, output)
    layer_label = "all" if len(names) == len(qm.layers) else ",".join(names)
    work = ActivationTrials(qm, batches, names, positions, sizes, mode, m, output, seed, layer_label, clean)
    journal = None
    if checkpoint is not None:
        settings = ("activation_sweep", mode, names, positions, describe(m), describe(output), seed)
        what = "activation_sweep (model, data, layers, bits, mode or metric)"
        journal = Rows(Journal(checkpoint, FORMAT, VERSION, campaign_key(qm, batches, settings), what))
    items = [(rate, t) for rate in rates for t in range(trials)]
    rows, reused = run_items(work, [items], executor, journal, progress, f"activation_sweep {mode}")
    df = pd.DataFrame(rows)
    if label is not None:
        df["model"] = label
    df.attrs.update(frame_attrs(m, clean))
    df.attrs.update(
        {"mode": mode, "layers": names, "bits_per_inference": bits_per_inference, "from_checkpoint": reused}
    )
    return df


def resilience_auc(
    df: pd.DataFrame,
    x: str | None = None,
    value: str | None = None,
    relative: bool = False,
    clean: float | None = None,
) -> float:
    """Fault resilience of one configuration as a single number: the area under the mean ``value``
    vs ``log10(x)`` curve (trapezoids over the grid's positive rates), divided by the width of the log
    grid -- the mean accuracy over a log-spaced range of fault rates, in [0, 1]. Our reading of the
    "fault resilience" of Fasfous et al. 2022 (their exact metric is not public).

    ``x`` defaults to ``"ber"`` if present, else ``"rate"``; ``value`` to the frame's metric
    (``df.attrs["metric"]``, else ``accuracy``). ``relative=True`` divides by the clean value (``clean``
    or ``df.attrs["clean"]``). Compare only frames on the same grid."""
    if value is None:
        value = frame_metric(df.attrs)[0]
    if x is None:
        x = "ber" if "ber" in df.columns else "rate"
    for col in (x, value):
        if col not in df.columns:
            raise ValueError(f"x/value: column {col!r} is not in the frame; columns are {list(df.columns)}")
    means = df[df[x] > 0].groupby(x)[value].mean().sort_index()
    if len(means) < 2:
        raise ValueError(f"df: needs at least two positive {x} values for an area, got {len(means)}")
    lx = np.log10(means.index.to_numpy(dtype=float))
    y = means.to_numpy(dtype=float)
    area = float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(lx))) / float(lx[-1] - lx[0])
    if relative:
        c: float | None = df.attrs.get("clean", df.attrs.get("clean_accuracy")) if clean is None else clean
        if c is None or not c > 0:
            raise ValueError("clean: not given (or not > 0) and the frame has no attrs['clean']")
        area /= c
    return area
