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
import math
import os
from collections.abc import Callable, Sequence

from torch import Tensor, nn

from ...codecs.base import Codec
from ...formats import Format
from ..journal import NON_FINITE, Journal, configuration, describe, digest, model_digest
from ..runner import Item, Row

__all__ = [
    "FORMAT",
    "VERSION",
    "CensusSaved",
    "CheckpointFile",
    "NewChunks",
    "ChunkId",
    "configuration",
    "describe",
    "fingerprint",
]

FORMAT = "bitlab-census-checkpoint"
VERSION = 1

#: (parameter name, first flip of the chunk in the parameter's order, chunk length)
ChunkId = tuple[str, int, int]


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
    model_digest(h, model)
    for (name, _), (_, idx) in zip(chosen, plan):
        h.update(name.encode())
        h.update(idx.numpy().tobytes())
    for x, y in batches:
        digest(h, x)
        digest(h, y)
    return h.hexdigest()


def _chunk(obj: dict[str, object]) -> tuple[ChunkId, list[float]]:
    if set(obj) != {"param", "start", "step", "accuracies"}:
        raise ValueError("expected the fields param, start, step, accuracies, sha256")
    param, start, step, accs = obj["param"], obj["start"], obj["step"], obj["accuracies"]
    if not (
        isinstance(param, str)
        and type(start) is int
        and type(step) is int
        and isinstance(accs, list)
        and all(type(a) is float or a in NON_FINITE for a in accs)
    ):
        raise ValueError("a field has the wrong type")
    return (param, start, step), [NON_FINITE[a] if isinstance(a, str) else a for a in accs]


class CheckpointFile:
    """The checkpoint at ``path`` of the census with fingerprint ``key`` (a :class:`~..journal.Journal`
    of chunks): :meth:`load` the chunks it holds, :meth:`append` each chunk as it is finished."""

    def __init__(self, path: str | os.PathLike[str], key: str) -> None:
        what = "census (model, data, format, codec, bits, sampling or metric)"
        self.journal = Journal(path, FORMAT, VERSION, key, what)
        self.path, self.key = self.journal.path, key

    def load(self) -> dict[ChunkId, list[float]]:
        """The finished chunks. Raises ValueError if the file is not a checkpoint of this census or is
        damaged; a last line cut short (a crash mid-write) is dropped with a warning and cut off."""
        done: dict[ChunkId, list[float]] = {}
        for cid, accs in self.journal.load(_chunk):
            if done.setdefault(cid, accs) != accs:
                raise self.journal.fail(f"chunk {cid} appears twice with different accuracies")
        return done

    def append(self, cid: ChunkId, accuracies: list[float]) -> None:
        """Add one finished chunk (and the header first, on a new or empty file), flushed to disk."""
        param, start, step = cid
        values = [repr(a) if not math.isfinite(a) else a for a in accuracies]  # "nan", "inf", "-inf"
        self.journal.append({"param": param, "start": start, "step": step, "accuracies": values})


class CensusSaved:
    """A census checkpoint as the campaign runner's :class:`~..runner.Saved`: item ``(param, start,
    step)``, row ``{"accuracies": [...]}``; ``sizes`` holds each chunk's number of flips, checked on load."""

    def __init__(self, ckpt: CheckpointFile, sizes: dict[Item, int]) -> None:
        self.ckpt, self.sizes = ckpt, sizes

    def load(self) -> dict[Item, Row]:
        done = self.ckpt.load()
        for cid, accs in done.items():
            if cid in self.sizes and len(accs) != self.sizes[cid]:
                raise ValueError(f"checkpoint {self.ckpt.path!r}: chunk {cid} holds the wrong number of flips")
        return {cid: {"accuracies": accs} for cid, accs in done.items()}

    def save(self, item: Item, row: Row) -> None:
        name, start, step = item
        accs = row["accuracies"]
        assert isinstance(name, str) and isinstance(start, int) and isinstance(step, int) and isinstance(accs, list)
        self.ckpt.append((name, start, step), accs)


class NewChunks:
    """The runner's ``after`` for a census: counts the chunks computed here (not those read from the
    checkpoint) and their flips, sums the rows' ``stats`` counts (the fast census's certified/rechecked/
    recomputed) and calls ``on_chunk(chunks so far)`` after each."""

    def __init__(
        self, sizes: dict[Item, int], on_chunk: Callable[[int], None] | None, stats: Sequence[str] = ()
    ) -> None:
        self.sizes, self.on_chunk = sizes, on_chunk
        self.stats = dict.fromkeys(stats, 0)
        self.chunks = self.flips = 0

    def __call__(self, item: Item, row: Row) -> None:
        for k in self.stats:
            self.stats[k] += row[k]
        self.chunks += 1
        self.flips += self.sizes[item]
        if self.on_chunk is not None:
            self.on_chunk(self.chunks)

    @property
    def reused(self) -> int:
        """Flips read from the checkpoint."""
        return sum(self.sizes.values()) - self.flips
