"""Benchmark: sparse bit-error injection against a dense per-bit-mask baseline.

BER 1e-6 over 10M FP32 weights (3.2e8 bits, ~320 flips). bitlab draws the flip count from a
binomial and only the positions that flip; the baseline draws a Bernoulli mask over every bit,
packs it into 32-bit XOR words and applies them (the textbook approach). Both are timed in the
same run; the target is a ratio >= 1000x.

    python benchmarks/injection.py [--weights 10000000] [--ber 1e-6] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import bitlab as bl


def dense_mask_inject(w: torch.Tensor, ber: float, g: torch.Generator) -> None:
    """Baseline: a Bernoulli draw per stored bit, packed into XOR masks, applied to every word."""
    n = w.numel()
    words = w.view(torch.int32).reshape(-1)
    mask = torch.zeros(n, dtype=torch.int32)
    for b in range(32):  # one bit plane at a time keeps memory at 4 bytes per weight
        plane = (torch.rand(n, generator=g) < ber).to(torch.int32)
        mask |= plane << b if b < 31 else plane * torch.iinfo(torch.int32).min
    words ^= mask


def time_it(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", type=int, default=10_000_000)
    ap.add_argument("--ber", type=float, default=1e-6)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = torch.nn.Linear(args.weights // 1000, 1000, bias=False)
    g = torch.Generator().manual_seed(0)
    fault = bl.BitErrorRate(args.ber)
    flips = []

    def sparse() -> None:
        with bl.corrupted(model, fault, generator=g) as r:
            flips.append(r.flips)

    w_copy = model.weight.detach().clone()
    sparse()  # warm-up
    t_sparse = time_it(sparse, args.repeats * 20)
    t_dense = time_it(lambda: dense_mask_inject(w_copy, args.ber, g), args.repeats)
    ratio = t_dense / t_sparse
    print(f"weights: {model.weight.numel():,}  BER: {args.ber:g}  mean flips: {statistics.mean(flips):.0f}")
    print(f"bitlab sparse injection (inject + restore): {t_sparse * 1e3:9.3f} ms")
    print(f"dense per-bit-mask baseline (inject only):  {t_dense * 1e3:9.3f} ms")
    print(f"speed-up: {ratio:,.0f}x  (target >= 1000x: {'PASS' if ratio >= 1000 else 'FAIL'})")


if __name__ == "__main__":
    main()
