"""Number formats: how a weight is stored as an integer word, and back.

Every format turns a float tensor into unsigned integer words held in an ``int64``
tensor (values in ``[0, 2**width)``, bit 0 is the least significant) and decodes them
again. Formats name their bit fields so that a notebook can say ``bits="exponent"``.

* :data:`FP32`, :data:`FP16`, :data:`BF16`: IEEE-754 style floats. FP32 is bit exact;
  FP16/BF16 round to nearest even, FP16 overflows to +-inf as the hardware would.
* :class:`Q`: two's complement fixed point ``Qm.n`` (sign + m integer + n fraction bits),
  as used by Fuengfusin 2024 (Q2.5). Rounds half to even, saturates at the range ends.
* :class:`Int`: symmetric integer quantization ``x = q * scale`` (8-bit, 4-bit, ...),
  per tensor or per output channel.

A tensor's *native* format is the one its dtype is stored in (:data:`NATIVE`: float32 -> FP32, float16
-> FP16, bfloat16 -> BF16). A format wider than the stored dtype is refused (its extra bits do not exist
in storage, see :func:`check_storable`); a narrower or re-encoding one is the caller quantizing on purpose.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .validate import check_int

BitSelection = str | int | Sequence[int] | None

__all__ = [
    "finite_abs",
    "Format",
    "FloatFormat",
    "Q",
    "Int",
    "FP32",
    "FP16",
    "BF16",
    "FORMATS",
    "NATIVE",
    "native_format",
    "is_native",
    "check_storable",
    "resolve_bits",
    "to_unsigned",
    "to_signed",
    "bit_view",
    "same_bits",
]


def finite_abs(x: Tensor) -> Tensor:
    """``|x|`` in float32 with NaN and +-Inf counted as 0: a scale factor is taken over the finite values
    only, so one non-finite element cannot zero (NaN) or blow up (Inf) the scale of its whole tensor.
    On encoding, NaN then reads as 0 and +-Inf saturates to the largest level, element by element."""
    a = x.detach().abs().to(torch.float32)
    return torch.where(torch.isfinite(a), a, torch.zeros_like(a))


def to_unsigned(q: Tensor, width: int) -> Tensor:
    """Two's complement: signed integers -> unsigned words of ``width`` bits (int64)."""
    return q.to(torch.int64) & ((1 << width) - 1)


def to_signed(words: Tensor, width: int) -> Tensor:
    """Unsigned words of ``width`` bits -> signed integers (int64), two's complement."""
    w = words.to(torch.int64) & ((1 << width) - 1)
    return torch.where(w >= (1 << (width - 1)), w - (1 << width), w)


def resolve_bits(sel: BitSelection, width: int, fields: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    """Turn a bit selection into sorted bit positions.

    ``sel`` is ``None``/``"all"`` (every bit), a field name (``"sign"``, ``"exponent"``...),
    a bit index, or a list of bit indices and/or field names.
    """
    if sel is None or (isinstance(sel, str) and sel == "all"):
        return tuple(range(width))
    if isinstance(sel, str):
        if sel not in fields:
            raise ValueError(
                f"bits: unknown field {sel!r}; allowed: 'all', "
                f"{', '.join(repr(k) for k in fields)} or bit indices 0..{width - 1}"
            )
        return tuple(fields[sel])
    if isinstance(sel, bool) or not isinstance(sel, (int, Iterable)):
        raise TypeError(f"bits: expected a field name, a bit index or a list of them, got {type(sel).__name__}")
    items = [sel] if isinstance(sel, int) else list(sel)
    out: set[int] = set()
    for b in items:
        if isinstance(b, str):
            out.update(resolve_bits(b, width, fields))
            continue
        if isinstance(b, bool) or not isinstance(b, int):
            raise TypeError(f"bits: bit indices must be ints, got {b!r}")
        if not 0 <= b < width:
            raise ValueError(f"bits: bit index {b} is outside the format's width; allowed 0..{width - 1}")
        out.add(int(b))
    if not out:
        raise ValueError("bits: the selection is empty; give at least one bit or field")
    return tuple(sorted(out))


class Format(ABC):
    """A number format: ``encode`` floats to unsigned integer words, ``decode`` them back."""

    name: str
    width: int
    fields: Mapping[str, tuple[int, ...]]
    #: ``decode(encode(x)) == x`` bit for bit for every float32 ``x``.
    lossless: bool = False
    #: the format needs a scale factor (see :meth:`calibrate`).
    needs_scale: bool = False

    def bits(self, sel: BitSelection = "all") -> tuple[int, ...]:
        """Bit positions of a selection: ``"all"``, a field name, an index or a list."""
        return resolve_bits(sel, self.width, self.fields)

    def calibrate(self, x: Tensor) -> Tensor | None:
        """The scale factor this format would use for ``x`` (``None`` if it needs none)."""
        return None

    @abstractmethod
    def encode(self, x: Tensor, scale: Tensor | float | None = None) -> Tensor:
        """Float tensor -> unsigned integer words (int64) of ``width`` bits."""

    @abstractmethod
    def decode(self, words: Tensor, scale: Tensor | float | None = None) -> Tensor:
        """Unsigned integer words -> float32 tensor."""

    def roundtrip(self, x: Tensor, scale: Tensor | float | None = None) -> Tensor:
        """What a weight reads back as after a fault-free store: ``decode(encode(x))``."""
        if self.needs_scale and scale is None:
            scale = self.calibrate(x)
        return self.decode(self.encode(x, scale), scale)

    def __repr__(self) -> str:
        return self.name


@dataclass(frozen=True, repr=False)
class FloatFormat(Format):
    """IEEE-754 binary floating point stored by reinterpreting the bits (sign | exponent | mantissa)."""

    name: str
    width: int
    exponent_bits: int
    dtype: torch.dtype
    int_dtype: torch.dtype
    fields: Mapping[str, tuple[int, ...]] = field(init=False)

    def __post_init__(self) -> None:
        m = self.width - 1 - self.exponent_bits
        fields = {
            "sign": (self.width - 1,),
            "exponent": tuple(range(m, self.width - 1)),
            "mantissa": tuple(range(m)),
            "exponent_msb": (self.width - 2,),
            "msb": (self.width - 1,),
        }
        object.__setattr__(self, "fields", fields)

    @property
    def lossless(self) -> bool:  # type: ignore[override]
        return self.dtype == torch.float32

    def encode(self, x: Tensor, scale: Tensor | float | None = None) -> Tensor:
        v = x.detach().to(self.dtype).contiguous()
        return to_unsigned(v.view(self.int_dtype), self.width)

    def decode(self, words: Tensor, scale: Tensor | float | None = None) -> Tensor:
        signed = to_signed(words, self.width).to(self.int_dtype)
        return signed.view(self.dtype).to(torch.float32)


#: IEEE-754 single precision: 1 sign, 8 exponent, 23 mantissa bits. Bit exact and free.
FP32 = FloatFormat("FP32", 32, 8, torch.float32, torch.int32)
#: IEEE-754 half precision: 1 sign, 5 exponent, 10 mantissa bits.
FP16 = FloatFormat("FP16", 16, 5, torch.float16, torch.int16)
#: bfloat16: 1 sign, 8 exponent, 7 mantissa bits.
BF16 = FloatFormat("BF16", 16, 8, torch.bfloat16, torch.int16)


class Q(Format):
    """Two's complement fixed point ``Qm.n``: 1 sign bit, ``m`` integer bits, ``n`` fraction bits.

    Represents ``k * 2**-n`` for integers ``k`` in ``[-2**(m+n), 2**(m+n) - 1]``, i.e. the range
    ``[-2**m, 2**m - 2**-n]``. Encoding rounds half to even, saturates outside the range and maps
    NaN to 0. Fuengfusin 2024 stores weights as Q2.5 (8 bits). Width is at most 32 bits.
    """

    def __init__(self, m: int, n: int) -> None:
        check_int("m", m, 0)
        check_int("n", n, 0)
        if 1 + m + n > 32:
            raise ValueError(
                f"Q(m={m}, n={n}): a fixed-point format is at most 32 bits wide "
                f"(1 + m + n = {1 + m + n}); allowed 1 + m + n <= 32"
            )
        self.m, self.n = m, n
        self.width = 1 + m + n
        self.name = f"Q{m}.{n}"
        self.step = 2.0**-n
        self.fields = {
            "sign": (self.width - 1,),
            "integer": tuple(range(n, n + m)),
            "fraction": tuple(range(n)),
            "msb": (self.width - 1,),
        }

    @property
    def max_value(self) -> float:
        return 2.0**self.m - self.step

    @property
    def min_value(self) -> float:
        return -(2.0**self.m)

    def encode(self, x: Tensor, scale: Tensor | float | None = None) -> Tensor:
        lo, hi = -(1 << (self.m + self.n)), (1 << (self.m + self.n)) - 1
        k = torch.round(x.detach().to(torch.float64) / self.step)
        k = torch.nan_to_num(k, nan=0.0, posinf=hi, neginf=lo).clamp(lo, hi)
        return to_unsigned(k.to(torch.int64), self.width)

    def decode(self, words: Tensor, scale: Tensor | float | None = None) -> Tensor:
        return (to_signed(words, self.width).to(torch.float64) * self.step).to(torch.float32)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Q) and (self.m, self.n) == (other.m, other.n)

    def __hash__(self) -> int:
        return hash(("Q", self.m, self.n))


class Int(Format):
    """Symmetric integer quantization ``x ~= q * scale`` with ``q`` in ``[-(2**(b-1)-1), 2**(b-1)-1]``.

    The scale is ``max|x| / (2**(b-1) - 1)``, per tensor or per output channel (``axis``, default 0,
    the output dimension of Linear/Conv weights); a scale of 0 (all-zero data) is replaced by 1.
    Words are ``bits`` wide, two's complement.
    Encoding rounds half to even and saturates; a flipped word may decode to ``-2**(b-1) * scale``.
    """

    needs_scale = True

    def __init__(self, bits: int = 8, per_channel: bool = False, axis: int = 0) -> None:
        check_int("bits", bits, 2, 32)
        if not isinstance(per_channel, bool):
            raise TypeError(f"per_channel: expected a bool, got {type(per_channel).__name__}")
        self.width = bits
        self.per_channel = per_channel
        self.axis = axis
        self.qmax = (1 << (bits - 1)) - 1
        self.name = f"int{bits}" + ("/ch" if per_channel else "")
        self.fields = {"sign": (bits - 1,), "magnitude": tuple(range(bits - 1)), "msb": (bits - 1,)}

    def calibrate(self, x: Tensor) -> Tensor:
        a = finite_abs(x)
        if self.per_channel and x.dim() > 1:
            if not -x.dim() <= self.axis < x.dim():
                raise ValueError(
                    f"axis: {self.axis} does not exist in a tensor of shape {tuple(x.shape)}; "
                    f"allowed {-x.dim()}..{x.dim() - 1}"
                )
            dims = [d for d in range(x.dim()) if d != self.axis % x.dim()]
            amax = a.amax(dim=dims, keepdim=True)
        else:
            amax = a.max() if a.numel() else torch.tensor(0.0)
        scale = amax / self.qmax
        return torch.where(scale > 0, scale, torch.ones_like(scale))

    def _scale(self, x: Tensor, scale: Tensor | float | None) -> Tensor | float:
        if scale is None:
            return self.calibrate(x)
        return scale

    def encode(self, x: Tensor, scale: Tensor | float | None = None) -> Tensor:
        s = self._scale(x, scale)
        q = torch.round(x.detach().to(torch.float64) / torch.as_tensor(s, dtype=torch.float64))
        q = torch.nan_to_num(q, nan=0.0, posinf=self.qmax, neginf=-self.qmax).clamp(-self.qmax, self.qmax)
        return to_unsigned(q.to(torch.int64), self.width)

    def decode(self, words: Tensor, scale: Tensor | float | None = None) -> Tensor:
        if scale is None:
            raise ValueError(
                f"scale: {self.name} words cannot be decoded without the scale factor "
                "they were encoded with; pass scale=fmt.calibrate(x)"
            )
        q = to_signed(words, self.width).to(torch.float32)
        return q * torch.as_tensor(scale, dtype=torch.float32)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Int) and (self.width, self.per_channel, self.axis) == (
            other.width,
            other.per_channel,
            other.axis,
        )

    def __hash__(self) -> int:
        return hash(("Int", self.width, self.per_channel, self.axis))


#: the formats by name, for command lines and notebook parameters
FORMATS: dict[str, Format] = {"FP32": FP32, "FP16": FP16, "BF16": BF16, "Q2.5": Q(2, 5), "int8": Int(8), "int4": Int(4)}

#: the format each storable dtype is kept in bit for bit (what ``fmt=None`` means)
NATIVE: dict[torch.dtype, FloatFormat] = {torch.float32: FP32, torch.float16: FP16, torch.bfloat16: BF16}


def native_format(dtype: torch.dtype, name: str = "tensor") -> FloatFormat:
    """The format a tensor ``name`` of ``dtype`` is stored in bit for bit (:data:`NATIVE`)."""
    if dtype not in NATIVE:
        raise ValueError(
            f"fmt: {name!r} is stored as {dtype}, which has no native format; fmt=None allows "
            "float32 (FP32), float16 (FP16) and bfloat16 (BF16) tensors; for other dtypes pass fmt= on "
            f"purpose (e.g. fmt=FP32 rounds {dtype} weights to float32 when read back)"
        )
    return NATIVE[dtype]


def is_native(fmt: Format, dtype: torch.dtype) -> bool:
    """Whether ``fmt`` stores ``dtype`` tensors bit for bit, by reinterpreting their bits."""
    return isinstance(fmt, FloatFormat) and fmt.dtype == dtype


def check_storable(fmt: Format, dtype: torch.dtype, name: str = "tensor") -> None:
    """Refuse a format wider than the dtype a tensor is stored in (FP32 on float16 weights: 16 of its 32
    bits would not exist, so their flips would be lost silently). A narrower or re-encoding format
    (FP16, BF16, Q(m, n), Int(bits) on float32) is the caller quantizing on purpose and is allowed."""
    stored = torch.finfo(dtype).bits
    if fmt.width > stored:
        native = NATIVE[dtype].name if dtype in NATIVE else "none"
        raise ValueError(
            f"fmt: {fmt.name} has {fmt.width} bits but {name!r} is stored as {dtype} ({stored} bits): its extra "
            f"bits do not exist in storage; allowed: fmt=None (the native format, {native}) or a format of at "
            f"most {stored} bits (FP16, BF16, Q(m, n) with 1 + m + n <= {stored}, Int(bits <= {stored}))"
        )


def bit_view(t: Tensor) -> Tensor:
    """A float tensor as integers of its width (its bit patterns); any other tensor as it is."""
    if t.is_floating_point() and t.element_size() in (2, 4, 8):
        return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
    return t


def same_bits(a: object, b: object) -> bool:
    """Bit for bit the same value (NaN payloads and signs of zero included)."""
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        same = a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride() and a.device == b.device
        return same and torch.equal(bit_view(a), bit_view(b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(same_bits(u, v) for u, v in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_bits(a[k], b[k]) for k in a)
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return False
    return bool(a == b) if type(a) is type(b) else False
