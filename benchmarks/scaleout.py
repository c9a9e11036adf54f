"""Benchmark: BER sweeps in process (one torch thread) against a Dask LocalCluster with two
single-threaded worker processes, and the cost of one trial against a plain forward pass.

Three numbers, each against a baseline measured in the same run:

* ``dask ratio``: trials per second of a sweep on the cluster over trials per second in process
  (target on a 2-core machine: >= 1.7), medians of ``--sweeps`` runs of each, interleaved (a single
  sweep varies by 20-30% from run to run on this shared machine). Two sweeps: ResNet-20 on digits
  (a 25-ms trial, the shape of a paper-scale campaign, where the trials' compute dominates), printed
  as ``dask ratio: X``; and the small CNN (a 0.7-ms trial: 1,200 trials take under a second, so
  Dask's fixed cost of a sweep, about 20 ms before the first task and 10 ms after the last, and the
  other Dask processes sharing the two cores show), printed as ``dask ratio (small_cnn): X``. The
  cluster is started before the clock starts; scattering the model and data is inside it. The
  cluster comes from :func:`bitlab.campaigns.runner.local_cluster` (Dask's default workers trim
  malloc so aggressively that a torch trial costs 1.6x as much; see the runner's notes).
* the per-task overhead of the Dask path: a round trip of no-op tasks, and what a sweep on the
  cluster costs beyond its share of the serial time (``2 * t_dask - t_serial``, per task);
* ``trial cost ratio``: one in-process trial of the small CNN (draw the faults, write them into the
  stored weights, evaluate, restore) over one plain forward pass over the same test tensors
  (``model(x)`` under ``torch.no_grad``); the limit is 1.0, the target <= 1.1. Timed interleaved,
  medians. Also printed: the same ratio for a minimal trial written out here (:func:`minimal_trial`), a
  forward over the corrupted weights of a trial (held inside the store's context: it costs what a clean
  forward costs, so the gap is the trial's own work), and that work by part: drawing the faults, writing
  and restoring them, scoring.

    python benchmarks/scaleout.py [--trials 200] [--resnet-trials 30] [--rates 6] [--sweeps 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def _noop(i: int) -> int:
    return i


def minimal_trial(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, ber: float, seed: int) -> float:
    """The least a BER trial must do, written out for FP32 weights: draw the flip count and distinct
    positions, XOR them into the weights' bits, forward, count the correct samples, restore. The floor
    the library's trial is measured against (its faults are drawn differently, the work is the same)."""
    g = torch.Generator().manual_seed(seed)
    words = [p.data.view(torch.int32).reshape(-1) for p in model.parameters()]
    sizes = torch.tensor([0] + [w.numel() for w in words]).cumsum(0)
    total = int(sizes[-1]) * 32
    k = int(torch.binomial(torch.tensor(float(total)), torch.tensor(ber), generator=g))
    pos = torch.unique(torch.randint(0, total, (k + k // 4 + 2,), generator=g))[:k]
    word, bit = pos // 32, (pos % 32).to(torch.int32)
    owner = torch.searchsorted(sizes, word, right=True) - 1
    saved = []
    for i in owner.unique().tolist():
        hit = owner == i
        idx = word[hit] - sizes[i]
        old = words[i][idx].clone()
        saved.append((words[i], idx, old))
        words[i][idx] = old ^ (torch.ones_like(old) << bit[hit])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == y).sum())
    for w, idx, old in saved:
        w[idx] = old
    return correct / len(y)


def trial_parts(work, model: torch.nn.Module, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Median seconds of the parts of one BER trial of ``work`` (a :func:`~bitlab.campaigns.sweep.ber_trials`),
    each timed on its own: the store's context entered and left (the trial's generator, drawing, writing
    and restoring the flips, nothing evaluated), the score on the clean model (the evaluation with its
    metric), and a plain forward over the trial's corrupted weights."""
    from bitlab.campaigns.seeds import trial_generator
    from bitlab.evaluate import score

    store, fault = work.store(""), work.faults[1e-4]
    times: dict[str, list[float]] = {"inject + restore": [], "score": [], "corrupted forward": []}
    for t in range(repeats):
        t1 = time.perf_counter()
        with store.corrupted(fault, generator=trial_generator(0, "ber", 1e-4, t)):
            t2 = time.perf_counter()
            with torch.no_grad():
                model(x)
            t3 = time.perf_counter()
        t4 = time.perf_counter()
        score(model, work.batches, work.metric, work.output)
        t5 = time.perf_counter()
        for k, v in zip(times, ((t2 - t1) + (t4 - t3), t5 - t4, t3 - t2)):
            times[k].append(v)
    return {k: statistics.median(v[10:]) for k, v in times.items()}


def timed_sweeps(
    client, model, data, bers: list[float], trials: int, sweeps: int
) -> tuple[float, float, list[float], bool]:
    """Median seconds of ``sweeps`` BER sweeps in process and on ``client``'s cluster, interleaved (the
    cluster idle during the serial runs), the ratio of each pair, and whether the frames are equal."""
    from bitlab.campaigns import ber_sweep
    from bitlab.formats import FP32

    kw = dict(bers=bers, trials=trials, seed=0, progress=False, fmt=FP32)
    ber_sweep(model, data, **{**kw, "bers": bers[:1], "trials": 2}, executor=client)  # warm the workers
    serial_s, dask_s = [], []
    for _ in range(sweeps):
        t0 = time.perf_counter()
        serial = ber_sweep(model, data, **kw)
        serial_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        on_dask = ber_sweep(model, data, **kw, executor=client)
        dask_s.append(time.perf_counter() - t0)
    same = serial.equals(on_dask)
    if not same:
        print(serial.compare(on_dask).head(10))
    pairs = [a / b for a, b in zip(serial_s, dask_s)]
    return statistics.median(serial_s), statistics.median(dask_s), pairs, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200, help="trials per rate of the small CNN's sweep")
    ap.add_argument("--resnet-trials", type=int, default=30, help="trials per rate of ResNet-20's sweep")
    ap.add_argument("--rates", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=300, help="timings of the trial-cost ratio")
    ap.add_argument("--sweeps", type=int, default=5, help="timed sweeps of each kind (medians)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    from distributed import Client

    from bitlab.campaigns.runner import local_cluster
    from bitlab.campaigns.sweep import ber_trials
    from bitlab.formats import FP32
    from bitlab.metrics import resolve_metric
    from bitlab.zoo.data import digits
    from bitlab.zoo.models import resnet20, small_cnn

    torch.manual_seed(0)
    cnn, resnet = small_cnn().eval(), resnet20().eval()
    x, y = digits().test.tensors
    data = [(x, y)]
    bers = [10.0 ** (-6 + 0.5 * i) for i in range(args.rates)]

    # -- one trial of the small CNN against one plain forward, interleaved ------------------------
    work = ber_trials(cnn, data, [1e-4], FP32, {"": None}, None, 0, None, resolve_metric("accuracy"), None)

    def forward() -> None:
        with torch.no_grad():
            cnn(x)

    t_fwd, t_trial, t_min = [], [], []
    for t in range(args.repeats):
        for fn, out in (
            (forward, t_fwd),
            (lambda t=t: work(("", 1e-4, t)), t_trial),
            (lambda t=t: minimal_trial(cnn, x, y, 1e-4, t), t_min),
        ):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    fwd, trial, floor = (statistics.median(v[10:]) for v in (t_fwd, t_trial, t_min))
    print(f"small_cnn on digits ({len(x)} test images)")
    print(
        f"plain forward: {fwd * 1e3:.3f} ms   one bitlab trial (BER 1e-4): {trial * 1e3:.3f} ms   "
        f"a minimal hand-written trial: {floor * 1e3:.3f} ms (floor ratio {floor / fwd:.2f})"
    )
    parts = trial_parts(work, cnn, x, args.repeats)
    print(
        "the trial by part: "
        + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in parts.items())
        + f" (forward over the trial's corrupted weights / clean forward: {parts['corrupted forward'] / fwd:.2f})"
    )

    # -- sweeps in process and on the cluster: the small CNN (0.7-ms trials, where Dask's fixed cost of a
    # sweep shows) and ResNet-20 (25-ms trials, a paper-scale trial's shape) ------------------------
    ratios = {}
    with local_cluster(2, 1) as cluster, Client(cluster) as client:
        client.run(torch.set_num_threads, 1)
        for name, net, trials in (("small_cnn", cnn, args.trials), ("resnet20", resnet, args.resnet_trials)):
            n = trials * len(bers)
            t_serial, t_dask, pairs, same = timed_sweeps(client, net, data, bers, trials, args.sweeps)
            print(f"{name}: {len(bers)} rates x {trials} trials = {n} trials")
            print(f"  in process: {n / t_serial:.1f} trials/s ({t_serial:.2f} s, median of {args.sweeps})")
            print(
                f"  dask, 2 workers x 1 thread: {n / t_dask:.1f} trials/s ({t_dask:.2f} s, median of {args.sweeps}); "
                f"frames equal: {same}"
            )
            print(f"  ratio of each interleaved pair: {min(pairs):.2f} to {max(pairs):.2f}")
            chunks = 4 * 2  # the runner's default: 4 chunks per worker (one stage: no stop_at)
            print(
                f"  sweep beyond its serial share: {(2 * t_dask - t_serial) / chunks * 1e3:.1f} ms per task "
                f"({chunks} tasks)"
            )
            ratios[name] = t_serial / t_dask
        tasks = 200
        t0 = time.perf_counter()
        client.gather(client.map(_noop, range(tasks), pure=False))
        t_noop = (time.perf_counter() - t0) / tasks
    print(f"dask per-task overhead: no-op round trip {t_noop * 1e3:.2f} ms")
    print(f"trial cost ratio: {trial / fwd:.2f}")
    print(f"dask ratio (small_cnn): {ratios['small_cnn']:.2f}")
    print(f"dask ratio: {ratios['resnet20']:.2f}")


if __name__ == "__main__":
    main()
