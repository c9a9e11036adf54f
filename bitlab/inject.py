"""Fault injection into a model's weights and activations.

:func:`corrupted` is the pipeline of the design notes as a context manager::

    float weights --codec.encode--> stored words --fault--> corrupted words --codec.decode--> weights'

Inside the ``with`` block the model holds the weights as they would be read back from the faulty
store; on exit every weight is restored bit for bit, also when the block raises.

Each tensor is stored in its own dtype's format unless a format is given (``fmt=None``: float32 ->
FP32, float16 -> FP16, bfloat16 -> BF16). In a native store without a codec only the words that are
hit are touched (their bits XORed in place), so the cost grows with the number of flips. A format
that re-encodes the dtype (FP16 on float32, Q2.5, int8) or a codec changes every weight on the clean
read too, so the whole tensor is read back through the store.

Faults in activations live in :mod:`bitlab.activation_faults`; :func:`corrupted_activations` and
:class:`ActivationReport` are re-exported here.
"""

from __future__ import annotations

import threading
import warnings
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import Tensor, nn

from .activation_faults import ActivationReport, corrupted_activations
from .codecs.base import Codec, Identity, subset_state
from .coverage import CoverageWarning
from .faults import Fault, FlipList, SingleBitFlip, Sites, fault_words, read_at, write_at
from .formats import (
    FloatFormat,
    Format,
    check_storable,
    is_native,
    native_format,
    resolve_bits,
    same_bits,
    to_signed,
    to_unsigned,
)
from .params import ParamSelection, select_tensors
from .validate import check_cpu_generator

__all__ = ["corrupted", "corrupted_activations", "Store", "InjectionReport", "ActivationReport"]

MAX_STORED_WIDTH = 62


@dataclass
class InjectionReport:
    """What an injection did: ``flips`` faulty bit sites in total, per tensor in ``per_param``; ``fmt``
    names the format(s) used (``"FP16"``, or ``"FP16+FP32"`` for a mixed store), ``formats`` per tensor."""

    fault: str
    fmt: str
    codec: str
    names: list[str]
    sites: Sites
    per_param: dict[str, int] = field(default_factory=dict)
    formats: dict[str, str] = field(default_factory=dict)

    @property
    def flips(self) -> int:
        return len(self.sites)


def _check_fault(fault: object) -> None:
    if not isinstance(fault, Fault):
        raise TypeError(
            f"fault: expected a bitlab fault (BitErrorRate, BitFlips, SingleBitFlip, StuckAt), "
            f"got {type(fault).__name__}"
        )


def _check_fmt(fmt: object) -> None:
    if not isinstance(fmt, Format):
        raise TypeError(
            "fmt: expected None (each tensor's native format) or a bitlab number format "
            f"(FP32, FP16, BF16, Q(m, n), Int(bits)), got {type(fmt).__name__}"
        )


def _check_codec(codec: object, fmt: Format) -> Codec:
    codec = Identity() if codec is None else codec
    if not isinstance(codec, Codec):
        raise TypeError(f"codec: expected a bitlab codec (see bitlab.codecs), got {type(codec).__name__}")
    if codec.width(fmt) > MAX_STORED_WIDTH:
        raise ValueError(
            f"codec: {codec.name} stores {codec.width(fmt)}-bit words for {fmt.name}; "
            f"allowed widths are at most {MAX_STORED_WIDTH} bits"
        )
    return codec


def _check_args(fault: object, fmt: object, codec: object) -> Codec:
    _check_fault(fault)
    _check_fmt(fmt)
    assert isinstance(fmt, Format)
    return _check_codec(codec, fmt)


@dataclass
class _Slot:
    """One stored tensor: its format, its state, a clean copy, and what the fault-free store reads back."""

    name: str
    tensor: Tensor  # the parameter or buffer itself (its version counter tells whether it was modified)
    data: Tensor  # its storage (``p.data``: writes through it do not bump ``tensor._version``)
    fmt: Format
    state: dict
    sparse: bool  # the fault-free store reads back bit for bit: only hit words are touched
    words: bool  # native format without codec: hit words are written in the integer domain
    orig: Tensor  # flat clean copy of the tensor (undoes a training step taken inside corrupted())
    version: int = 0
    clean: Tensor | None = None  # flat fault-free read (dense codecs)
    stored: Tensor | None = None  # clean stored words (codecs whose check spans words)

    def changed(self) -> bool:
        """Modified in place (an optimizer step, load_state_dict) or given new storage since recorded."""
        t = self.tensor
        return t._version != self.version or t.data_ptr() != self.data.data_ptr() or t.shape != self.data.shape

    def reset(self) -> None:
        """Put the clean copy back (also where the tensor was given new storage) and record the version."""
        self.data.copy_(self.orig.view_as(self.data))
        if self.tensor.data_ptr() != self.data.data_ptr():
            self.tensor.data = self.data
        self.version = self.tensor._version


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


_TRAINING_HINT = (
    "updates made inside corrupted() are discarded, since the clean weights are restored on exit; for "
    "fault-aware training compute the loss inside corrupted(), call loss.backward(), exit the block, then "
    "call optimizer.step() (the gradients survive the exit)"
)


_NO_SITES = torch.empty(0, dtype=torch.int64)

#: dtypes of the stored tensors (``p.data`` or its integer view) a Store restores through NumPy on the CPU
_NUMPY_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.float32, torch.float64)


def _restore(data: Tensor, idx: Tensor, values: Tensor) -> None:
    """Put a Store's saved elements back into ``data`` (a parameter's ``.data`` or an integer view of it,
    which autograd does not track): through NumPy for a few elements of a contiguous CPU tensor (one call
    instead of a tensor op), else :func:`~bitlab.faults.write_at`."""
    if (
        data.device.type == "cpu"
        and data.dtype == values.dtype
        and data.dtype in _NUMPY_DTYPES
        and data.is_contiguous()
    ):
        data.numpy().reshape(-1)[idx.numpy()] = values.numpy()
    else:
        write_at(data, idx, values)


def _write_words_numpy(ints: Tensor, word: Tensor, bit: Tensor, mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """The native write of :meth:`Store._write` on the CPU, through a NumPy view of the words (a
    trial's handful of flips in a few calls instead of a dozen tensor ops), with the arithmetic of
    :func:`~bitlab.faults.fault_words` (the masks of a word's sites summed, then XOR/OR/AND-NOT) on the
    unsigned words. Returns what the store restores on exit: the words, the hit indices, their old values."""
    if mode not in ("flip", "stuck0", "stuck1"):
        raise ValueError(f"mode: {mode!r}; allowed 'flip', 'stuck0', 'stuck1'")
    arr = ints.numpy().reshape(-1)  # the parameter's own memory
    hit, inv = np.unique(word.numpy(), return_inverse=True)
    old = arr[hit].copy()
    words = old.astype(np.int64) & ((1 << 8 * arr.itemsize) - 1)  # unsigned, as to_unsigned gives them
    masks = np.zeros(len(hit), dtype=np.int64)
    np.add.at(masks, inv, np.left_shift(1, bit.numpy().astype(np.int64)))
    new = words ^ masks if mode == "flip" else words | masks if mode == "stuck1" else words & ~masks
    arr[hit] = new.astype(arr.dtype)  # back to the signed word (two's complement wrap, as to_signed)
    return ints, torch.from_numpy(hit), torch.from_numpy(old)


class Store:
    """A model's tensors as kept in a faulty store: number format ``fmt`` plus protection ``codec``.

    ``fmt=None`` (the default) stores each tensor in its own dtype's format (float32 -> FP32, float16 ->
    FP16, bfloat16 -> BF16; other dtypes are refused by name): a mixed model is a mixed store, where bits
    are resolved per tensor (``bits="exponent"`` is each format's exponent) and a bit error rate counts
    each tensor's stored width. An explicit ``fmt`` wider than a tensor's dtype (FP32 on float16) is
    refused; a narrower or re-encoding one (FP16, BF16, Q(2, 5), Int(8) on float32) is the caller
    quantizing on purpose: every weight then reads back through that format.

    ``params`` picks parameters and floating-point buffers (see :func:`bitlab.params.select_tensors`);
    non-contiguous and channels-last tensors are stored in logical (row-major) element order.

    Building a store does the per-tensor work once (codec state, the fault-free read, one clean copy);
    each :meth:`corrupted` then only samples faults and decodes the words they hit, so a campaign of many
    trials pays the dense work once. A stored tensor changed between trials (training, load_state_dict)
    makes the next :meth:`corrupted` raise: build a new store. :func:`corrupted` is the one-shot form.
    """

    def __init__(
        self, model: nn.Module, fmt: Format | None = None, codec: Codec | None = None, params: ParamSelection = None
    ) -> None:
        if fmt is not None:
            _check_fmt(fmt)
        self.model = model
        chosen = select_tensors(model, params)
        formats: list[Format] = []
        for name, t in chosen:
            if t.is_meta:
                raise ValueError(
                    f"params: {name!r} is on the meta device (it has no storage, so no bits to flip); "
                    "materialize the model first (e.g. model.to_empty(device=...) then load_state_dict)"
                )
            if fmt is None:
                formats.append(native_format(t.dtype, name))
            else:
                check_storable(fmt, t.dtype, name)
                formats.append(fmt)
        self.codec = codec = _check_codec(codec, formats[0])
        unique = list({id(f): f for f in formats}.values())
        for f in unique:
            _check_codec(codec, f)
        self.names = [n for n, _ in chosen]
        self.shapes = [t.shape for _, t in chosen]
        #: the format every tensor is stored in, or None for a mixed store (see ``formats``)
        self.fmt: Format | None = formats[0] if len(unique) == 1 else None
        self.formats = dict(zip(self.names, formats))
        self.fmt_name = "+".join(dict.fromkeys(f.name for f in unique))
        ids = {id(t): n for n, t in chosen}
        named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
        #: every name of a stored tensor (tied weights: each alias) -> the name it is stored under
        self.aliases = {n: ids[id(t)] for n, t in named if id(t) in ids}
        self.slots: list[_Slot] = []
        with torch.no_grad():
            for (name, t), f in zip(chosen, formats):
                data = t.data
                words = type(codec) is Identity and is_native(f, data.dtype)
                exact = codec.elementwise and codec.is_exact(f) and data.dtype == torch.float32
                slot = _Slot(
                    name, t, data, f, self._fit(name, data, f), words or exact, words, data.reshape(-1).clone()
                )
                slot.version = t._version
                if not slot.sparse:
                    stored = codec.encode(slot.orig, f, slot.state)
                    slot.clean = codec.decode(stored, f, slot.state).reshape(-1).to(data.dtype)
                    if not codec.elementwise:
                        slot.stored = stored
                        # a fault-free read that gives the weights back bit for bit: only what a hit changes
                        # is written (the codec's read_changed), and tensors without a hit are left alone
                        slot.sparse = same_bits(slot.clean, slot.orig)
                self.slots.append(slot)

    def _fit(self, name: str, data: Tensor, fmt: Format) -> dict:
        """The codec's state of one tensor; an error names the tensor, and so does a warning for a tensor
        the codec left alone (its state's ``"left_alone"`` reason, e.g. an all-zero tensor under scaling)."""
        try:
            state = self.codec.fit(data, fmt)
        except ValueError as e:
            raise ValueError(f"params: {name!r}: {e}") from e
        if state.get("left_alone"):
            warnings.warn(f"codec {self.codec.name}: {name!r}: {state['left_alone']}", CoverageWarning, stacklevel=4)
        return state

    def _faulty(self, slot: _Slot, word: Tensor, bit: Tensor, mode: str) -> tuple[Tensor, Tensor]:
        """Indices of the hit elements and the values they read back as (elementwise codecs)."""
        uidx, inv = torch.unique(word, return_inverse=True)
        sub = subset_state(slot.state, uidx, slot.orig.numel())
        words = self.codec.encode(slot.orig[uidx], slot.fmt, sub)
        return uidx, self.codec.decode(fault_words(words, inv, bit, mode), slot.fmt, sub)

    def _write(
        self, slot: _Slot, word: Tensor, bit: Tensor, mode: str, saved: list[tuple[Tensor, Tensor | None, Tensor]]
    ) -> None:
        data, f = slot.data, slot.fmt
        if data.device != word.device:  # sites are sampled on the CPU
            word, bit = word.to(data.device), bit.to(data.device)
        if slot.words:  # native format, no codec: XOR the stored bits themselves (NaN payloads kept)
            if word.numel() == 0:
                return
            assert isinstance(f, FloatFormat)
            ints = data.view(f.int_dtype)
            if ints.device.type == "cpu" and ints.is_contiguous():
                saved.append(_write_words_numpy(ints, word, bit, mode))
                return
            uidx, inv = torch.unique(word, return_inverse=True)
            old = read_at(ints, uidx).clone()
            saved.append((ints, uidx, old))
            new = fault_words(to_unsigned(old.to(torch.int64), f.width), inv, bit, mode)
            write_at(ints, uidx, to_signed(new, f.width).to(f.int_dtype))
            return
        if slot.stored is not None:  # a check spanning words: the codec says which elements a hit changes
            if not slot.sparse:
                assert slot.clean is not None
                saved.append((data, None, slot.orig))
                data.copy_(slot.clean.view(data.shape))
            if word.numel() == 0:
                return
            uidx, inv = torch.unique(word, return_inverse=True)
            faulty = fault_words(slot.stored.reshape(-1)[uidx], inv, bit, mode)
            idx, vals = self.codec.read_changed(slot.stored, f, slot.state, uidx, faulty)
            if slot.sparse:
                saved.append((data, idx, read_at(data, idx).clone()))
            write_at(data, idx, vals.to(data.dtype))
            return
        if slot.sparse:
            if word.numel() == 0:
                return
            uidx, vals = self._faulty(slot, word, bit, mode)
            saved.append((data, uidx, read_at(data, uidx).clone()))
            write_at(data, uidx, vals.to(data.dtype))
            return
        saved.append((data, None, slot.orig))
        assert slot.clean is not None  # elementwise dense slots keep their fault-free read
        data.copy_(slot.clean.view(data.shape))
        if word.numel():
            uidx, vals = self._faulty(slot, word, bit, mode)
            write_at(data, uidx, vals.to(data.dtype))

    def _bits(self, fault: Fault) -> list[tuple[int, ...]]:
        """The stored bit positions ``fault.bits`` selects in each tensor's own format."""
        cache: dict[int, tuple[int, ...]] = {}
        for f in self.formats.values():
            if id(f) not in cache:
                try:
                    cache[id(f)] = resolve_bits(fault.bits, self.codec.width(f), self.codec.fields(f))
                except ValueError as e:
                    raise ValueError(f"{e} (in the {f.name} store of {self.codec.name})") from None
        return [cache[id(self.formats[n])] for n in self.names]

    def _aliased(self, fault: Fault) -> Fault:
        """A fault naming a tied weight by another of its names, renamed to the stored name."""
        if isinstance(fault, SingleBitFlip) and fault.param in self.aliases:
            return replace(fault, param=self.aliases[fault.param])
        if isinstance(fault, FlipList):
            return FlipList(tuple((self.aliases.get(p, p), i, b) for p, i, b in fault.flips))
        return fault

    @contextmanager
    def corrupted(self, fault: Fault, generator: torch.Generator | None = None) -> Iterator[InjectionReport]:
        """Hold the weights as read back under ``fault``; restore them bit for bit on exit, and every buffer
        too (a train-mode forward inside would otherwise keep BatchNorm statistics of the corrupted model).
        A model already inside a ``corrupted`` context (this thread or another) is refused. Fault sites are
        sampled on the CPU (``generator`` is a CPU generator) and moved to each tensor's device.

        A stored parameter modified inside the block (``optimizer.step()``, ``load_state_dict``; detected by
        its version counter, so writes through ``p.data`` go unseen) is restored too, and the exit raises
        RuntimeError naming it (unless the block raised): train with the gradients, outside the block."""
        _check_fault(fault)
        check_cpu_generator("generator", generator)
        stale = [s.name for s in self.slots if s.changed()]
        if stale:
            raise RuntimeError(
                f"params: {stale} changed since this Store was built (an optimizer step, load_state_dict, new "
                "storage); a store reads back the weights it was built from: build a new Store after changing them"
            )
        bits = self._bits(fault)
        fault = self._aliased(fault)
        saved: list[tuple[Tensor, Tensor | None, Tensor]] = []
        buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        _enter(self.model)
        raised = False
        try:
            with torch.no_grad():
                sites = fault.sample(self.names, self.shapes, bits, generator)
                report = InjectionReport(fault.label(), self.fmt_name, self.codec.name, self.names, sites)
                hit = sites.by_tensor()
                for i, slot in enumerate(self.slots):
                    report.formats[slot.name] = slot.fmt.name
                    if i not in hit and (slot.words or slot.sparse):  # nothing to write, nothing to save
                        report.per_param[slot.name] = 0
                        continue
                    word, bit = hit[i] if i in hit else (_NO_SITES, _NO_SITES)
                    report.per_param[slot.name] = int(word.numel())
                    self._write(slot, word, bit, fault.mode, saved)
                    slot.version = slot.tensor._version
            yield report
        except BaseException:
            raised = True
            raise
        finally:
            trained = [s.name for s in self.slots if isinstance(s.tensor, nn.Parameter) and s.changed()]
            with torch.no_grad():
                for data, uidx, values in reversed(saved):
                    if uidx is None:
                        data.copy_(values.view(data.shape))
                    else:
                        _restore(data, uidx, values)
                for b, value in buffers:  # e.g. BatchNorm statistics updated by a train-mode forward inside
                    b.copy_(value)
                for s in self.slots:
                    if s.name in trained:
                        s.reset()
                    s.version = s.tensor._version
            _ACTIVE.discard(self.model)
        if trained and not raised:
            raise RuntimeError(f"params: {trained} were modified inside corrupted() and restored; {_TRAINING_HINT}")


@contextmanager
def corrupted(
    model: nn.Module,
    fault: Fault,
    fmt: Format | None = None,
    codec: Codec | None = None,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
) -> Iterator[InjectionReport]:
    """Hold ``model``'s weights as read back from a faulty store; restore them bit for bit on exit.

    ``fmt`` is the number format the weights are stored in (default None: each tensor's own dtype,
    float32 -> FP32, float16 -> FP16, bfloat16 -> BF16; a format wider than the dtype is refused, a
    narrower one quantizes on purpose), ``codec`` the protection on top of it (default: none),
    ``params`` which parameters and float buffers are stored there (default: every parameter), and
    ``generator`` (a CPU torch.Generator) makes the sampled faults reproducible. Yields an
    :class:`InjectionReport`. Training inside the block is refused on exit (see :meth:`Store.corrupted`).
    For many trials on one model, build a :class:`Store` once and use ``store.corrupted(fault)``.
    """
    _check_fault(fault)
    with Store(model, fmt, codec, params).corrupted(fault, generator) as report:
        yield report
