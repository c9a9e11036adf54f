"""Benchmark: bitlab's exact single-bit census against the naive loop (flip, full forward, restore).

Digits small CNN trained a few epochs, the 8 exponent bits of every weight and bias (Pranto et al.
2025 flip the exponent bits on CIFAR-10). The naive loop over all ~15k flips would take too long
here, so it is timed on a random sample of weights and its cost is extrapolated per flip; the two
censuses must agree exactly on that sample, and the fast census runs on every weight. The counts of
flips with RAD > 10% and > 90% on the sample must be identical. Target: >= 30x.

Run: OMP_NUM_THREADS=1 .venv/bin/python benchmarks/census.py
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("CI", "1")

import pandas as pd
import torch

from bitlab.campaigns import naive_bit_census
from bitlab.campaigns.census import bit_census, count_above
from bitlab.campaigns.census.budget import heap_headroom
from bitlab.training import fit
from bitlab.zoo.data import digits
from bitlab.zoo.models import small_cnn

TARGET = 30.0
SAMPLE_WEIGHTS = 12  # per parameter tensor, for the naive loop
REPEATS = 3  # both timings take the best of REPEATS runs (the machine is shared and noisy)


def best_of(fn):
    times, out = [], None
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    torch.set_num_threads(1)
    split = digits(seed=0)
    torch.manual_seed(0)
    model = small_cnn()
    fit(model, split.train, epochs=10, seed=0, progress=False)
    data = split.test
    n_params = sum(p.numel() for p in model.parameters())
    print(f"small CNN, {n_params} weights, {len(data)} test samples, exponent bits (8 per weight)")

    heap_headroom()  # the allocator state bit_census sets up: both loops are timed with it
    t_naive, naive = best_of(
        lambda: naive_bit_census(model, data, bits="exponent", n_weights=SAMPLE_WEIGHTS, seed=1, progress=False)
    )
    fast_s = bit_census(model, data, bits="exponent", n_weights=SAMPLE_WEIGHTS, seed=1, progress=False)
    pd.testing.assert_frame_equal(naive, fast_s, check_exact=True)
    assert count_above(naive, by=None).equals(count_above(fast_s, by=None))
    per_flip = t_naive / len(naive)
    print(
        f"naive loop (best of {REPEATS}): {len(naive)} sampled flips in {t_naive:.2f} s = "
        f"{per_flip * 1e3:.3f} ms/flip; "
        f"bit_census on the same sample: identical frame (counts {count_above(naive, by=None).iloc[0].to_dict()})"
    )

    t_fast, fast = best_of(lambda: bit_census(model, data, bits="exponent", progress=False))
    stats = fast.attrs["stats"]
    t_naive_all = per_flip * len(fast)
    ratio = t_naive_all / t_fast
    counts = count_above(fast, by=None).iloc[0].to_dict()
    print(
        f"bit_census (best of {REPEATS}), all {len(fast)} flips: {t_fast:.2f} s "
        f"({stats['certified']} certified by bounds, "
        f"{stats['rechecked']} of them from the next layer's exact input; {stats['recomputed']} recomputed exactly); "
        f"RAD counts {counts}"
    )
    print(f"stats: {stats}; paths: {fast.attrs['paths']}")
    print(f"naive loop, all flips (extrapolated from the sample): {t_naive_all:.1f} s")
    print(f"speed-up: {ratio:.1f}x (target >= {TARGET:.0f}x) -> {'PASS' if ratio >= TARGET else 'FAIL'}")


if __name__ == "__main__":
    main()
