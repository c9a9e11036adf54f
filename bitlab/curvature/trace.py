"""Stochastic estimates of the Hessian trace: Hutchinson's ``Tr(H) = E[z^T H z]`` with Rademacher ``z``
(Hutchinson 1989), Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1), XTrace (Epperly, Tropp &
Webber 2024, the exchangeable estimator; :func:`hessian_trace` uses it by default), and the differentiable
Hutchinson penalty of Hessian-aware training, ``loss + lambda * Tr(H)`` (Pranto et al. 2025).

The estimators take ``loss_fn(outputs, targets)`` or ``batch_loss(fn)`` and run their forwards under the math
attention kernel (:mod:`.kernels`), so they work on stock Transformer layers. :func:`trace_penalty` gets a
loss already computed: compute it inside ``with bl.hessian.double_backward():`` for a model with attention
(:func:`hessian_regularizer` does so itself)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..evaluate import to_device
from ..params import ParamSelection
from ..validate import check_cpu_generator, check_int
from .kernels import double_backward, explain, is_double_backward_error
from .losses import as_batch_loss
from .probes import rademacher
from .products import LOW_PRECISION, Data, HessianOperator, LossFn, eval_mode, hessian_params

__all__ = [
    "TraceEstimate",
    "hessian_regularizer",
    "hessian_trace",
    "hutchinson_trace",
    "hutchpp_trace",
    "trace_penalty",
    "xtrace",
    "xtrace_estimates",
]


@dataclass(frozen=True)
class TraceEstimate:
    """A stochastic trace estimate: ``mean`` with its standard error ``stderr``, the Hessian-vector products
    spent (``n_hvp``) and the per-probe ``samples`` (``mean == samples.mean()``)."""

    mean: float
    stderr: float
    n_hvp: int
    samples: Tensor

    def __float__(self) -> float:
        return self.mean


def hutchinson_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    n_probes: int | None = None,
    tol: float = 1e-2,
    min_probes: int = 10,
    max_probes: int = 1000,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
) -> TraceEstimate:
    """Hutchinson's estimate ``Tr(H) ~ (1/m) sum_i z_i^T H z_i`` with Rademacher probes ``z_i`` (Hutchinson
    1989; PyHessian). With ``n_probes`` given, exactly that many probes (vmapped in blocks); otherwise
    probes are drawn one at a time until the relative standard error ``stderr / |mean|`` is below ``tol``
    (at least ``min_probes``, at most ``max_probes``). One Hessian-vector product per probe."""
    if n_probes is not None:
        check_int("n_probes", n_probes, 1)
    check_int("min_probes", min_probes, 2)
    check_int("max_probes", max_probes, 1)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    generator = check_cpu_generator("generator", generator)
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, params)
        if n_probes is not None:
            Z = rademacher(op.n, generator, n_probes)
            return _estimate((Z * op.matmat(Z)).sum(0), op.n_hvp)
        samples: list[float] = []
        limit = max_probes
        while len(samples) < limit:
            z = rademacher(op.n, generator)
            samples.append(float(z @ op(z)))
            m = len(samples)
            if m >= min_probes:
                t = torch.tensor(samples, dtype=torch.float64)
                if float(t.std()) / math.sqrt(m) <= tol * abs(float(t.mean())):
                    break
        return _estimate(torch.tensor(samples, dtype=torch.float64), op.n_hvp)


def _estimate(samples: Tensor, n_hvp: int) -> TraceEstimate:
    m = samples.numel()
    stderr = float(samples.std()) / math.sqrt(m) if m > 1 else float("nan")
    return TraceEstimate(float(samples.mean()), stderr, n_hvp, samples)


def hutchpp_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    n_hvp: int = 30,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
) -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1) with a budget of ``n_hvp`` products:
    ``S`` with ``s = n_hvp // 3`` Rademacher columns, ``Q = qr(H S)``; the trace is ``Tr(Q^T H Q)`` (exact on
    the dominant subspace, ``s`` products) plus Hutchinson on ``(I - QQ^T) H (I - QQ^T)`` with the remaining
    ``n_hvp - 2s`` probes. ``samples`` are ``Tr(Q^T H Q) + g_i^T H g_i`` per residual probe ``g_i``, so
    ``stderr`` is the residual part's standard error (NaN with a single residual probe)."""
    check_int("n_hvp", n_hvp, 3)
    generator = check_cpu_generator("generator", generator)
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, params)
        s = min(n_hvp // 3, op.n)
        S = rademacher(op.n, generator, s)
        Q, _ = torch.linalg.qr(op.matmat(S))
        low = float((Q * op.matmat(Q)).sum())
        g = n_hvp - 2 * s
        G = rademacher(op.n, generator, g)
        G = G - Q @ (Q.T @ G)
        return _estimate(low + (G * op.matmat(G)).sum(0), op.n_hvp)


def xtrace_estimates(omega: Tensor, y: Tensor, matmat: Callable[[Tensor], Tensor]) -> Tensor:
    """The ``m`` leave-one-out estimates of XTrace (Epperly, Tropp & Webber 2024, Sec. 2) from probes
    ``omega`` (n, m) and ``y = A omega``; ``matmat`` gives ``A Q`` for the basis ``Q`` of ``y`` (``m`` more
    products). Estimate ``i`` is Hutch++ with every probe but ``i`` spanning the low-rank part and probe ``i``
    as the Hutchinson probe: ``tr(Q_i^T A Q_i) + w_i^T A w_i`` with ``Q_i`` an orthonormal basis of the other
    columns of ``y`` and ``w_i = (I - Q_i Q_i^T) omega_i``. Since ``Q_i = Q U_i`` inside the span of ``y``,
    ``A Q_i = (A Q) U_i`` and ``A omega_i = y_i``: no product is taken twice. Their mean is XTrace."""
    m = omega.shape[1]
    if m < 2:
        raise ValueError(f"omega: {m} probe; XTrace needs at least 2")
    q, r = torch.linalg.qr(y)
    z = matmat(q)
    h = q.T @ z
    d = r.diagonal().abs()
    if bool((d > 1e-10 * float(d.max())).all()):
        # the other columns of r span the complement of s_i = r^-T e_i (orthogonal to every r e_j, j != i), so
        # the leave-one-out projector in the basis q is I - s_i s_i^T (s_i normalized): all m estimates from a
        # few matrix products (the paper's efficient form)
        sv = torch.linalg.solve_triangular(r.T, torch.eye(m, dtype=r.dtype), upper=False)
        sv = sv / torch.linalg.vector_norm(sv, dim=0)
        w = q.T @ omega
        p = w - sv * (sv * w).sum(0)  # column i: (I - s_i s_i^T) q^T omega_i
        low = torch.trace(h) - (sv * (h @ sv)).sum(0)
        # column i: w_i^T A w_i with w_i = omega_i - q p_i and A w_i = y_i - z p_i (fused products and dots)
        return low + torch.linalg.vecdot(torch.addmm(omega, q, p, alpha=-1), torch.addmm(y, z, p, alpha=-1), dim=0)
    out = torch.empty(m, dtype=y.dtype)  # y rank-deficient (H of rank below m): the other columns' span directly
    for i in range(m):
        keep = [j for j in range(m) if j != i]
        left, sing, _ = torch.linalg.svd(r[:, keep], full_matrices=False)  # the other probes' span, in the basis q
        u = left[:, sing > 1e-10 * float(sing.max())]  # its real directions only (no filler from a rank gap)
        c = u.T @ (q.T @ omega[:, i])
        w_i = omega[:, i] - q @ (u @ c)  # probe i with the other probes' span projected out
        aw = y[:, i] - z @ (u @ c)  # A w, from products already taken
        out[i] = torch.trace(u.T @ h @ u) + w_i @ aw
    return out


def xtrace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    n_hvp: int = 40,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
) -> TraceEstimate:
    """XTrace (Epperly, Tropp & Webber 2024, "XTrace: making the most of every sample in stochastic trace
    estimation", SIAM J. Matrix Anal. Appl.) with a budget of ``n_hvp`` products: ``m = n_hvp // 2``
    Rademacher probes (norm ``sqrt(n)``, the paper's improved scaling), ``Y = H Omega``, ``Q = qr(Y)``,
    ``H Q``; the estimate is the mean of the ``m`` exchangeable leave-one-out Hutch++ estimates
    (:func:`xtrace_estimates`), ``samples`` holds them and ``stderr`` is their standard deviation over
    ``sqrt(m)`` (the paper's error estimate). Exact when ``H`` has rank below ``m``."""
    check_int("n_hvp", n_hvp, 4)
    generator = check_cpu_generator("generator", generator)
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, params)
        m = min(n_hvp // 2, op.n)
        omega = rademacher(op.n, generator, m)
        y = op.matmat(omega)
        return _estimate(xtrace_estimates(omega, y, op.matmat), op.n_hvp)


#: the trace estimators :func:`hessian_trace` can use
TRACE_METHODS = ("xtrace", "hutch++", "hutchinson")


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    n_hvp: int = 40,
    method: str = "xtrace",
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
) -> TraceEstimate:
    """``Tr(H)`` of the mean loss on ``data`` with a budget of ``n_hvp`` Hessian-vector products, by
    ``method``: ``"xtrace"`` (the default: the fewest products for a given error in
    ``benchmarks/hessian.py``), ``"hutch++"`` or ``"hutchinson"`` (``n_hvp`` probes)."""
    if method == "xtrace":
        return xtrace(model, loss_fn, data, n_hvp, params, generator, mode)
    if method == "hutch++":
        return hutchpp_trace(model, loss_fn, data, n_hvp, params, generator, mode)
    if method == "hutchinson":
        return hutchinson_trace(model, loss_fn, data, n_probes=n_hvp, params=params, generator=generator, mode=mode)
    raise ValueError(f"method: {method!r}; allowed {TRACE_METHODS}")


# ------------------------------------------------------------------------------------ Hessian-aware training


def trace_penalty(
    model: nn.Module,
    loss: Tensor,
    params: ParamSelection = None,
    n_probes: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Differentiable Hutchinson estimate of ``Tr(H)`` of ``loss`` (Pranto et al. 2025: minimize
    ``loss + lambda * Tr(H)``): ``(1/m) sum_i z_i^T H z_i`` with Rademacher ``z_i``, each ``H z_i`` by double
    backprop with ``create_graph=True``, so the result can be back-propagated (third-order terms included).
    ``loss`` must have been computed from the model's parameters with a graph, for a model with attention
    under ``with bl.hessian.double_backward():`` (``sdpa_kernel(SDPBackend.MATH)``; the default fused
    kernels have no double backward, and the RuntimeError then says so). Its expectation over the probes is
    ``Tr(H)``. Float16/bfloat16 parameters are refused by name (train in float32, e.g. under autocast)."""
    check_int("n_probes", n_probes, 1)
    generator = check_cpu_generator("generator", generator)
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        raise ValueError(
            f"loss must be a scalar tensor, got {type(loss).__name__} "
            f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}"
        )
    if not loss.requires_grad:
        raise ValueError("loss does not require grad: compute it from the model's parameters, with grad enabled")
    named = hessian_params(model, params)
    low = [n for n, p in named if p.dtype in LOW_PRECISION]
    if low:
        raise ValueError(
            f"params: {low[:5]} are {named[0][1].dtype if len(low) == len(named) else 'float16/bfloat16'}; "
            "trace_penalty differentiates the training loss twice in the parameters' own dtype, which half "
            "precision cannot carry: keep the parameters in float32 (mixed precision: torch.autocast)"
        )
    ps = [p for _, p in named]
    try:
        return _penalty(loss, ps, n_probes, generator)
    except RuntimeError as err:
        if not is_double_backward_error(err):
            raise
        raise explain(err) from err


def _penalty(loss: Tensor, ps: list[nn.Parameter], n_probes: int, generator: torch.Generator | None) -> Tensor:
    grads = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
    pairs = [(g, p) for g, p in zip(grads, ps) if g is not None and g.requires_grad]
    total = loss.new_zeros(())
    if not pairs:
        return total
    gs, ps = [g for g, _ in pairs], [p for _, p in pairs]
    for _ in range(n_probes):
        zs = [torch.randint(0, 2, p.shape, generator=generator).to(device=p.device, dtype=p.dtype) * 2 - 1 for p in ps]
        gz = sum(((g * z).sum() for g, z in zip(gs, zs)), zs[0].new_zeros(()))
        hz = torch.autograd.grad(gz, ps, create_graph=True, retain_graph=True, allow_unused=True)
        total = total + sum(((h * z).sum() for h, z in zip(hz, zs) if h is not None), zs[0].new_zeros(()))
    return total / n_probes


def hessian_regularizer(
    lam: float, params: ParamSelection = None, n_probes: int = 1, seed: int = 0, loss_fn: LossFn | None = None
) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """A ``regularizer(model, x, y) -> lam * Tr(H)`` for :func:`bitlab.training.fit` (Pranto et al. 2025),
    with ``Tr(H)`` of ``loss_fn(model(x), y)`` (cross-entropy by default; or a ``batch_loss(fn)``, called as
    ``fn(model, (x, y))``; ``x`` may be a tensor, tuple or dict of inputs) estimated by :func:`trace_penalty`
    from its own generator seeded with ``seed`` (fresh probes each call). The forward runs under the math
    attention kernel (:func:`~.kernels.double_backward`), so stock Transformer layers work. ``params``
    restricts the penalty, e.g. to the last layers (``params="3.*"``)."""
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
    check_int("n_probes", n_probes, 1)
    loss = as_batch_loss(loss_fn if loss_fn is not None else nn.functional.cross_entropy)
    gen = torch.Generator().manual_seed(seed)

    def regularizer(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        p = next(model.parameters(), None)
        batch = (x, y) if p is None else to_device((x, y), p.device)
        with double_backward():
            value = loss(model, batch)
        return lam * trace_penalty(model, value, params=params, n_probes=n_probes, generator=gen)

    return regularizer
