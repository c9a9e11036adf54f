"""Benchmark: one SAM step against one SGD step on the same model and batch.

SAM (Foret et al. 2021) needs two forward/backward passes per step, so its floor is about 2x an SGD
step; what bitlab adds on top (global gradient norm, saving/restoring the weights, undoing BatchNorm
statistics) should stay small. Both are timed in the same run, interleaved, after a warm-up; medians of
many repeats. Target: SAM / SGD <= 2.1 (PASS/FAIL is printed; the exit code is 0 either way).

    python benchmarks/sam.py [--model resnet20|small_cnn] [--batch 128] [--repeats 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from a checkout
from bitlab.training.optim import SAM, SAR, frozen_bn

TARGET = 2.1


def make_model(name: str) -> nn.Module:
    try:
        from bitlab import models
    except ImportError:  # bitlab.models not available: a tiny inline CNN with BatchNorm
        return nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(32, 10),
        )
    return models.resnet20(in_channels=1) if name == "resnet20" else models.small_cnn()


def stepper(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    def closure() -> torch.Tensor:  # the closure of bitlab.train.fit
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return lambda: opt.step(closure)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["resnet20", "small_cnn"], default="resnet20")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(args.batch, 1, 8, 8, generator=g)  # digits-shaped random data
    y = torch.randint(0, 10, (args.batch,), generator=g)
    base = make_model(args.model).train()
    models = {name: make_model(args.model).train() for name in ("sgd", "sam", "sar")}
    for m in models.values():
        m.load_state_dict(base.state_dict())
    opts = {
        "sgd": torch.optim.SGD(models["sgd"].parameters(), lr=0.01, momentum=0.9),
        "sam": SAM(models["sam"].parameters(), torch.optim.SGD, rho=0.05, model=models["sam"], lr=0.01, momentum=0.9),
        "sar": SAR(
            models["sar"].parameters(),
            torch.optim.SGD,
            rho=0.5,
            fraction=0.01,
            model=models["sar"],
            lr=0.01,
            momentum=0.9,
        ),
    }
    steps = {k: stepper(models[k], opts[k], x, y) for k in opts}
    for _ in range(3):  # warm-up
        for f in steps.values():
            f()
    clocks = {"wall": time.perf_counter, "cpu": time.thread_time}
    times = {(c, k): [] for c in clocks for k in steps}
    for _ in range(args.repeats):  # interleaved, so that machine load hits all alike
        for k, f in steps.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            f()
            times["cpu", k].append(time.thread_time() - c0)
            times["wall", k].append(time.perf_counter() - t0)
    med = {key: statistics.median(v) for key, v in times.items()}
    n = sum(p.numel() for p in base.parameters())
    print(f"model={args.model} ({n} params), batch={args.batch}, repeats={args.repeats}, threads={args.threads}")
    for k in ("sgd", "sam", "sar"):
        print(f"  {k.upper()} step: median wall {med['wall', k] * 1e3:8.2f} ms   cpu {med['cpu', k] * 1e3:8.2f} ms")
    sam = opts["sam"]
    _ = steps["sam"]()  # leaves gradients in place for the bookkeeping-only timing below
    over = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        sam.first_step()
        with frozen_bn(models["sam"]):  # snapshot + restore of the BatchNorm statistics
            pass
        sam._restore()  # second_step without the base SGD update, which the SGD step pays as well
        over.append(time.perf_counter() - t0)
    over_ms = statistics.median(over) * 1e3
    print(
        f"  SAM bookkeeping (perturb + backup + BN snapshot + restore): {over_ms:.2f} ms "
        f"= {over_ms / (med['wall', 'sgd'] * 1e3):.1%} of an SGD step"
    )
    for c in clocks:
        ratio = med[c, "sam"] / med[c, "sgd"]
        print(
            f"SAM / SGD ({c:4s}) = {ratio:.3f}  (SAR / SGD = {med[c, 'sar'] / med[c, 'sgd']:.3f}, not targeted)"
            f"   target <= {TARGET}: {'PASS' if ratio <= TARGET else 'FAIL'}"
        )


if __name__ == "__main__":
    main()
