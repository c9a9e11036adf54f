"""The fast exact single-bit census (:func:`bit_census`): the relative accuracy drop (RAD) of every
single-bit flip, the same frame as the naive loop but much faster; and :func:`count_above`.

Pranto et al. 2025 measure a model's sensitivity to parameter corruption by flipping each bit of
each parameter on its own and recording RAD = (acc_clean - acc_flipped) / acc_clean. The naive
loop (:func:`bitlab.campaigns.census.naive_bit_census`: flip, full forward, restore) costs one forward
pass per flip. :func:`bit_census` returns *the same frame* (same rows, same accuracy floats,
NaN/Inf flips included) much faster, by sharing work across flips.

How (for models that are an ``nn.Sequential`` chain, nested ones included), one stage per module:

1. :mod:`.clean`: the clean activations at every layer are computed once, with the same calls on
   the same batches as the naive forward (so they are bit for bit what the naive loop sees before
   the corrupted layer), and kept per batch, each in its own allocation like the naive run's tensors.
2. One changed weight moves one output unit (Linear) or one output channel (Conv2d) of its layer,
   by ``delta * x[:, i]`` or ``delta * (one plane of the unfolded input patches)``: a rank-1
   update. It stays in that channel through ReLU / max-pooling / Flatten, and the next
   Linear/Conv2d sees it as a rank-1 update again (:mod:`.follow`). Thousands of flips are handled
   at once.
3. **Exactness.** Floating-point sums in another order are not bit-identical to the naive
   forward (checked here: Linear rows are not batch-invariant on MKL, nor is a one-row recompute),
   so the fast path never pretends to reproduce float32 values. Instead it *certifies* outcomes.
   A float32 dot product of n terms in any order is within ``gamma_n * (sum|w||x| + |b|)`` of the
   exact one (Higham, *Accuracy and Stability of Numerical Algorithms*, eq. 3.5; we use
   2 x gamma_n plus underflow and float64 slack, :mod:`.rounding`); ReLU and max-pooling are
   monotone and 1-Lipschitz. Per flip and sample (:func:`~.certify.certify`):

   a. *screen* (:mod:`.screen`): per sample and class the flipped naive logits are within
      ``|delta| A + B`` of the clean naive ones, where ``A`` carries the weight's inputs ``|x|`` through
      ``|W|`` of every later layer and ``B`` both runs' rounding bounds. ``A`` and ``B`` depend on the
      weight, not on the bit, so all bits of a weight are screened by one comparison per sample:
      the outcome is the clean one when ``e_y + e_k`` stays below the clean gap ``z_y - z_k`` for
      every class ``k`` (mirrored for a clean-wrong sample); overflow is excluded per flip. Where
      the screen leaves most samples open (a first layer: ``|W|`` bounds compound layer by layer; a
      probe on four weights decides, :mod:`.cost`) it is skipped;
   b. *row path* (:mod:`.rows`) for the samples the screen leaves open, when they are few: the
      exact change of the logits in float64 (rank-1 through the next mixing layer, then dense),
      with the radius ``B + G |delta| A`` around it: certainly right / certainly wrong;
   c. every flip with a sample still open gets the **exact input of the next mixing layer**
      (:mod:`.exact`): its layer is called with the naive shapes (flips in different output
      channels share one call: each output element reads only its own weights) and the changed
      channel goes through the exact per-channel ops (ReLU, max-pooling). Flips whose changed
      channel is bit for bit the same share everything from here on;
   d. *recheck* (:mod:`.recheck`): from that exact input the rest of the network runs in float32
      on many flips at once, in any shapes, and the naive run's logits are within a rounding
      radius of ours (both runs compute the same dot products of the same inputs at the next
      layer; at every later layer the radius grows by ``|W| d (1 + g) + 2 g S'``). A sample whose
      input did not change keeps its clean outcome exactly;
   e. what is still open (near-ties closer than the radius, possible Inf/NaN or overflow) is
      **recomputed exactly** (:mod:`.exact`): the changed channel is spliced into the cached clean
      input of the next layer, and the rest of the network runs per flip on the naive batches --
      the same calls on the same shapes as the naive loop.

   An element whose dot product does not involve the changed weight with a nonzero input is
   bit-identical to the clean run (same kernel, same shapes, the changed term is an exact zero),
   so samples that never touch the weight keep their clean outcome.

A layer whose suffix holds a module the bounds do not cover (e.g. BatchNorm), or whose chain is not
float32 arithmetic on the CPU (float16/bfloat16 models flipped in FP16/BF16, a GPU: named per
parameter in ``attrs["uncertified"]``), takes the exact path (3c, 3e) for every flip ("packed
exact"), in the model's own dtype and on its device; a parameter of any other module of a Sequential reruns the
network from its module on the cached input ("suffix rerun"). Any other model (residual blocks,
attention, concatenations, recurrent layers: not a Sequential chain), and a parameter a chain layer
does not own directly, takes its ``torch.fx`` graph ("graph suffix", :mod:`.graph`): the clean value
of every node is cached, and a flip recomputes only the nodes that depend on the parameter, with
the naive forward's calls on the naive batches (flips in different output units share one call of
their Conv/Linear/BatchNorm; flips whose flipped layer gives the same output share the rest). A
model fx cannot trace (``attrs["untraced"]`` says why) runs the full forward per flip ("full
forward"), like the naive loop but without its per-flip bookkeeping. Codecs whose check spans
several words (one flip changes several weights) are delegated to the naive loop ("naive loop").
As in the naive census the model is evaluated in eval mode (BatchNorm uses its running statistics)
and handed back in the mode it came in. Finished chunks can be saved to an append-only checkpoint (:mod:`.checkpoint`).

Assumptions (the same the naive loop makes when it trusts one clean run): kernels are deterministic
for given shapes and strides (:func:`bit_census` switches cuDNN autotuning off and asks for deterministic
algorithms while it runs), and each output element of a Linear/Conv2d call is a dot product of
its own inputs and weights (MKL GEMM, oneDNN direct convolution; not Winograd/FFT), so changing one
weight leaves every other element of the call bit for bit as it was. Reduced-precision matmuls
(``torch.set_float32_matmul_precision`` other than "highest") switch the bounds off.

Internal names the tests and the benchmark use (public in their modules, not re-exported):
:func:`~.layers.chain_layers`, :func:`~.clean.run_clean`, :func:`~.screen.screen_bounds`,
:func:`~.exact.exact_packed`, :func:`~.budget.heap_headroom`.
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import ParamSpec, TypeVar, cast

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from ...codecs.base import Codec, Identity
from ...evaluate import Batches, Output, eval_mode, materialize, model_device, score
from ...faults import BitErrorRate
from ...formats import BitSelection, Format, resolve_bits
from ...inject import Store
from ...metrics import METRICS, Metric, MetricSpec, frame_attrs, resolve_metric
from ...params import ParamSelection, select_params
from ..runner import Item
from ..runner import run as run_items
from .budget import heap_headroom
from .checkpoint import CensusSaved, CheckpointFile, NewChunks, fingerprint
from .chunks import NAIVE_LOOP, STATS, CensusChunks, Param
from .clean import count_correct
from .naive import naive_bit_census
from .plan import census_format, flipped_values, weight_plan

__all__ = ["bit_census", "count_above"]

P = ParamSpec("P")
R = TypeVar("R")


@contextmanager
def deterministic_cudnn() -> Iterator[None]:
    """cuDNN without autotuning (``benchmark=False``) and with deterministic algorithms inside the block,
    the user's flags restored on exit (also on an exception): with ``benchmark=True`` a packed call of
    another shape may pick another algorithm than the naive forward, and the census's exactness assumes
    the same kernels. The other cuDNN flags (enabled, TF32, precision) are left as they are (None)."""
    with torch.backends.cudnn.flags(
        enabled=torch.backends.cudnn.enabled,
        benchmark=False,
        benchmark_limit=None,
        deterministic=True,
        allow_tf32=None,
        fp32_precision=None,
        depthwise_kernel=None,
    ):
        yield


def _with_deterministic_cudnn(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run inside :func:`deterministic_cudnn`."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with deterministic_cudnn():
            return fn(*args, **kwargs)

    return wrapper


def _check_batch_flips(batch_flips: object) -> int:
    if isinstance(batch_flips, bool) or not isinstance(batch_flips, int) or batch_flips < 1:
        raise ValueError(f"batch_flips: {batch_flips!r}; allowed ints >= 1")
    return batch_flips


@_with_deterministic_cudnn
def bit_census(
    model: nn.Module,
    data: object,
    fmt: Format | None = None,
    bits: BitSelection = "all",
    params: ParamSelection = None,
    n_weights: int | None = None,
    seed: int = 0,
    checkpoint: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    batch_flips: int = 2048,
    codec: Codec | None = None,
    on_chunk: Callable[[int], None] | None = None,
    metric: MetricSpec = "accuracy",
    output: Output = None,
    executor: object = None,
) -> pd.DataFrame:
    """Single-bit census of Pranto et al. 2025 (RAD of every single-bit flip), equal to
    :func:`bitlab.campaigns.census.naive_bit_census` row for row and float for float, but fast.

    Returns one row per (param, index, bit): ``value``, ``flipped``, ``accuracy`` and ``rad`` =
    (acc_clean - acc_flipped) / acc_clean; ``attrs["clean_accuracy"]``; ``attrs["stats"]``, the
    flips computed by this call: ``certified`` by bounds (``rechecked`` of them from the next
    layer's exact input), ``recomputed`` exactly, and ``from_checkpoint``; ``attrs["paths"]``, the
    path each parameter took ("bounds", "packed exact", "suffix rerun", "graph suffix", "full forward"
    or "naive loop", see the module docstring); ``attrs["uncertified"]``, for the parameters of a chain the
    bounds cannot cover because of their dtype or device (float16/bfloat16 arithmetic, a GPU), why,
    by name: their flips are recomputed exactly, in the model's own dtype and on its device;
    ``attrs["untraced"]``, why a model that is not a chain could not take its traced graph ("" when
    it did or did not need to); ``attrs["seconds"]``, the time of the set-up (clean run, plan) and, on
    the graph path, of the flipped layers' calls and the suffixes (chunks computed in this process).
    ``fmt``: the format each weight is flipped in; None (the default) is the parameters' own dtype
    (FP32, FP16 or BF16, :func:`~.plan.census_format`). ``n_weights`` samples that many weights per
    parameter (same draw as the naive census for the same ``seed``).
    ``checkpoint``: a file where finished chunks are saved; a rerun with the same arguments skips
    them (an interrupted census resumed gives the same frame as one run straight through).
    ``batch_flips``: flips evaluated together (memory vs. speed). ``on_chunk(n_done)`` is called
    after each chunk is saved. See the module docstring for how exactness is guaranteed.
    ``executor`` computes the chunks elsewhere: a ``concurrent.futures`` pool or a
    ``dask.distributed.Client`` (:mod:`bitlab.campaigns.runner`); the frame is the same.

    The census runs with ``torch.backends.cudnn.benchmark=False`` and ``deterministic=True``
    (:func:`deterministic_cudnn`; the caller's flags are restored on exit): its exactness against the naive
    loop assumes deterministic kernels, and cuDNN autotuning may pick other algorithms for packed calls.
    Chunks computed by an ``executor`` in other processes run under those processes' own flags.

    ``metric`` and ``output`` as in :func:`bitlab.campaigns.ber_sweep`. The bounds certify accuracy
    only: another metric, an ``output=`` picker or batches whose inputs are not one tensor are
    recomputed exactly by the naive loop, and ``attrs["note"]`` says so (the frame is the naive one).
    """
    batch_flips = _check_batch_flips(batch_flips)
    codec = Identity() if codec is None else codec
    m = resolve_metric(metric)
    chosen = select_params(model, params)
    fmt = census_format(chosen, fmt)
    given = materialize(data, device=model_device(model))
    why = _no_shortcut(codec, m, output, given)
    if why:
        return _naive(
            model,
            given,
            fmt,
            bits,
            params,
            n_weights,
            seed,
            codec,
            progress,
            m,
            output,
            why,
            checkpoint,
            on_chunk,
            executor,
        )
    batches = cast(list[tuple[Tensor, Tensor]], given)  # one tensor of inputs per batch, checked above
    score(model, batches[:1], m, output)  # logits and labels as accuracy needs them, or the metric's clear error
    positions = resolve_bits(bits, codec.width(fmt), codec.fields(fmt))
    plan = weight_plan(chosen, n_weights, seed)
    ckpt = None
    if checkpoint is not None:  # the fingerprint hashes every parameter, buffer and sample: only when needed
        ckpt = CheckpointFile(checkpoint, fingerprint(model, chosen, plan, positions, fmt, codec, batches))
    values = {name: p.detach().reshape(-1)[idx].clone() for (name, p), (_, idx) in zip(chosen, plan)}
    flipped = {name: flipped_values(p, idx, positions, fmt, codec) for (name, p), (_, idx) in zip(chosen, plan)}
    heap_headroom()
    store = Store(model, fmt, codec, params)
    with eval_mode(model), store.corrupted(BitErrorRate(0.0)), torch.no_grad():
        # planned here, on the caller's model (the clean run and each parameter's path); a copy that
        # runs elsewhere plans again from its own copy of the model, the same way
        work = CensusChunks(model, batches, plan, flipped, len(positions), batch_flips)
        t0 = time.perf_counter()
        work.prepare()
        seconds = {"set-up": time.perf_counter() - t0}
        clean_correct = count_correct(model, batches) if work.clean is None else int(work.clean.ok.sum())
        jobs = [work.jobs[name] for name, _ in plan]
        chunks = [cid for job in jobs for cid in job.chunks()]
        items: list[Item] = list(chunks)
        sizes: dict[Item, int] = {cid: len(work.jobs[cid[0]].order[cid[1] : cid[1] + cid[2]]) for cid in chunks}
        counted = NewChunks(sizes, on_chunk, STATS)
        rows, _ = run_items(
            work,
            [items],
            executor,
            None if ckpt is None else CensusSaved(ckpt, sizes),
            progress,
            "bit census",
            size=sizes.__getitem__,
            after=counted,
        )
    stats = {**counted.stats, "from_checkpoint": counted.reused}
    done = {cid: row["accuracies"] for cid, row in zip(items, rows)}
    acc_clean = clean_correct / work.n_total
    df = _frame(jobs, plan, positions, values, flipped, done, acc_clean)
    df.attrs["stats"] = dict(stats)
    df.attrs["paths"] = {job.name: job.path for job in jobs}
    df.attrs["uncertified"] = dict(work.uncertified)
    df.attrs["untraced"] = work.untraced
    if work.graph is not None:  # the graph path's time by stage, for the chunks computed in this process
        seconds.update(work.graph.seconds)
    df.attrs["seconds"] = seconds
    return df


def _no_shortcut(codec: Codec, metric: Metric, output: Output, batches: Batches) -> str:
    """Why the census must take the naive loop ("" when the fast paths apply)."""
    if not getattr(codec, "elementwise", True):
        return f"codec {codec.name}: one flip may change several weights"
    if metric is not METRICS["accuracy"]:
        return f"metric {metric.name!r}: the bounds certify accuracy only"
    if output is not None:
        return "output=: the bounds need a model that returns its logits"
    if not all(isinstance(x, Tensor) for x, _ in batches):
        return "the batches' inputs are not one tensor"
    return ""


def _naive(
    model: nn.Module,
    data: object,
    fmt: Format,
    bits: BitSelection,
    params: ParamSelection,
    n_weights: int | None,
    seed: int,
    codec: Codec,
    progress: bool | None,
    metric: Metric,
    output: Output,
    why: str,
    checkpoint: str | os.PathLike[str] | None,
    on_chunk: Callable[[int], None] | None,
    executor: object,
) -> pd.DataFrame:
    """The naive loop, with the fast census's statistics and the reason in ``attrs["note"]``."""
    df = naive_bit_census(
        model,
        data,
        fmt=fmt,
        bits=bits,
        params=params,
        n_weights=n_weights,
        seed=seed,
        codec=codec,
        progress=progress,
        metric=metric,
        output=output,
        checkpoint=checkpoint,
        on_chunk=on_chunk,
        executor=executor,
    )
    df.attrs["note"] = f"recomputed exactly by the naive loop ({why})"
    reused = int(df.attrs.pop("from_checkpoint", 0))
    df.attrs["stats"] = dict(certified=0, rechecked=0, recomputed=len(df) - reused, from_checkpoint=reused)
    df.attrs["paths"] = {name: NAIVE_LOOP for name in dict.fromkeys(df["param"])} if len(df) else {}
    df.attrs["uncertified"] = {}
    return df


def _frame(
    jobs: list[Param],
    plan: list[tuple[str, Tensor]],
    positions: Sequence[int],
    values: dict[str, Tensor],
    flipped: dict[str, Tensor],
    done: dict[Item, list[float]],
    acc_clean: float,
) -> pd.DataFrame:
    """The naive census's rows, built column by column (same values and dtypes)."""
    nb = len(positions)
    frames = []
    for job, (name, idx) in zip(jobs, plan):
        accs = torch.empty(len(idx) * nb, dtype=torch.float64)
        for s in range(0, len(idx) * nb, job.step):
            accs[job.order[s : s + job.step]] = torch.tensor(done[(name, s, job.step)], dtype=torch.float64)
        acc = accs.numpy()
        rad = (acc_clean - acc) / acc_clean if acc_clean > 0 else np.full(len(acc), np.nan)
        frames.append(
            pd.DataFrame(
                {
                    "param": [name] * len(acc),
                    "index": idx.repeat_interleave(nb).numpy(),
                    "bit": np.tile(np.asarray(positions, dtype=np.int64), len(idx)),
                    "value": values[name].double().cpu().repeat_interleave(nb).numpy(),
                    "flipped": flipped[name].double().cpu().reshape(-1).numpy(),
                    "accuracy": acc,
                    "rad": rad,
                }
            )
        )
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    df.attrs.update(frame_attrs(METRICS["accuracy"], acc_clean))
    return df


def count_above(
    census: pd.DataFrame, thresholds: Sequence[float] = (0.1, 0.9), by: str | None = "param"
) -> pd.DataFrame:
    """Number of single-bit flips whose RAD exceeds each threshold (Pranto et al. 2025 report the
    bits with RAD > 10% and in 90-100%), per parameter (``by="param"``), per bit position
    (``by="bit"``) or in total (``by=None``). Columns: the group, ``flips`` and ``rad>t`` for each t."""
    if by not in ("param", "bit", None):
        raise ValueError(f"by: {by!r}; allowed 'param', 'bit' or None")
    missing = [c for c in ("rad",) + (() if by is None else (by,)) if c not in census.columns]
    if missing:
        raise ValueError(f"census: columns {missing} are missing; expected a bit_census frame")
    ts = [float(t) for t in thresholds]
    if not ts:
        raise ValueError("thresholds: empty; give at least one RAD threshold")
    flags = pd.DataFrame({f"rad>{t:g}": (census["rad"] > t).astype("int64") for t in ts})
    flags.insert(0, "flips", 1)
    if by is None:
        return flags.sum().to_frame().T.reset_index(drop=True)
    flags.insert(0, by, census[by].to_numpy())
    return flags.groupby(by, sort=(by == "bit")).sum().reset_index()
