"""The safe checkpoint file every campaign writes: append-only JSON lines, checksummed line by line,
keyed by a fingerprint of the campaign's inputs. Reading it runs no code (no pickle).

Line 1 is a header ``{"format": <name>, "version": <n>, "key": <fingerprint>}``; every further line
is one record (a JSON object) plus ``"sha256"``, the hex digest of the canonical JSON (sorted keys, no
spaces) of the record's other fields. A last line cut short (a crash or SIGKILL mid-write) is dropped
with a warning and cut off; anything else that does not check out is refused with the path named.

This module also writes the fingerprints: :func:`configuration` (a format or codec with every
attribute), :func:`describe` (a metric, an ``output=`` picker, a fault factory: text that changes when
they do) and :func:`digest` (a model's architecture and tensors, nested batches of data).
"""

from __future__ import annotations

import hashlib
import json
import os
import types
import warnings
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor, nn

from ..metrics import Metric

__all__ = [
    "Journal",
    "NON_FINITE",
    "campaign_key",
    "canonical",
    "configuration",
    "describe",
    "digest",
    "tensor_bytes",
    "model_digest",
]


#: how a checkpoint writes the floats JSON has no literal for
NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (bf16 included), with its dtype and shape."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return repr((str(t.dtype), tuple(t.shape))).encode() + flat.view(torch.uint8).numpy().tobytes()


def configuration(obj: object) -> str:
    """A format's or codec's type and every attribute it holds (tensors by digest), e.g.
    ``RangeNulling(margin=5.0)`` vs ``RangeNulling(margin=0.0)``, or ``Int`` with another ``axis``."""
    items = []
    for k, v in sorted(vars(obj).items()):
        shown = hashlib.sha256(tensor_bytes(v)).hexdigest() if isinstance(v, Tensor) else repr(v)
        items.append(f"{k}={shown}")
    return f"{type(obj).__module__}.{type(obj).__qualname__}({', '.join(items)})"


def describe(obj: object, depth: int = 0) -> str:
    """A metric, an ``output=`` picker or another setting as text that changes when it does and is the same
    in every process: a function by its module, name and a digest of its code (bytecode, the names it uses,
    its constants and nested code objects), closure and defaults (never its address); a
    :class:`~bitlab.metrics.Metric` by its name, direction, counting and function; an object whose ``repr``
    holds an address by its type and its attributes; anything else by ``repr``. Globals a function reads
    are covered by name, not by value."""
    if depth > 8:
        return "..."
    if isinstance(obj, Metric):
        return f"Metric({obj.name}, {obj.higher_is_better}, {obj.counts}, {describe(obj.fn, depth + 1)})"
    code = getattr(obj, "__code__", None)
    if code is not None:
        h = hashlib.sha256(_code_digest(code).encode())
        # what it closes over and its defaults change its answer too (a lambda using an outer ``scale``)
        cells = [c.cell_contents for c in getattr(obj, "__closure__", None) or () if _filled(c)]
        for v in [*cells, getattr(obj, "__defaults__", None), getattr(obj, "__kwdefaults__", None)]:
            h.update(tensor_bytes(v) if isinstance(v, Tensor) else describe(v, depth + 1).encode())
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}#{h.hexdigest()}"
    if isinstance(obj, Tensor):
        return hashlib.sha256(tensor_bytes(obj)).hexdigest()
    if isinstance(obj, (list, tuple)):
        return f"{type(obj).__name__}[{', '.join(describe(v, depth + 1) for v in obj)}]"
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k!r}: {describe(v, depth + 1)}" for k, v in obj.items()) + "}"
    text = repr(obj)
    if " at 0x" in text and hasattr(obj, "__dict__"):  # the default repr: the address changes every run
        fields = ", ".join(f"{k}={describe(v, depth + 1)}" for k, v in sorted(vars(obj).items()))
        return f"{type(obj).__module__}.{type(obj).__qualname__}({fields})"
    return text


def _code_digest(code: types.CodeType) -> str:
    """A code object without its address, file or line numbers: bytecode, names, constants (nested code
    objects, e.g. of a comprehension, the same way)."""
    consts = [_code_digest(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return repr((code.co_code, code.co_names, code.co_varnames, code.co_freevars, consts))


def _filled(cell: object) -> bool:
    try:
        cell.cell_contents  # type: ignore[attr-defined]  # noqa: B018
    except ValueError:  # a cell not yet bound
        return False
    return True


def digest(h: hashlib._Hash, obj: object) -> None:
    """Feed every tensor of a (nested) batch to ``h``, with the structure around it."""
    if isinstance(obj, Tensor):
        h.update(tensor_bytes(obj))
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            digest(h, obj[k])
    elif isinstance(obj, (tuple, list)):
        h.update(f"{type(obj).__name__}[{len(obj)}]".encode())
        for v in obj:
            digest(h, v)
    else:
        h.update(repr(obj).encode())


def model_digest(h: hashlib._Hash, model: nn.Module) -> None:
    """Feed a model's architecture (every module's type and configuration) and every parameter and
    buffer to ``h``."""
    for name, m in model.named_modules():
        h.update(f"{name}:{type(m).__module__}.{type(m).__qualname__}({m.extra_repr()})".encode())
        # settings kept as plain attributes (e.g. a quantized model's activation scales) change the answer too
        for k, v in sorted(vars(m).items()):
            if not k.startswith("_") and k != "training" and not isinstance(v, nn.Module):
                h.update(f"{k}={describe(v)}".encode())
    for name, t in model.state_dict(keep_vars=True).items():
        h.update(name.encode())
        h.update(tensor_bytes(t))


def canonical(obj: object) -> str:
    """JSON with sorted keys and no spaces; NaN and infinities are refused (encode them first)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _checksum(fields: dict[str, object]) -> str:
    return hashlib.sha256(canonical(fields).encode()).hexdigest()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


#: a record's check: the parsed record (without ``sha256``) -> its decoded value; raises ValueError
T = TypeVar("T")


class Journal:
    """The checkpoint at ``path`` of the campaign kind ``format`` with fingerprint ``key``: :meth:`load`
    the records it holds (each decoded by ``check``), :meth:`append` each record as it is finished.
    ``what`` names the campaign in the message for a foreign key."""

    def __init__(
        self, path: str | os.PathLike[str], format: str, version: int, key: str, what: str = "campaign"
    ) -> None:
        self.path = os.fspath(path)
        if os.path.isdir(self.path):
            raise ValueError(f"checkpoint: {self.path!r} is a directory; give a file path (e.g. 'sweep.jsonl')")
        parent = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(parent):
            raise ValueError(f"checkpoint: the directory {parent!r} of {self.path!r} does not exist; create it first")
        self.format, self.version, self.key, self.what = format, version, key, what
        self._has_header = False

    def fail(self, what: str) -> ValueError:
        """The error for a file that does not check out, naming the path."""
        return ValueError(f"checkpoint {self.path!r}: {what}; delete it or pass another path")

    def load(self, check: Callable[[dict[str, object]], T]) -> list[T]:
        """Every record, in file order, as ``check`` decodes it. Raises ValueError if the file is not a
        checkpoint of this campaign or is damaged; a last line cut short is dropped with a warning."""
        if not os.path.exists(self.path):
            return []
        with open(self.path, "rb") as f:
            raw = f.read()
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if lines:
            self._check_header(lines[0])
        elif tail and not self._header().encode().startswith(tail):
            raise self.fail("line 1 is not a complete checkpoint header")
        if tail:  # written only up to a point: nothing of it can be trusted, and it is not needed
            warnings.warn(
                f"checkpoint {self.path!r}: dropping an unfinished last line (an interrupted write)", stacklevel=3
            )
            with open(self.path, "r+b") as f:
                f.truncate(len(raw) - len(tail))
        if not lines:
            return []
        self._has_header = True
        out = []
        for number, line in enumerate(lines[1:], start=2):
            obj = self._parse(line, number)
            if "sha256" not in obj:
                raise self.fail(f"line {number}: no sha256 field")
            sha = obj.pop("sha256")
            if sha != _checksum(obj):
                raise self.fail(f"line {number}: checksum mismatch (the record was altered or damaged)")
            try:
                out.append(check(obj))
            except ValueError as err:
                raise self.fail(f"line {number}: {err}") from None
        return out

    def _header(self) -> str:
        return canonical({"format": self.format, "version": self.version, "key": self.key}) + "\n"

    def _parse(self, line: bytes, number: int) -> dict[str, object]:
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except ValueError as err:  # UnicodeDecodeError and json.JSONDecodeError among them
            raise self.fail(f"line {number} is not valid JSON ({err})") from None
        if not isinstance(obj, dict):
            raise self.fail(f"line {number} is not a JSON object")
        return obj

    def _check_header(self, line: bytes) -> None:
        head = self._parse(line, 1)
        if (
            head.get("format") != self.format
            or head.get("version") != self.version
            or set(head) != {"format", "version", "key"}
        ):
            raise self.fail(f"line 1 is not a {self.format} version {self.version} header")
        if head["key"] != self.key:
            raise self.fail(f"written by a different {self.what}")

    def append(self, record: dict[str, object]) -> None:
        """Add one record (and the header first, on a new or empty file), flushed to disk."""
        fields = dict(record)
        text = "" if self._has_header else self._header()
        fields["sha256"] = _checksum(fields)
        text += canonical(fields) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self._has_header = True


def campaign_key(model: nn.Module, batches: object, settings: object) -> str:
    """The fingerprint of a campaign: the model (architecture, parameters, buffers), the data, and
    ``settings`` (everything else that changes a row, as text: formats and codecs by
    :func:`configuration`, callables by :func:`describe`, the seed)."""
    h = hashlib.sha256(repr(settings).encode())
    model_digest(h, model)
    digest(h, batches)
    return h.hexdigest()
