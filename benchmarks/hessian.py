"""Benchmark: Hessian-vector products (HVPs) each estimator needs, on the digits MLP 64-32-10.

The model (2410 parameters) is trained for a few epochs; the loss is the mean cross-entropy over the
training split (one batch). The reference is the dense Hessian computed independently, forward-over-
reverse (``torch.func.jvp`` of ``torch.func.grad``, vmapped over the unit vectors), and ``eigvalsh``.

(a) Top eigenvalue: Lanczos (full reorthogonalization) vs power iteration. For each start-vector seed,
    the count is the number of HVPs after which the estimate stays within 1e-3 relative of the exact
    lambda_max (read from ``top_eigenvalues``' callback, with the stopping rule off); the median over
    seeds is compared. Target: Lanczos / power <= 1/3. The counts of the default stopping rules
    (tol=1e-3) and the errors they leave are printed too.
(b) Trace: Hutch++ and XTrace (Epperly, Tropp & Webber 2024; the default of ``hessian_trace``) vs
    Hutchinson. On a geometric grid of budgets (factor 1.15), the relative error
    |est - Tr(H)| / Tr(H) over several seeds; the count is the smallest budget from which the median
    error is below 1% there and at every grid budget up to 1.5x it (Hutchinson budgets are prefixes of
    one long run of --max-hutch probes per seed; each Hutch++ budget is a fresh run). Target:
    Hutch++ / Hutchinson <= 1/4; XTrace / Hutchinson <= 0.1, printed as ``trace HVP ratio: X``.
(c) Wall time of 50 products: ``hessian_trace`` (XTrace, its small linear algebra included) against a plain
    double-backward loop over the same batch, interleaved medians of 15; target <= 1.0 (``HVP time ratio:
    X``). The operator's products without the estimator's linear algebra are printed beside it.

    python benchmarks/hessian.py [--epochs 10] [--seeds 11] [--eig-seeds 5] [--max-hutch 2000]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp, vmap

import bitlab as bl
from bitlab import curvature as bh
from bitlab.curvature.products import HessianOperator

LOSS = F.cross_entropy


def dense_hessian(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Exact Hessian by forward-over-reverse autodiff, independent of bitlab's double backprop."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def f(flat: torch.Tensor) -> torch.Tensor:
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            ps[n] = flat[i : i + s.numel()].reshape(s)
            i += s.numel()
        return LOSS(functional_call(model, ps, (x,)), y)

    eye = torch.eye(flat0.numel(), dtype=flat0.dtype)
    return vmap(lambda v: jvp(grad(f), (flat0,), (v,))[1], chunk_size=256)(eye)


def hvps_to_stay_within(history: list[tuple[int, float]], exact: float, rel: float) -> int | None:
    """HVP count after which every later estimate is within ``rel`` of ``exact`` (None if never)."""
    need = None
    for n, est in history:
        if abs(est - exact) <= rel * abs(exact):
            need = n if need is None else need
        else:
            need = None
    return need


def record(hist: list[tuple[int, float]], last: bool) -> Callable[[int, torch.Tensor], None]:
    """A ``top_eigenvalues`` callback appending ``(n_hvp, estimate)`` to ``hist``: the last estimate
    (power iteration: the eigenvalue being refined) or the first (Lanczos: the top Ritz value)."""
    return lambda n, est: hist.append((n, float(est[-1] if last else est[0])))


def eigen_benchmark(model, data, lam_max: float, seeds: int) -> tuple[float, float]:
    print(f"\n(a) top eigenvalue within 1e-3 relative of exact lambda_max = {lam_max:.6f}")
    print(
        f"{'seed':>4} {'lanczos':>8} {'power':>8}   | default tol=1e-3: "
        f"{'lanczos':>8} {'err':>9} {'power':>6} {'err':>9}"
    )
    counts: dict[str, list[float]] = {"lanczos": [], "power": []}
    for s in range(seeds):
        row = []
        for method, cap in (("lanczos", 100), ("power", 500)):
            hist: list[tuple[int, float]] = []
            bh.top_eigenvalues(
                model,
                LOSS,
                data,
                k=1,
                method=method,
                tol=0.0,
                max_iter=cap,
                generator=torch.Generator().manual_seed(s),
                callback=record(hist, last=method == "power"),
            )
            need = hvps_to_stay_within(hist, lam_max, 1e-3)
            counts[method].append(float("inf") if need is None else need)
            row.append(need)
        dflt = []
        for method in ("lanczos", "power"):
            vals, _, n = bh.top_eigenvalues(
                model, LOSS, data, k=1, method=method, generator=torch.Generator().manual_seed(s)
            )
            dflt += [n, abs(float(vals[0]) - lam_max) / lam_max]
        print(
            f"{s:>4} {row[0]!s:>8} {row[1]!s:>8}   |                   {dflt[0]:>8} {dflt[1]:>9.1e} "
            f"{dflt[2]:>6} {dflt[3]:>9.1e}"
        )
    return statistics.median(counts["lanczos"]), statistics.median(counts["power"])


def grid_budgets(lo: int, hi: int, factor: float = 1.15) -> list[int]:
    out, b = [], float(lo)
    while b <= hi:
        m = 3 * max(1, round(b / 3))
        if not out or m > out[-1]:
            out.append(m)
        b *= factor
    return out


def trace_benchmark(model, data, exact: float, seeds: int, max_hutch: int) -> tuple[float, float, float]:
    print(f"\n(b) trace within 1% (median over {seeds} seeds) of exact Tr(H) = {exact:.4f}")
    grid = grid_budgets(6, max_hutch)
    rel_h = []
    for s in range(seeds):
        est = bh.hutchinson_trace(model, LOSS, data, n_probes=max_hutch, generator=torch.Generator().manual_seed(s))
        prefix = est.samples.cumsum(0) / torch.arange(1, max_hutch + 1)
        rel_h.append([abs(float(prefix[m - 1]) - exact) / exact for m in grid])
    need: dict[str, float] = {}
    caches: dict[str, dict[int, float]] = {"hutch++": {}, "xtrace": {}}

    def median_of(name: str) -> Callable[[int], float]:
        cache = caches[name]

        def median(i: int) -> float:
            if i not in cache:
                cache[i] = statistics.median(
                    abs(
                        bh.hessian_trace(
                            model,
                            LOSS,
                            data,
                            n_hvp=grid[i],
                            method=name,
                            generator=torch.Generator().manual_seed(1000 + s),
                        ).mean
                        - exact
                    )
                    / exact
                    for s in range(seeds)
                )
            return cache[i]

        return median

    med_h = [statistics.median(r[i] for r in rel_h) for i in range(len(grid))]
    meds = {"hutchinson": med_h.__getitem__, "hutch++": median_of("hutch++"), "xtrace": median_of("xtrace")}
    # the same rule for all: median below 1% at this budget and at every grid budget up to 1.5x it
    for name, med in meds.items():
        need[name] = float("inf")
        for i in range(len(grid)):
            later = [j for j in range(i, len(grid)) if grid[j] <= 1.5 * grid[i]]
            if grid[later[-1]] * 1.15 > 1.5 * grid[i] and all(med(j) < 0.01 for j in later):
                need[name] = grid[i]
                break
    for name, med in meds.items():
        m = need[name]
        if m == float("inf"):
            print(f"  {name:>10}: median relative error not below 1% (up to 1.5x) within {grid[-1]} HVPs")
        else:
            print(f"  {name:>10}: median relative error {med(grid.index(m)):.4f} at {m} HVPs, below 1% up to 1.5x that")
    return need["hutch++"], need["hutchinson"], need["xtrace"]


def hvp_time(model, data, n: int, repeats: int = 15) -> tuple[float, float, float]:
    """Median wall times, interleaved, of: the default trace estimate (``hessian_trace``, XTrace) with ``n``
    products; the operator's products alone (``HessianOperator`` built on the batch, then ``matmat`` of ``n``
    Rademacher columns: the estimator without its linear algebra); and a plain loop that builds the gradient
    graph once and takes ``n`` double-backward products with ``torch.autograd.grad(..., retain_graph=True)``
    on the same batch (the baseline)."""
    x, y = data
    params = list(model.parameters())

    def plain() -> None:
        g = torch.Generator().manual_seed(0)
        grads = torch.autograd.grad(LOSS(model(x), y), params, create_graph=True)
        for _ in range(n):
            vs = [torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1 for p in params]
            torch.autograd.grad(grads, params, grad_outputs=vs, retain_graph=True)

    def ours() -> None:
        bh.hessian_trace(model, LOSS, data, n_hvp=n, generator=torch.Generator().manual_seed(0))

    def products() -> None:
        op = HessianOperator(model, LOSS, data)
        op.matmat(torch.randint(0, 2, (op.n, n), generator=torch.Generator().manual_seed(0)).double() * 2 - 1)

    fns = {"ours": ours, "products": products, "plain": plain}
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):  # interleaved
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return tuple(statistics.median(times[name]) for name in fns)  # type: ignore[return-value]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, default=11)
    ap.add_argument("--eig-seeds", type=int, default=5)
    ap.add_argument("--max-hutch", type=int, default=2000)
    args = ap.parse_args()
    torch.set_num_threads(1)  # small ops: threads only contend
    t0 = time.perf_counter()

    split = bl.data.digits(seed=0)
    torch.manual_seed(0)
    model = bl.models.mlp(64, (32,), 10)
    bl.train.fit(model, split.train, epochs=args.epochs, progress=False)
    model = model.double().eval()
    x, y = split.train.tensors
    data = (x.double(), y)
    H = dense_hessian(model, *data)
    ev = torch.linalg.eigvalsh(H)
    n = H.shape[0]
    print(
        f"digits MLP 64-32-10, {n} parameters, {args.epochs} epochs, {len(y)} training examples; "
        f"dense Hessian in {time.perf_counter() - t0:.1f}s"
    )
    print(
        f"eigenvalues: top {[round(float(v), 4) for v in ev.flip(0)[:4]]}, bottom {float(ev[0]):.4f}; "
        f"Tr(H) = {float(H.trace()):.4f}"
    )

    lan, pow_ = eigen_benchmark(model, data, float(ev[-1]), args.eig_seeds)
    ratio_a = lan / pow_ if pow_ != float("inf") else float("nan")
    pp, hu, xt = trace_benchmark(model, data, float(H.trace()), args.seeds, args.max_hutch)
    ratio_b = pp / hu if hu != float("inf") else float("nan")
    ratio_x = xt / hu if hu != float("inf") else float("nan")

    t_ours, t_prod, t_plain = hvp_time(model, data, 50)
    print(
        f"\n(c) 50 products: hessian_trace (XTrace) {t_ours * 1e3:.1f} ms, the operator's products alone "
        f"{t_prod * 1e3:.1f} ms ({t_prod / t_plain:.3f} of the plain loop), plain loop {t_plain * 1e3:.1f} ms"
    )
    print("\nsummary")
    print(
        f"(a) median HVPs to lambda_max within 1e-3: Lanczos {lan:g}, power {pow_:g}; ratio {ratio_a:.3f} "
        f"(target <= 1/3): {'PASS' if ratio_a <= 1 / 3 else 'FAIL'}"
    )
    print(
        f"(b) HVPs to median trace error < 1%: Hutch++ {pp:g}, Hutchinson {hu:g}; ratio {ratio_b:.3f} "
        f"(target <= 1/4): {'PASS' if ratio_b <= 1 / 4 else 'FAIL'}"
    )
    print(
        f"(b) XTrace (the default of bl.hessian.hessian_trace) {xt:g} HVPs against Hutchinson's {hu:g} "
        f"(target <= 0.1): {'PASS' if ratio_x <= 0.1 else 'FAIL'}"
    )
    print(f"(c) wall time per HVP, ours / plain double-backward loop (target <= 1.0): {t_ours / t_plain:.3f}")
    print(f"HVP time ratio: {t_ours / t_plain:.3f}")
    print(f"trace HVP ratio: {ratio_x:.3f}")
    print(f"total {time.perf_counter() - t0:.1f}s")


if __name__ == "__main__":
    main()
