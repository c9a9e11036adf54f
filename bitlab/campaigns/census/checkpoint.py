"""The census checkpoint: an append-only JSON-lines file of finished chunks (no code runs on load),
keyed by a fingerprint of the census's inputs and checksummed line by line.

Line 1: ``{"format": "bitlab-census-checkpoint", "version": 1, "key": <fingerprint>}``; then one line
per finished chunk: ``{"param", "start", "step", "accuracies", "sha256"}``, ``sha256`` the hex digest
of the canonical JSON (sorted keys, no spaces) of the other four fields. ``accuracies`` holds the
metric's values (accuracy, or e.g. an MSE in the naive loop). Floats are written with ``repr``
(Python's json), which reads back as the same float; non-finite values (an MSE of a broken model) as
the strings ``"nan"``, ``"inf"``, ``"-inf"``."""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ...codecs.base import Codec
from ...formats import Format
from ...metrics import Metric

__all__ = ["FORMAT", "VERSION", "CheckpointFile", "ChunkId", "configuration", "describe", "fingerprint"]

FORMAT = "bitlab-census-checkpoint"
VERSION = 1

#: (parameter name, first flip of the chunk in the parameter's order, chunk length)
ChunkId = tuple[str, int, int]


def _tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of a tensor of any dtype (bf16 included), with its dtype and shape."""
    flat = t.detach().cpu().contiguous().reshape(-1)
    return repr((str(t.dtype), tuple(t.shape))).encode() + flat.view(torch.uint8).numpy().tobytes()


def configuration(obj: object) -> str:
    """A format's or codec's type and every attribute it holds (tensors by digest), e.g.
    ``RangeNulling(margin=5.0)`` vs ``RangeNulling(margin=0.0)``, or ``Int`` with another ``axis``."""
    items = []
    for k, v in sorted(vars(obj).items()):
        shown = hashlib.sha256(_tensor_bytes(v)).hexdigest() if isinstance(v, Tensor) else repr(v)
        items.append(f"{k}={shown}")
    return f"{type(obj).__module__}.{type(obj).__qualname__}({', '.join(items)})"


def describe(obj: object) -> str:
    """A metric, an ``output=`` picker or another setting as text that changes when it does: a function by
    its module, name and a digest of its code, constants, closure and defaults (not its address, which is
    not stable across runs; globals it reads are not covered), a
    :class:`~bitlab.metrics.Metric` by its name, direction and function, anything else by ``repr``."""
    if isinstance(obj, Metric):
        return f"Metric({obj.name}, {obj.higher_is_better}, {describe(obj.fn)})"
    code = getattr(obj, "__code__", None)
    if code is not None:
        h = hashlib.sha256(code.co_code + repr(code.co_consts).encode())
        # what it closes over and its defaults change its answer too (a lambda using an outer ``scale``)
        cells = [c.cell_contents for c in getattr(obj, "__closure__", None) or () if _filled(c)]
        for v in [*cells, getattr(obj, "__defaults__", None), getattr(obj, "__kwdefaults__", None)]:
            h.update(_tensor_bytes(v) if isinstance(v, Tensor) else describe(v).encode())
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}#{h.hexdigest()}"
    return repr(obj)


def _filled(cell: object) -> bool:
    try:
        cell.cell_contents  # type: ignore[attr-defined]  # noqa: B018
    except ValueError:  # a cell not yet bound
        return False
    return True


def _update(h: hashlib._Hash, obj: object) -> None:
    """Feed every tensor of a (nested) batch to ``h``, with the structure around it."""
    if isinstance(obj, Tensor):
        h.update(_tensor_bytes(obj))
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            h.update(repr(k).encode())
            _update(h, obj[k])
    elif isinstance(obj, (tuple, list)):
        h.update(f"{type(obj).__name__}[{len(obj)}]".encode())
        for v in obj:
            _update(h, v)
    else:
        h.update(repr(obj).encode())


def fingerprint(
    model: nn.Module,
    chosen: list[tuple[str, nn.Parameter]],
    plan: list[tuple[str, Tensor]],
    positions: Sequence[int],
    fmt: Format,
    codec: Codec,
    batches: Sequence[tuple[object, Tensor]],
    scoring: str = "accuracy",
) -> str:
    """A digest of everything that changes a census's answer: the model's architecture (every module's
    type and configuration), every parameter and buffer, the format and the codec with all their
    attributes, the bits, the chosen parameters and visited weights, the data, and ``scoring`` (the
    path, the metric and the output picker, as :func:`describe` writes them)."""
    h = hashlib.sha256()
    h.update(repr((configuration(fmt), configuration(codec), tuple(positions), scoring)).encode())
    for name, m in model.named_modules():
        h.update(f"{name}:{type(m).__module__}.{type(m).__qualname__}({m.extra_repr()})".encode())
    for name, t in model.state_dict(keep_vars=True).items():
        h.update(name.encode())
        h.update(_tensor_bytes(t))
    for (name, _), (_, idx) in zip(chosen, plan):
        h.update(name.encode())
        h.update(idx.numpy().tobytes())
    for x, y in batches:
        _update(h, x)
        _update(h, y)
    return h.hexdigest()


def _canonical(obj: object) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def _checksum(fields: dict[str, object]) -> str:
    return hashlib.sha256(_canonical(fields).encode()).hexdigest()


#: how non-finite values are written (JSON has no NaN or Infinity)
_NON_FINITE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf")}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


class CheckpointFile:
    """The checkpoint at ``path`` of the census with fingerprint ``key``: :meth:`load` the chunks
    it holds, :meth:`append` each chunk as it is finished."""

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        self.path = os.fspath(path)
        self.key = key
        self._has_header = False

    def _fail(self, what: str) -> ValueError:
        return ValueError(f"checkpoint {self.path!r}: {what}; delete it or pass another path")

    def load(self) -> dict[ChunkId, list[float]]:
        """The finished chunks. Raises ValueError if the file is not a checkpoint of this census or is
        damaged; a last line cut short (a crash mid-write) is dropped with a warning and cut off."""
        if not os.path.exists(self.path):
            return {}
        with open(self.path, "rb") as f:
            raw = f.read()
        lines = raw.split(b"\n")
        tail = lines.pop()  # b"" when the file ends with a newline
        if lines:
            self._check_header(lines[0])
        elif tail and not self._header().encode().startswith(tail):
            raise self._fail("line 1 is not a complete checkpoint header")
        if tail:  # written only up to a point: nothing of it can be trusted, and it is not needed
            warnings.warn(
                f"checkpoint {self.path!r}: dropping an unfinished last line (an interrupted write)", stacklevel=3
            )
            with open(self.path, "r+b") as f:
                f.truncate(len(raw) - len(tail))
        if not lines:
            return {}
        self._has_header = True
        done: dict[ChunkId, list[float]] = {}
        for number, line in enumerate(lines[1:], start=2):
            cid, accs = self._chunk(line, number)
            if done.setdefault(cid, accs) != accs:
                raise self._fail(f"line {number}: chunk {cid} appears twice with different accuracies")
        return done

    def _header(self) -> str:
        return _canonical({"format": FORMAT, "version": VERSION, "key": self.key}) + "\n"

    def _parse(self, line: bytes, number: int) -> dict[str, object]:
        try:
            obj = json.loads(line, parse_constant=_reject_constant)
        except ValueError as err:  # UnicodeDecodeError and json.JSONDecodeError among them
            raise self._fail(f"line {number} is not valid JSON ({err})") from None
        if not isinstance(obj, dict):
            raise self._fail(f"line {number} is not a JSON object")
        return obj

    def _check_header(self, line: bytes) -> None:
        head = self._parse(line, 1)
        if head.get("format") != FORMAT or head.get("version") != VERSION or set(head) != {"format", "version", "key"}:
            raise self._fail(f"line 1 is not a {FORMAT} version {VERSION} header")
        if head["key"] != self.key:
            raise self._fail("written by a different census (model, data, format, codec, bits, sampling or metric)")

    def _chunk(self, line: bytes, number: int) -> tuple[ChunkId, list[float]]:
        obj = self._parse(line, number)
        if set(obj) != {"param", "start", "step", "accuracies", "sha256"}:
            raise self._fail(f"line {number}: expected the fields param, start, step, accuracies, sha256")
        digest = obj.pop("sha256")
        if digest != _checksum(obj):
            raise self._fail(f"line {number}: checksum mismatch (the chunk was altered or damaged)")
        param, start, step, accs = obj["param"], obj["start"], obj["step"], obj["accuracies"]
        if not (
            isinstance(param, str)
            and type(start) is int
            and type(step) is int
            and isinstance(accs, list)
            and all(type(a) is float or a in _NON_FINITE for a in accs)
        ):
            raise self._fail(f"line {number}: a field has the wrong type")
        return (param, start, step), [_NON_FINITE[a] if isinstance(a, str) else a for a in accs]

    def append(self, cid: ChunkId, accuracies: list[float]) -> None:
        """Add one finished chunk (and the header first, on a new or empty file), flushed to disk."""
        param, start, step = cid
        values = [repr(a) if not math.isfinite(a) else a for a in accuracies]  # "nan", "inf", "-inf"
        fields: dict[str, object] = {"param": param, "start": start, "step": step, "accuracies": values}
        text = ""
        if not self._has_header:
            text = self._header()
        fields["sha256"] = _checksum(fields)
        text += _canonical(fields) + "\n"
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        self._has_header = True
