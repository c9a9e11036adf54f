"""The top of the Hessian spectrum and its density: Lanczos with full reorthogonalization (Golub & Van Loan,
Alg. 10.1.1) or power iteration with deflation (PyHessian, Yao et al. 2020) for the top eigenvalues, and
stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao 2019) for the eigenvalue density."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from ..params import ParamSelection
from ..validate import check_cpu_generator, check_int
from .probes import rademacher
from .products import Data, HessianOperator, LossFn, Vec, eval_mode

__all__ = ["METHODS", "slq_density", "slq_nodes", "top_eigenvalues"]

METHODS = ("lanczos", "power")


# ----------------------------------------------------------------------------------------- eigenvalues


def _orthogonalize(w: Tensor, basis: list[Tensor]) -> Tensor:
    """``w`` minus its projection on orthonormal ``basis`` (classical Gram-Schmidt, applied twice)."""
    if not basis:
        return w
    B = torch.stack(basis)
    for _ in range(2):
        w = w - B.T @ (B @ w)
    return w


def _tridiag(alphas: list[float], betas: list[float]) -> Tensor:
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        b = torch.tensor(betas, dtype=torch.float64)
        T += torch.diag(b, 1) + torch.diag(b, -1)
    return T


def _lanczos(
    op: Callable[[Tensor], Tensor],
    v0: Tensor,
    steps: int,
    k: int = 0,
    tol: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, list[Tensor]]:
    """Lanczos tridiagonalization with full reorthogonalization (Golub & Van Loan, Alg. 10.1.1 + reorth.).

    Runs up to ``steps`` products; with ``k > 0`` it stops once the top-``k`` Ritz values have residual
    bounds ``|beta_j s_ji| <= tol |theta_i|`` (each then is within that of an eigenvalue). On breakdown (an
    invariant subspace) it continues from a fresh random vector orthogonal to the basis, so repeated
    eigenvalues are found too. Returns the tridiagonal ``T`` and the orthonormal basis ``V``."""
    n = v0.numel()
    steps = min(steps, n)
    V = [v0 / v0.norm()]
    alphas: list[float] = []
    betas: list[float] = []
    for j in range(steps):
        w = op(V[j])
        alpha = float(w @ V[j])
        alphas.append(alpha)
        w = _orthogonalize(w - alpha * V[j], V)
        beta = float(w.norm())
        if k and len(alphas) >= k:
            theta, S = torch.linalg.eigh(_tridiag(alphas, betas))
            if callback is not None:
                callback(len(alphas), theta.flip(0)[:k])
            res = beta * S[-1, -k:].abs()
            if bool((res <= tol * theta[-k:].abs()).all()):
                break
        if j + 1 == steps:
            break
        scale = max(abs(a) for a in alphas) + max(betas, default=0.0)
        if beta <= 1e-10 * max(scale, 1e-300):  # invariant subspace: restart orthogonally
            w = _orthogonalize(torch.randn(n, generator=generator, dtype=torch.float64), V)
            betas.append(0.0)
            V.append(w / w.norm())
        else:
            betas.append(beta)
            V.append(w / beta)
    return _tridiag(alphas, betas), V[: len(alphas)]


def _power(
    op: Callable[[Tensor], Tensor],
    n: int,
    k: int,
    max_iter: int,
    tol: float,
    generator: torch.Generator | None,
    callback: Callable[[int, Tensor], None] | None = None,
) -> tuple[list[float], list[Tensor]]:
    """Power iteration with deflation (PyHessian's scheme): for each eigenvalue, iterate ``v <- Hv/|Hv|``
    projected orthogonal to the eigenvectors already found, until the Rayleigh quotient changes by less
    than ``tol`` relative, or ``max_iter`` products. Converges to the eigenvalues of largest magnitude."""
    values: list[float] = []
    vectors: list[Tensor] = []
    count = 0
    for _ in range(k):
        v = _orthogonalize(torch.randn(n, generator=generator, dtype=torch.float64), vectors)
        v = v / v.norm()
        lam = float("nan")  # max_iter >= 1: the first product sets it
        for it in range(max_iter):
            w = _orthogonalize(op(v), vectors)
            new = float(v @ w)
            norm = float(w.norm())
            count += 1
            if callback is not None:
                callback(count, torch.tensor(values + [new], dtype=torch.float64))
            done = it > 0 and abs(new - lam) <= tol * abs(new)
            lam = new
            if norm == 0.0:
                break
            v = w / norm
            if done:
                break
        values.append(lam)
        vectors.append(v)
    return values, vectors


def top_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    k: int = 1,
    method: str = "lanczos",
    max_iter: int = 100,
    tol: float = 1e-3,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
    callback: Callable[[int, Tensor], None] | None = None,
) -> tuple[Tensor, list[Vec], int]:
    """The ``k`` top eigenvalues of the loss Hessian (descending), their eigenvectors (each a list of tensors
    shaped like ``params``) and the number of Hessian-vector products used.

    ``method="lanczos"``: Lanczos with full reorthogonalization, at most ``max_iter`` products in all,
    stopping when the top-``k`` Ritz residuals are below ``tol`` relative (so the eigenvalues are within
    ``tol`` relative); returns the algebraically largest eigenvalues.
    ``method="power"``: power iteration with deflation (PyHessian), at most ``max_iter`` products per
    eigenvalue, stopping when the estimate changes by less than ``tol`` relative; it finds the eigenvalues
    of largest *magnitude*, the top ones when ``lambda_max > |lambda_min|`` (the usual case near a minimum).
    ``callback(n_hvp, estimates)``, if given, is called after each product with the current estimates
    (Lanczos: the top Ritz values; power: the eigenvalues found so far and the one being refined).
    """
    check_int("k", k, 1)
    check_int("max_iter", max_iter, 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    generator = check_cpu_generator("generator", generator)
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, params)
        if k > op.n:
            raise ValueError(f"k must be <= the number of selected parameters ({op.n}), got k={k}")
        if method == "power":
            values, vectors = _power(op, op.n, k, max_iter, tol, generator, callback)
            order = sorted(range(k), key=lambda i: -values[i])
            vals = torch.tensor([values[i] for i in order], dtype=torch.float64)
            vecs = [vectors[i] for i in order]
        else:
            v0 = torch.randn(op.n, generator=generator, dtype=torch.float64)
            T, V = _lanczos(op, v0, max(max_iter, k), k=k, tol=tol, generator=generator, callback=callback)
            theta, S = torch.linalg.eigh(T)
            vals = theta.flip(0)[:k]
            Vm = torch.stack(V)
            vecs = [Vm.T @ S[:, -1 - i] for i in range(k)]
        return vals, [op.unflat(v / v.norm()) for v in vecs], op.n_hvp


# ------------------------------------------------------------------------------------- spectral density


def slq_nodes(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    n_v: int = 4,
    m: int = 50,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
) -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature (Golub & Meurant; Ghorbani, Krishnan & Xiao 2019): for each of ``n_v``
    Rademacher start vectors, ``m`` Lanczos steps; the Ritz values ``theta_j`` are quadrature nodes with
    weights ``tau_j = s_1j^2 / n_v`` (squared first components of T's eigenvectors). Returns ``(nodes,
    weights)``, flat, with weights summing to 1: ``sum tau_j f(theta_j) ~ Tr(f(H)) / n``."""
    check_int("n_v", n_v, 1)
    check_int("m", m, 1)
    generator = check_cpu_generator("generator", generator)
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, params)
        nodes, weights = [], []
        for _ in range(n_v):
            T, _ = _lanczos(op, rademacher(op.n, generator), m, generator=generator)
            theta, S = torch.linalg.eigh(T)
            nodes.append(theta)
            weights.append(S[0] ** 2 / n_v)
        return torch.cat(nodes), torch.cat(weights)


def slq_density(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    n_v: int = 4,
    m: int = 50,
    sigma: float | None = None,
    grid: int | Tensor = 1000,
    params: ParamSelection = None,
    generator: torch.Generator | None = None,
    mode: str = "check",
) -> tuple[Tensor, Tensor]:
    """Eigenvalue density of the Hessian by SLQ (:func:`slq_nodes`) smoothed with Gaussians of width
    ``sigma``: ``phi(t) = sum_j tau_j N(t; theta_j, sigma^2)``. ``sigma=None`` takes 1% of the node range.
    ``grid`` is a number of points (spanning the nodes +- 6 sigma) or a 1-d tensor of points. The density
    integrates to 1 (each Gaussian and the weights are normalized), up to the grid's resolution and any mass
    a user ``grid`` leaves out. Returns ``(grid, density)`` as float64 tensors."""
    nodes, weights = slq_nodes(model, loss_fn, data, n_v=n_v, m=m, params=params, generator=generator, mode=mode)
    if sigma is None:
        span = float(nodes.max() - nodes.min())
        sigma = 0.01 * span if span > 0 else max(1e-3 * float(nodes.abs().max()), 1e-6)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    if isinstance(grid, int) and not isinstance(grid, bool):
        check_int("grid", grid, 2)
        grid = torch.linspace(float(nodes.min()) - 6 * sigma, float(nodes.max()) + 6 * sigma, grid, dtype=torch.float64)
    elif isinstance(grid, Tensor) and grid.ndim == 1 and grid.numel() >= 2:
        grid = grid.to(torch.float64)
    else:
        raise ValueError(f"grid must be an int >= 2 or a 1-d tensor of points, got {grid!r}")
    z = (grid[:, None] - nodes[None, :]) / sigma
    density = (torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))) @ weights
    return grid, density
