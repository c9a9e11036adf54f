"""Fault injection into a model's weights and activations.

:func:`corrupted` is the pipeline of the design notes as a context manager::

    float weights --codec.encode--> stored words --fault--> corrupted words --codec.decode--> weights'

Inside the ``with`` block the model holds the weights as they would be read back from the faulty
store; on exit every weight is restored bit for bit, also when the block raises.

For a lossless store (FP32 without a codec) only the words that are hit are touched, so the cost
grows with the number of flips. A lossy format (FP16, Q2.5, int8) or a codec changes every weight
on the clean read too, so the whole tensor is read back through the store (and saved first).

Faults in activations live in :mod:`bitlab.activation_faults`; :func:`corrupted_activations` and
:class:`ActivationReport` are re-exported here.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .activation_faults import ActivationReport, corrupted_activations
from .codecs.base import Codec, Identity, subset_state
from .coverage import CoverageWarning
from .faults import Fault, Sites, fault_words
from .formats import FP32, Format, resolve_bits
from .params import ParamSelection, select_params
from .validate import check_generator

__all__ = ["corrupted", "corrupted_activations", "Store", "InjectionReport", "ActivationReport"]

MAX_STORED_WIDTH = 62


@dataclass
class InjectionReport:
    """What an injection did: ``flips`` faulty bit sites in total, per tensor in ``per_param``."""

    fault: str
    fmt: str
    codec: str
    names: list[str]
    sites: Sites
    per_param: dict[str, int] = field(default_factory=dict)

    @property
    def flips(self) -> int:
        return len(self.sites)


def _check_args(fault: object, fmt: object, codec: object) -> Codec:
    if fault is not None and not isinstance(fault, Fault):
        raise TypeError(
            f"fault: expected a bitlab fault (BitErrorRate, BitFlips, SingleBitFlip, StuckAt), "
            f"got {type(fault).__name__}"
        )
    if not isinstance(fmt, Format):
        raise TypeError(
            f"fmt: expected a bitlab number format (FP32, FP16, BF16, Q(m, n), Int(bits)), got {type(fmt).__name__}"
        )
    codec = Identity() if codec is None else codec
    if not isinstance(codec, Codec):
        raise TypeError(f"codec: expected a bitlab codec (see bitlab.codecs), got {type(codec).__name__}")
    if codec.width(fmt) > MAX_STORED_WIDTH:
        raise ValueError(
            f"codec: {codec.name} stores {codec.width(fmt)}-bit words for {fmt.name}; "
            f"allowed widths are at most {MAX_STORED_WIDTH} bits"
        )
    return codec


@dataclass
class _Slot:
    """One stored tensor: its state, and what the fault-free store reads back."""

    name: str
    data: Tensor  # the parameter's storage (``p.data``)
    state: dict
    sparse: bool  # lossless elementwise store: only hit words are touched
    orig: Tensor | None = None  # flat snapshot of the clean weights (dense paths)
    clean: Tensor | None = None  # flat fault-free read (elementwise codecs)
    words: Tensor | None = None  # clean stored words (codecs whose check spans words)


#: models inside a ``corrupted`` context now (any thread): a second context on the same model is refused,
#: since contexts that overlap without nesting (exit a, then b) would restore each other's corrupted words
_ACTIVE: weakref.WeakSet[nn.Module] = weakref.WeakSet()
_ACTIVE_LOCK = threading.Lock()


def _enter(model: nn.Module) -> None:
    with _ACTIVE_LOCK:
        if model in _ACTIVE:
            raise RuntimeError(
                f"model: this {type(model).__name__} is already inside a corrupted() context (in this or another "
                "thread); one fault context at a time per model: exit the first, or use a deep copy of the model"
            )
        _ACTIVE.add(model)


class Store:
    """A model's parameters as kept in a faulty store: number format ``fmt`` plus protection ``codec``.

    Building a store does the per-tensor work once (codec state, the fault-free read); each
    :meth:`corrupted` then only samples faults and decodes the words they hit, so a campaign of many
    trials pays the dense work once. The store snapshots the weights when it is built: do not train
    the model while a store of it is in use. :func:`corrupted` is the one-shot form.
    """

    def __init__(
        self, model: nn.Module, fmt: Format = FP32, codec: Codec | None = None, params: ParamSelection = None
    ) -> None:
        self.codec = _check_args(None, fmt, codec)
        self.fmt = fmt
        self.model = model
        chosen = select_params(model, params)
        self.names = [n for n, _ in chosen]
        self.shapes = [p.shape for _, p in chosen]
        exact = self.codec.is_exact(fmt) and self.codec.elementwise
        self.slots: list[_Slot] = []
        with torch.no_grad():
            for name, p in chosen:
                data = p.data
                slot = _Slot(name, data, self._fit(name, data), sparse=exact and data.is_contiguous())
                if not slot.sparse:
                    slot.orig = data.reshape(-1).clone()
                    words = self.codec.encode(slot.orig, fmt, slot.state)
                    if self.codec.elementwise:
                        slot.clean = self.codec.decode(words, fmt, slot.state).to(data.dtype)
                    else:
                        slot.words = words
                self.slots.append(slot)

    def _fit(self, name: str, data: Tensor) -> dict:
        """The codec's state of one tensor; an error names the tensor, and so does a warning for a tensor
        the codec left alone (its state's ``"left_alone"`` reason, e.g. an all-zero tensor under scaling)."""
        try:
            state = self.codec.fit(data, self.fmt)
        except ValueError as e:
            raise ValueError(f"params: {name!r}: {e}") from e
        if state.get("left_alone"):
            warnings.warn(f"codec {self.codec.name}: {name!r}: {state['left_alone']}", CoverageWarning, stacklevel=4)
        return state

    def _faulty(self, slot: _Slot, word: Tensor, bit: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        """Indices of the hit elements and the values they read back as (elementwise codecs)."""
        orig = slot.orig if slot.orig is not None else slot.data.reshape(-1)
        uidx, inv = torch.unique(word, return_inverse=True)
        sub = subset_state(slot.state, uidx, orig.numel())
        words = self.codec.encode(orig[uidx], self.fmt, sub)
        return uidx, self.codec.decode(fault_words(words, inv, bit, mode), self.fmt, sub)

    def _write(
        self, slot: _Slot, word: Tensor, bit: Tensor, mode: str, saved: list[tuple[Tensor, Tensor | None, Tensor]]
    ) -> None:
        data = slot.data
        if slot.sparse:
            if word.numel() == 0:
                return
            uidx, vals = self._faulty(slot, word, bit, mode)
            saved.append((data, uidx, data.view(-1)[uidx].clone()))
            data.view(-1)[uidx] = vals.to(data.dtype)
            return
        assert slot.orig is not None  # dense slots keep a snapshot
        saved.append((data, None, slot.orig))
        if slot.words is not None:  # a check spanning words: decode everything, faulty words in place
            words = slot.words.clone()
            if word.numel():
                uidx, inv = torch.unique(word, return_inverse=True)
                words[uidx] = fault_words(words[uidx], inv, bit, mode)
            data.copy_(self.codec.decode(words, self.fmt, slot.state).view_as(data).to(data.dtype))
            return
        assert slot.clean is not None  # elementwise dense slots keep their fault-free read
        data.copy_(slot.clean.view_as(data))
        if word.numel():
            uidx, vals = self._faulty(slot, word, bit, mode)
            data.view(-1)[uidx] = vals.to(data.dtype)

    @contextmanager
    def corrupted(self, fault: Fault, generator: torch.Generator | None = None) -> Iterator[InjectionReport]:
        """Hold the weights as read back under ``fault``; restore them bit for bit on exit, and every buffer
        too (a train-mode forward inside would otherwise keep BatchNorm statistics of the corrupted model).
        A model already inside a ``corrupted`` context (this thread or another) is refused."""
        _check_args(fault, self.fmt, self.codec)
        bits = resolve_bits(fault.bits, self.codec.width(self.fmt), self.codec.fields(self.fmt))
        saved: list[tuple[Tensor, Tensor | None, Tensor]] = []
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        _enter(self.model)
        try:
            with torch.no_grad():
                sites = fault.sample(self.names, self.shapes, bits, check_generator("generator", generator))
                report = InjectionReport(fault.label(), self.fmt.name, self.codec.name, self.names, sites)
                for i, slot in enumerate(self.slots):
                    word, bit = sites.of(i)
                    report.per_param[slot.name] = int(word.numel())
                    self._write(slot, word, bit, fault.mode, saved)
            yield report
        finally:
            with torch.no_grad():
                for data, uidx, values in reversed(saved):
                    if uidx is None:
                        data.copy_(values.view_as(data))
                    else:
                        data.view(-1)[uidx] = values
                for b, value in buffers:  # e.g. BatchNorm statistics updated by a train-mode forward inside
                    b.copy_(value)
            _ACTIVE.discard(self.model)


@contextmanager
def corrupted(
    model: nn.Module,
    fault: Fault,
    fmt: Format = FP32,
    codec: Codec | None = None,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
) -> Iterator[InjectionReport]:
    """Hold ``model``'s weights as read back from a faulty store; restore them bit for bit on exit.

    ``fmt`` is the number format the weights are stored in, ``codec`` the protection on top of it
    (default: none), ``params`` which parameters are stored there (default: all of them), and
    ``generator`` makes the sampled faults reproducible. Yields an :class:`InjectionReport`.
    For many trials on one model, build a :class:`Store` once and use ``store.corrupted(fault)``.
    """
    _check_args(fault, fmt, codec)
    with Store(model, fmt, codec, params).corrupted(fault, generator) as report:
        yield report
