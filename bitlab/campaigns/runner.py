"""The campaign runner: every campaign is planned as work items, executed by an executor, and its
results stream back as rows, saved to a checkpoint as they finish.

A *work item* is a tuple key such as ``("", 1e-4, 7)`` (variant, rate, trial); the *work* is a
picklable callable ``work(item) -> row`` that holds the model and the data (:class:`Work`). Because
the faults of an item are a pure function of the campaign's seed and the item's key
(:mod:`bitlab.campaigns.seeds`), the rows do not depend on where, in what order, or in how many pieces
the items run. ``executor=`` picks where they run:

* ``None``: in this process, one after the other, on the caller's model (restored after each item);
* a :class:`concurrent.futures.Executor`: a process pool gets the items in a few chunks (the work
  pickled with each chunk, so metrics, ``output=`` pickers and fault factories must be picklable:
  module-level functions, not lambdas); a thread pool gets one deep copy of the work (model and data)
  per chunk, ``per_worker`` chunks per thread, made up front (memory: that many models);
* a ``dask.distributed.Client``: the work (model and data) is scattered to every worker once, then the
  chunks are submitted as tasks that refer to it, so the scheduler's dashboard shows the progress.
  On a worker with several threads, the tasks that share one copy of the model take turns.

**Bit for bit.** The rows are the same on every executor when the items run with the same number of
torch intra-op threads as the reference run (``torch.get_num_threads()``): a reduction split over
threads (a gradient, as in the bit-flip attack) sums in another order. Dask's workers run one thread
each by default (``OMP_NUM_THREADS=1``); give a process pool
``initializer=torch.set_num_threads, initargs=(1,)`` and the serial run ``torch.set_num_threads(1)``.
A process pool must spawn (or forkserver) its workers: a child forked after torch ran its thread
pool can hang, so a forking pool is refused.

**Dask workers and torch.** Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which
makes glibc hand freed memory back to the system at once: every forward pass then maps and unmaps its
activations, and a trial of the digits CNN took 1.6x as long on such a worker (6.5 ms against 4.0 ms
in process, measured here). :func:`local_cluster` starts a LocalCluster without it; on a real
cluster, start the workers with ``distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_`` unset
in the Dask configuration (or a large value, e.g. the environment variable
``DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON__MALLOC_TRIM_THRESHOLD_=4294967296``). Where the workers
share a few cores with the scheduler and the client, the rest of :data:`QUIET` (no 10-ms stack
sampling, a calmer event-loop tick and monitors) gives back a few percent more; put it in the workers'
Dask configuration (a YAML file or ``DASK_...`` variables) to the same effect.

A failing item raises :class:`ItemError` naming the item, the error and the worker's traceback; the
items finished before it are in the checkpoint. The caller's model is only read (pickled) by the
executors, never written.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import hashlib
import math
import os
import pickle
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from ..progress import bar as progress_bar
from .cluster import QUIET, local_cluster
from .journal import NON_FINITE, Journal
from .seeds import Key

__all__ = [
    "Item",
    "Row",
    "Work",
    "ItemError",
    "run",
    "load_rows",
    "read_record",
    "record",
    "Rows",
    "Saved",
    "is_dask_client",
    "local_cluster",
    "QUIET",
    "check_executor",
]

Item = tuple[Key, ...]
Row = dict[str, Any]


class Work(Protocol):
    """What a campaign runs: a picklable callable from a work item to its row."""

    def __call__(self, item: Item) -> Row: ...


class ItemError(RuntimeError):
    """A work item failed (in this process or on a worker): the message names the item and the cause."""


class Turns:
    """A lock that survives pickling (a new one on the other side): the items that share one copy of a
    model on a multi-threaded Dask worker run one at a time."""

    def __init__(self) -> None:
        self.lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.lock = threading.Lock()


def is_dask_client(executor: object) -> bool:
    """Whether ``executor`` is a ``dask.distributed.Client`` (checked without importing Dask)."""
    return type(executor).__module__.startswith("distributed") and hasattr(executor, "scatter")


def check_executor(executor: object) -> None:
    """Refuse anything but None, a concurrent.futures.Executor or a Dask client, by name; and a process
    pool that forks: a child forked after torch has run its thread pool (OpenMP) can hang in its first
    forward pass."""
    if isinstance(executor, cf.ProcessPoolExecutor):
        method = _start_method(executor)
        if method == "fork":
            raise ValueError(
                "executor: a ProcessPoolExecutor that forks (the default on Linux before Python 3.14) can hang "
                "in torch's thread pool; allowed start methods are 'spawn' and 'forkserver': "
                "ProcessPoolExecutor(n, mp_context=multiprocessing.get_context('spawn'))"
            )
        return
    if executor is None or isinstance(executor, cf.Executor) or is_dask_client(executor):
        return
    raise TypeError(
        f"executor: expected None (in process), a concurrent.futures.Executor (e.g. ProcessPoolExecutor) or a "
        f"dask.distributed.Client, got {type(executor).__name__}"
    )


def _start_method(pool: cf.ProcessPoolExecutor) -> str:
    context = getattr(pool, "_mp_context", None)  # set by every ProcessPoolExecutor since Python 3.7
    if context is None:
        import multiprocessing

        return multiprocessing.get_start_method()
    return str(context.get_start_method())


def _one(work: Work, item: Item) -> Row:
    try:
        return work(item)
    except Exception as err:  # named, with the worker's traceback: the caller may not see the worker
        raise ItemError(
            f"campaign item {item!r} failed: {type(err).__name__}: {err}\n{traceback.format_exc()}"
        ) from err


def _run_chunk(work: Work, items: list[Item]) -> list[tuple[Item, Row]]:
    """Run the items of one chunk (module level, so that process pools and Dask can ship it)."""
    return [(item, _one(work, item)) for item in items]


def _payload(work: Work) -> bytes:
    """The work as plain pickle bytes. A process pool's own pickler would move the model's tensors to
    shared memory (torch's reducers): every worker would then write its faults into the same weights,
    the caller's included. Plain bytes give every worker its own copy."""
    try:
        return pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:
        raise TypeError(
            f"executor: the campaign cannot be pickled for a process pool ({type(err).__name__}: {err}); use "
            "module-level functions (not lambdas or local functions) for metric, output and fault, or a Dask "
            "client (which ships them with cloudpickle)"
        ) from None


#: the work last unpickled in this (worker) process, by the digest of its bytes: chunks of one campaign
#: that land on the same worker build the model and its stores once
_UNPICKLED: dict[str, Work] = {}


def _run_pickled(payload: bytes, items: list[Item]) -> list[tuple[Item, Row]]:
    key = hashlib.sha256(payload).hexdigest()
    if key not in _UNPICKLED:
        _UNPICKLED.clear()
        try:
            _UNPICKLED[key] = pickle.loads(payload)  # bytes this campaign's caller just made, never a file
        except (AttributeError, ImportError) as err:  # a class defined in __main__, a notebook or a local scope
            raise TypeError(
                f"executor: a process-pool worker cannot rebuild the campaign ({type(err).__name__}: {err}); define "
                "the model's class and any metric or picker in an importable module, or use a Dask client "
                "(cloudpickle ships them by value)"
            ) from None
    return _run_chunk(_UNPICKLED[key], items)


def _workers(executor: object) -> int:
    if is_dask_client(executor):
        return max(1, sum(executor.nthreads().values()))  # type: ignore[attr-defined]
    return max(1, int(getattr(executor, "_max_workers", None) or os.cpu_count() or 1))


def _chunks(items: list[Item], n: int) -> list[list[Item]]:
    """``items`` dealt round-robin into ``n`` chunks of near-equal length (none empty): each chunk gets its
    share of every part of the list (of every rate of a sweep, whose trials cost more as flips grow), so the
    chunks take about the same time and none is left running alone at the end. Rows come back in item order
    whatever the chunks."""
    n = max(1, min(n, len(items)))
    return [items[j::n] for j in range(n)]


def _execute(
    work: Work, items: list[Item], executor: object, per_worker: int, shared: dict
) -> Iterator[tuple[Item, Row]]:
    """(item, row) pairs as the items finish, in any order."""
    if executor is None:
        for item in items:
            yield item, _one(work, item)
        return
    chunks = _chunks(items, per_worker * _workers(executor))
    if is_dask_client(executor):
        from distributed import as_completed  # an optional extra: pip install bitlab[dask]

        client: Any = executor
        if "scattered" not in shared:  # once per campaign, not per task
            shared["scattered"] = client.scatter(work, broadcast=True, hash=False)
        futures = [client.submit(_run_chunk, shared["scattered"], c, pure=False) for c in chunks]
        try:
            for fut in as_completed(futures):
                yield from fut.result()
        finally:
            client.cancel([f for f in futures if not f.done()])
        return
    assert isinstance(executor, cf.Executor)
    if isinstance(executor, cf.ProcessPoolExecutor):
        if "payload" not in shared:  # once per campaign
            shared["payload"] = _payload(work)
        parts = [executor.submit(_run_pickled, shared["payload"], c) for c in chunks]
    else:  # threads share memory: one model per chunk
        parts = [executor.submit(_run_chunk, copy.deepcopy(work), c) for c in chunks]
    try:
        for fut in cf.as_completed(parts):
            yield from fut.result()
    finally:
        for fut in parts:
            fut.cancel()


def record(item: Item, row: Row) -> dict[str, object]:
    """A finished item as a checkpoint record. Values are JSON (numbers, strings, None, lists), with two
    tagged objects: a non-finite float as ``{"float": "nan"}`` (JSON has none) and a mapping as
    ``{"object": [[key, value], ...]}`` (the row itself too), which keeps its order under the journal's
    sorted keys (a frame's columns come back in the order they were made)."""
    return {"item": list(item), "row": _encode(row)}


def _encode(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return {"float": repr(v)}
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return [_encode(x) for x in v]
    if isinstance(v, dict) and all(isinstance(k, str) for k in v):
        return {"object": [[k, _encode(x)] for k, x in v.items()]}
    raise TypeError(
        f"row: {type(v).__name__} {v!r} cannot be saved in a checkpoint (numbers, strings, None, lists and "
        "string-keyed mappings of them)"
    )


def _decode(v: object) -> object:
    if isinstance(v, dict):
        if set(v) == {"float"} and v["float"] in NON_FINITE:
            return NON_FINITE[v["float"]]
        pairs = v.get("object") if set(v) == {"object"} else None
        if not isinstance(pairs, list) or not all(
            isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) for p in pairs
        ):
            raise ValueError("a row value is an object that is neither a non-finite float nor a mapping")
        return {k: _decode(x) for k, x in pairs}
    if isinstance(v, list):
        return [_decode(x) for x in v]
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    raise ValueError("a row value is not a JSON value")


def read_record(obj: dict[str, object]) -> tuple[Item, Row]:
    """The item and row of a checkpoint record (the inverse of :func:`record`); ValueError if malformed."""
    if set(obj) != {"item", "row"}:
        raise ValueError("expected the fields item, row, sha256")
    item, row = obj["item"], _decode(obj["row"])
    if not isinstance(item, list) or not all(type(p) in (int, float, str) for p in item):
        raise ValueError("the item is not a list of numbers and strings")
    if not isinstance(row, dict):
        raise ValueError("the row is not a mapping")
    return tuple(item), row


def load_rows(journal: Journal) -> dict[Item, Row]:
    """The finished items of a checkpoint; an item saved twice must hold the same row."""
    done: dict[Item, Row] = {}
    for item, row in journal.load(read_record):
        old = done.setdefault(item, row)
        if old is not row and record(item, old) != record(item, row):
            raise journal.fail(f"item {item!r} appears twice with different rows")
    return done


class Saved(Protocol):
    """Where a campaign keeps its finished items: :meth:`load` them, :meth:`save` one as it finishes."""

    def load(self) -> dict[Item, Row]: ...

    def save(self, item: Item, row: Row) -> None: ...


class Rows:
    """A :class:`~.journal.Journal` of rows (numbers and strings), one record per finished item."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    def load(self) -> dict[Item, Row]:
        return load_rows(self.journal)

    def save(self, item: Item, row: Row) -> None:
        self.journal.append(record(item, row))


def run(
    work: Work,
    stages: Sequence[Sequence[Item]],
    executor: object = None,
    checkpoint: Saved | None = None,
    progress: bool | None = None,
    desc: str = "campaign",
    stop: Callable[[list[Row]], bool] | None = None,
    per_worker: int = 4,
    size: Callable[[Item], int] | None = None,
    after: Callable[[Item, Row], None] | None = None,
) -> tuple[list[Row], int]:
    """The rows of every item of ``stages`` (in item order) and how many came from the checkpoint.

    The items of a stage run together on ``executor`` (see the module docstring); after each stage,
    ``stop(rows of the stage)`` may end the campaign (e.g. a sweep past the breaking point). Items saved
    in ``checkpoint`` are not run again; every item that finishes is saved as it arrives. With an
    executor, the items of a stage are cut into ``per_worker`` chunks per worker (fewer, larger tasks
    cost less scheduling; more, smaller ones lose less to a kill and balance better). The progress bar
    counts ``size(item)`` per item (1 by default, e.g. the flips of a census chunk); ``after(item, row)``
    is called for every item computed here (not for those from the checkpoint), once it is saved."""
    check_executor(executor)
    done = checkpoint.load() if checkpoint is not None else {}
    reused = 0
    rows: list[Row] = []
    weigh = size if size is not None else (lambda item: 1)
    total = sum(weigh(tuple(i)) for s in stages for i in s)
    bar = progress_bar(total=total, desc=desc, progress=progress)
    shared: dict = {}
    try:
        for stage in stages:
            items = [tuple(i) for i in stage]
            got = {i: done[i] for i in items if i in done}
            reused += len(got)
            bar.update(sum(weigh(i) for i in got))
            pending = [i for i in items if i not in got]
            for item, row in _execute(work, pending, executor, per_worker, shared):
                got[item] = row
                if checkpoint is not None:
                    checkpoint.save(item, row)
                if after is not None:
                    after(item, row)
                bar.update(weigh(item))
            stage_rows = [got[i] for i in items]
            rows.extend(stage_rows)
            if stop is not None and stop(stage_rows):
                break
    finally:
        bar.close()
        if "scattered" in shared:
            shared["scattered"].release()
    return rows, reused
