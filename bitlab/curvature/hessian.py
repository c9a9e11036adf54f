"""Curvature of the loss: Hessian-vector products, eigenvalues, trace, spectral density, trace penalty.

Everything is built on one operation, the Hessian-vector product by double backprop
(Pearlmutter 1994): ``H v = d/dtheta (grad L(theta) . v)``, never forming ``H``. On top of it
(the estimators of PyHessian, Yao et al. 2020, in our own code):

* :func:`hvp` -- ``H v`` over one batch ``(x, y)`` or averaged over a Dataset / DataLoader.
* :func:`top_eigenvalues` -- Lanczos with full reorthogonalization, or power iteration with deflation.
* :func:`hutchinson_trace` -- ``Tr(H) = E[z^T H z]`` with Rademacher ``z`` (Hutchinson 1989);
  :func:`hutchpp_trace` -- Hutch++ (Meyer, Musco, Musco, Woodruff 2021), exact on the top directions.
* :func:`slq_nodes`, :func:`slq_density` -- stochastic Lanczos quadrature (Ghorbani et al. 2019).
* :func:`per_layer` -- any estimator applied to each layer's diagonal block, as a DataFrame.
* :func:`trace_penalty`, :func:`hessian_regularizer` -- a differentiable Hutchinson estimate of
  ``Tr(H)`` for Hessian-aware training, ``loss + lambda * Tr(H)`` (Pranto et al. 2025).
* :func:`flip_loss_prediction` -- the second-order prediction ``g_i delta + 1/2 H_ii delta^2`` of the loss
  change of single-weight changes (bit flips), next to the observed change.

Conventions. ``loss_fn(output, y)`` returns the *mean* loss of a batch (``F.cross_entropy``); over a
data set the Hessian is the size-weighted average of the batch Hessians, i.e. the Hessian of the mean
loss over all examples. ``params`` selects the parameters the Hessian is taken over: ``None`` (every
trainable parameter), a name glob (``"3.*"``, ``"fc*"``), a list of names/globs, or a predicate
``(name, param) -> bool``; the others are held fixed, so a selection gives a diagonal block of ``H``.
Vectors are lists of tensors shaped like the selected parameters (:func:`flatten` / :func:`unflatten`
convert). Random probes come from ``generator`` (torch's global generator when ``None``).

Modes. The Hessian of a model in train mode with BatchNorm (batch statistics, running-stat updates) or
Dropout (random masks) is not the Hessian of the deployed model. With ``mode="check"`` (the default)
such a model raises a ValueError asking for ``model.eval()``; ``mode="eval"`` switches to eval mode for
the computation and restores every module's previous mode afterwards. :func:`trace_penalty` works on the
loss it is handed (train mode inside training is its intended use).
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import evaluate
from ..params import ParamSelection, select_params
from ..zoo.data import as_loader

__all__ = ["hvp", "flatten", "unflatten", "hessian_params", "TraceEstimate", "top_eigenvalues",
           "hutchinson_trace", "hutchpp_trace", "slq_nodes", "slq_density", "per_layer", "layer_groups",
           "trace_penalty", "hessian_regularizer", "eval_mode", "flip_loss_prediction"]

Vec = list[Tensor]
LossFn = Callable[[Tensor, Tensor], Tensor]
Data = Dataset | DataLoader | tuple[Tensor, Tensor] | list[Tensor]
MODES = ("check", "eval")
METHODS = ("lanczos", "power")


# ---------------------------------------------------------------------------------------------- helpers

def hessian_params(model: nn.Module, params: ParamSelection = None) -> list[tuple[str, nn.Parameter]]:
    """The ``(name, parameter)`` pairs a Hessian is taken over: trainable floating-point parameters
    chosen by ``params`` (see the module docstring). An empty selection raises ValueError."""
    chosen = select_params(model, params)
    frozen = [n for n, p in chosen if not p.requires_grad]
    if params is None:
        chosen = [(n, p) for n, p in chosen if p.requires_grad]
        if not chosen:
            raise ValueError("params: the model has no trainable parameter (requires_grad=True)")
    elif frozen:
        raise ValueError(f"params: {frozen} do not require grad; select trainable parameters only")
    return chosen


def flatten(vec: Sequence[Tensor]) -> Tensor:
    """A list of tensors as one flat vector (concatenated in order)."""
    if len(vec) == 0:
        raise ValueError("vec: expected a non-empty list of tensors")
    return torch.cat([v.reshape(-1) for v in vec])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> Vec:
    """A flat vector cut into tensors shaped (and typed) like ``like``; inverse of :func:`flatten`."""
    n = sum(t.numel() for t in like)
    if flat.ndim != 1 or flat.numel() != n:
        raise ValueError(f"flat: expected a 1-d tensor of {n} elements, got shape {tuple(flat.shape)}")
    out, i = [], 0
    for t in like:
        out.append(flat[i:i + t.numel()].reshape(t.shape).to(t.dtype))
        i += t.numel()
    return out


def unflatten_batched(flat: Tensor, like: Sequence[Tensor]) -> Vec:
    """A ``(b, n)`` batch of flat vectors cut into ``(b, *shape)`` tensors shaped like ``like``."""
    b, i, out = flat.shape[0], 0, []
    for t in like:
        out.append(flat[:, i:i + t.numel()].reshape(b, *t.shape))
        i += t.numel()
    return out


def _stochastic_modules(model: nn.Module) -> list[str]:
    kinds = (nn.modules.batchnorm._BatchNorm, nn.modules.dropout._DropoutNd)
    return [name or type(m).__name__ for name, m in model.named_modules() if isinstance(m, kinds) and m.training]


@contextmanager
def eval_mode(model: nn.Module, mode: str = "check") -> Iterator[nn.Module]:
    """Guard for Hessian estimation. ``mode="check"``: raise ValueError if a BatchNorm or Dropout module is
    in train mode. ``mode="eval"``: put the model in eval mode inside the block, restore each module's
    previous mode on exit (also on an exception)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "check":
        bad = _stochastic_modules(model)
        if bad:
            raise ValueError(f"model is in train mode with BatchNorm/Dropout modules {bad[:5]}: their Hessian is "
                             "not the deployed model's; call model.eval() first, or pass mode='eval' to switch "
                             "temporarily")
        yield model
        return
    with evaluate.eval_mode(model):
        yield model


def _batches(data: Data) -> list[tuple[Tensor, Tensor]] | DataLoader:
    if isinstance(data, (tuple, list)):
        if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
            raise TypeError("data: expected a batch (x, y) of two tensors, a Dataset or a DataLoader")
        if len(data[0]) == 0:
            raise ValueError("data: the batch (x, y) is empty")
        return [(data[0], data[1])]
    return as_loader(data, batch_size=1024)


class _Hessian:
    """The Hessian of the mean loss as a linear operator on flat float64 vectors, counting products.
    For a single batch the gradient graph is built once and reused (``retain_graph``)."""

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Data, params: ParamSelection = None):
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be a callable (output, y) -> scalar loss, got {type(loss_fn).__name__}")
        self.model, self.loss_fn = model, loss_fn
        self.named = hessian_params(model, params)
        self.params = [p for _, p in self.named]
        self.n = sum(p.numel() for p in self.params)
        self.device = self.params[0].device
        self.batches = _batches(data)
        self.n_hvp = 0
        self._vmap_ok = True
        self._grads: list[Tensor | None] | None = None
        if isinstance(self.batches, list):
            self._grads = self._grad_graph(*self.batches[0])

    def _grad_graph(self, x: Tensor, y: Tensor) -> list[Tensor | None]:
        loss = self.loss_fn(self.model(x.to(self.device)), y.to(self.device))
        if loss.ndim != 0:
            raise ValueError(f"loss_fn must return a scalar (mean) loss, got shape {tuple(loss.shape)}")
        return list(torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True))

    def _hv(self, grads: list[Tensor | None], vec: Vec, retain: bool) -> Vec:
        # parameters the loss does not use (grad None) or uses linearly (grad constant) have zero curvature
        live = [(g, v) for g, v in zip(grads, vec) if g is not None and g.requires_grad]
        hv: Sequence[Tensor | None] = [None] * len(self.params)
        if live:
            hv = torch.autograd.grad([g for g, _ in live], self.params, grad_outputs=[v for _, v in live],
                                     retain_graph=retain, allow_unused=True)
        return [torch.zeros_like(p) if h is None else h for h, p in zip(hv, self.params)]

    def vec(self, vec: Vec) -> Vec:
        """``H v`` for ``v`` a list of tensors shaped like the parameters."""
        self.n_hvp += 1
        vec = [v.to(device=p.device, dtype=p.dtype) for v, p in zip(vec, self.params)]
        if self._grads is not None:
            return [h.detach() for h in self._hv(self._grads, vec, retain=True)]
        total, seen = None, 0
        for x, y in self.batches:
            hv = self._hv(self._grad_graph(x, y), vec, retain=False)
            b = len(y)
            total = [h.detach() * b for h in hv] if total is None else [t + h.detach() * b for t, h in zip(total, hv)]
            seen += b
        if not seen:
            raise ValueError("data must not be empty")
        return [t / seen for t in total]

    def _hv_batched(self, grads: list[Tensor | None], vecs: Vec, retain: bool) -> Vec:
        live = [(g, v) for g, v in zip(grads, vecs) if g is not None and g.requires_grad]
        b = vecs[0].shape[0]
        hv: Sequence[Tensor | None] = [None] * len(self.params)
        if live:
            hv = torch.autograd.grad([g for g, _ in live], self.params, grad_outputs=[v for _, v in live],
                                     retain_graph=retain, allow_unused=True, is_grads_batched=True)
        return [torch.zeros((b, *p.shape), dtype=p.dtype, device=p.device) if h is None else h.detach()
                for h, p in zip(hv, self.params)]

    def matmat(self, flat: Tensor, block: int = 32) -> Tensor:
        """``H V`` for the columns of a float64 ``(n, b)`` matrix, ``block`` columns per vmapped backward
        (``is_grads_batched``); counts ``b`` products. Same values as column-by-column products, which
        are taken instead where an op's backward cannot be vmapped (e.g. max-pooling on a
        channels-last model: "NYI: querying is_contiguous inside of vmap")."""
        if not self._vmap_ok:
            return self._matmat_columns(flat)
        n_before = self.n_hvp
        try:
            return self._matmat_batched(flat, block)
        except RuntimeError as err:
            if "vmap" not in str(err):
                raise
            self._vmap_ok = False
            self.n_hvp = n_before
            return self._matmat_columns(flat)

    def _matmat_columns(self, flat: Tensor) -> Tensor:
        """``H V`` one column at a time (counts ``b`` products)."""
        return torch.stack([self(flat[:, j]) for j in range(flat.shape[1])], dim=1)

    def _matmat_batched(self, flat: Tensor, block: int) -> Tensor:
        cols = []
        for j in range(0, flat.shape[1], block):
            chunk = flat[:, j:j + block]
            b = chunk.shape[1]
            self.n_hvp += b
            vecs = [t.to(device=p.device, dtype=p.dtype) for t, p in
                    zip(unflatten_batched(chunk.T, self.params), self.params)]
            if self._grads is not None:
                hv = self._hv_batched(self._grads, vecs, retain=True)
            else:
                total, seen = None, 0
                for x, y in self.batches:
                    h = self._hv_batched(self._grad_graph(x, y), vecs, retain=False)
                    nb = len(y)
                    total = [t * nb for t in h] if total is None else [t + u * nb for t, u in zip(total, h)]
                    seen += nb
                if not seen:
                    raise ValueError("data must not be empty")
                hv = [t / seen for t in total]
            cols.append(torch.cat([h.reshape(b, -1) for h in hv], dim=1).T.to(device="cpu", dtype=torch.float64))
        return torch.cat(cols, dim=1)

    def __call__(self, flat: Tensor) -> Tensor:
        """``H v`` on flat float64 vectors (the linear algebra runs in float64 whatever the model dtype)."""
        return flatten(self.vec(unflatten(flat, self.params))).to(device="cpu", dtype=torch.float64)

    def unflat(self, flat: Tensor) -> Vec:
        return [t.detach().clone() for t in unflatten(flat, self.params)]


def hvp(model: nn.Module, loss_fn: LossFn, data: Data, vec: Sequence[Tensor] | Tensor,
        params: ParamSelection = None, mode: str = "check") -> Vec | Tensor:
    """Hessian-vector product ``H v`` of the mean loss by double backprop (Pearlmutter 1994).

    ``data`` is one batch ``(x, y)`` or a Dataset/DataLoader (the batch Hessians weighted by batch size).
    ``vec`` is a list of tensors shaped like the selected ``params`` (returns the same), or a flat vector
    (returns a flat vector)."""
    with eval_mode(model, mode):
        op = _Hessian(model, loss_fn, data, params)
        if isinstance(vec, Tensor):
            if vec.ndim != 1 or vec.numel() != op.n:
                raise ValueError(f"vec: a flat vector must have {op.n} elements, got shape {tuple(vec.shape)}")
            return flatten(op.vec(unflatten(vec, op.params)))
        vec = list(vec)
        shapes = [tuple(p.shape) for p in op.params]
        if [tuple(v.shape) for v in vec] != shapes:
            raise ValueError(f"vec: expected tensors of shapes {shapes} (the selected params), "
                             f"got {[tuple(v.shape) for v in vec]}")
        return op.vec(vec)


def _check_generator(generator: torch.Generator | None) -> torch.Generator | None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def _rademacher(n: int, generator: torch.Generator | None, cols: int | None = None) -> Tensor:
    """Rademacher vector(s): one of length ``n``, or ``cols`` of them as the columns of an (n, cols) matrix,
    drawn one vector after another (the same draws as ``cols`` single calls)."""
    shape = (n,) if cols is None else (cols, n)
    z = torch.randint(0, 2, shape, generator=generator).to(torch.float64).mul_(2).sub_(1)
    return z if cols is None else z.T


def _check_int(name: str, value: Any, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


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


def _lanczos(op: Callable[[Tensor], Tensor], v0: Tensor, steps: int, k: int = 0, tol: float = 0.0,
             generator: torch.Generator | None = None,
             callback: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, list[Tensor]]:
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
    return _tridiag(alphas, betas), V[:len(alphas)]


def _power(op: Callable[[Tensor], Tensor], n: int, k: int, max_iter: int, tol: float,
           generator: torch.Generator | None,
           callback: Callable[[int, Tensor], None] | None = None) -> tuple[list[float], list[Tensor]]:
    """Power iteration with deflation (PyHessian's scheme): for each eigenvalue, iterate ``v <- Hv/|Hv|``
    projected orthogonal to the eigenvectors already found, until the Rayleigh quotient changes by less
    than ``tol`` relative, or ``max_iter`` products. Converges to the eigenvalues of largest magnitude."""
    values: list[float] = []
    vectors: list[Tensor] = []
    count = 0
    for _ in range(k):
        v = _orthogonalize(torch.randn(n, generator=generator, dtype=torch.float64), vectors)
        v = v / v.norm()
        lam: float | None = None
        for _ in range(max_iter):
            w = _orthogonalize(op(v), vectors)
            new = float(v @ w)
            norm = float(w.norm())
            count += 1
            if callback is not None:
                callback(count, torch.tensor(values + [new], dtype=torch.float64))
            done = lam is not None and abs(new - lam) <= tol * abs(new)
            lam = new
            if norm == 0.0:
                break
            v = w / norm
            if done:
                break
        values.append(float(lam))
        vectors.append(v)
    return values, vectors


def top_eigenvalues(model: nn.Module, loss_fn: LossFn, data: Data, k: int = 1, method: str = "lanczos",
                    max_iter: int = 100, tol: float = 1e-3, params: ParamSelection = None,
                    generator: torch.Generator | None = None, mode: str = "check",
                    callback: Callable[[int, Tensor], None] | None = None) -> tuple[Tensor, list[Vec], int]:
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
    _check_int("k", k, 1)
    _check_int("max_iter", max_iter, 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    generator = _check_generator(generator)
    with eval_mode(model, mode):
        op = _Hessian(model, loss_fn, data, params)
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


# --------------------------------------------------------------------------------------------- trace

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


def hutchinson_trace(model: nn.Module, loss_fn: LossFn, data: Data, n_probes: int | None = None,
                     tol: float = 1e-2, min_probes: int = 10, max_probes: int = 1000,
                     params: ParamSelection = None, generator: torch.Generator | None = None,
                     mode: str = "check") -> TraceEstimate:
    """Hutchinson's estimate ``Tr(H) ~ (1/m) sum_i z_i^T H z_i`` with Rademacher probes ``z_i`` (Hutchinson
    1989; PyHessian). With ``n_probes`` given, exactly that many probes (vmapped in blocks); otherwise
    probes are drawn one at a time until the relative standard error ``stderr / |mean|`` is below ``tol``
    (at least ``min_probes``, at most ``max_probes``). One Hessian-vector product per probe."""
    if n_probes is not None:
        _check_int("n_probes", n_probes, 1)
    _check_int("min_probes", min_probes, 2)
    _check_int("max_probes", max_probes, 1)
    if not tol > 0:
        raise ValueError(f"tol must be > 0, got {tol!r}")
    generator = _check_generator(generator)
    with eval_mode(model, mode):
        op = _Hessian(model, loss_fn, data, params)
        if n_probes is not None:
            Z = _rademacher(op.n, generator, n_probes)
            return _estimate((Z * op.matmat(Z)).sum(0), op.n_hvp)
        samples: list[float] = []
        limit = max_probes
        while len(samples) < limit:
            z = _rademacher(op.n, generator)
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


def hutchpp_trace(model: nn.Module, loss_fn: LossFn, data: Data, n_hvp: int = 30, params: ParamSelection = None,
                  generator: torch.Generator | None = None, mode: str = "check") -> TraceEstimate:
    """Hutch++ (Meyer, Musco, Musco & Woodruff 2021, Algorithm 1) with a budget of ``n_hvp`` products:
    ``S`` with ``s = n_hvp // 3`` Rademacher columns, ``Q = qr(H S)``; the trace is ``Tr(Q^T H Q)`` (exact on
    the dominant subspace, ``s`` products) plus Hutchinson on ``(I - QQ^T) H (I - QQ^T)`` with the remaining
    ``n_hvp - 2s`` probes. ``samples`` are ``Tr(Q^T H Q) + g_i^T H g_i`` per residual probe ``g_i``, so
    ``stderr`` is the residual part's standard error (NaN with a single residual probe)."""
    _check_int("n_hvp", n_hvp, 3)
    generator = _check_generator(generator)
    with eval_mode(model, mode):
        op = _Hessian(model, loss_fn, data, params)
        s = min(n_hvp // 3, op.n)
        S = _rademacher(op.n, generator, s)
        Q, _ = torch.linalg.qr(op.matmat(S))
        low = float((Q * op.matmat(Q)).sum())
        g = n_hvp - 2 * s
        G = _rademacher(op.n, generator, g)
        G = G - Q @ (Q.T @ G)
        return _estimate(low + (G * op.matmat(G)).sum(0), op.n_hvp)


# ------------------------------------------------------------------------------------- spectral density

def slq_nodes(model: nn.Module, loss_fn: LossFn, data: Data, n_v: int = 4, m: int = 50,
              params: ParamSelection = None, generator: torch.Generator | None = None,
              mode: str = "check") -> tuple[Tensor, Tensor]:
    """Stochastic Lanczos quadrature (Golub & Meurant; Ghorbani, Krishnan & Xiao 2019): for each of ``n_v``
    Rademacher start vectors, ``m`` Lanczos steps; the Ritz values ``theta_j`` are quadrature nodes with
    weights ``tau_j = s_1j^2 / n_v`` (squared first components of T's eigenvectors). Returns ``(nodes,
    weights)``, flat, with weights summing to 1: ``sum tau_j f(theta_j) ~ Tr(f(H)) / n``."""
    _check_int("n_v", n_v, 1)
    _check_int("m", m, 1)
    generator = _check_generator(generator)
    with eval_mode(model, mode):
        op = _Hessian(model, loss_fn, data, params)
        nodes, weights = [], []
        for _ in range(n_v):
            T, _ = _lanczos(op, _rademacher(op.n, generator), m, generator=generator)
            theta, S = torch.linalg.eigh(T)
            nodes.append(theta)
            weights.append(S[0] ** 2 / n_v)
        return torch.cat(nodes), torch.cat(weights)


def slq_density(model: nn.Module, loss_fn: LossFn, data: Data, n_v: int = 4, m: int = 50,
                sigma: float | None = None, grid: int | Tensor = 1000, params: ParamSelection = None,
                generator: torch.Generator | None = None, mode: str = "check") -> tuple[Tensor, Tensor]:
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
        _check_int("grid", grid, 2)
        grid = torch.linspace(float(nodes.min()) - 6 * sigma, float(nodes.max()) + 6 * sigma, grid,
                              dtype=torch.float64)
    elif isinstance(grid, Tensor) and grid.ndim == 1 and grid.numel() >= 2:
        grid = grid.to(torch.float64)
    else:
        raise ValueError(f"grid must be an int >= 2 or a 1-d tensor of points, got {grid!r}")
    z = (grid[:, None] - nodes[None, :]) / sigma
    density = (torch.exp(-0.5 * z ** 2) / (sigma * math.sqrt(2 * math.pi))) @ weights
    return grid, density


# ---------------------------------------------------------------------------------------------- layers

def layer_groups(model: nn.Module, params: ParamSelection = None) -> dict[str, list[str]]:
    """Selected trainable parameter names grouped by the module that owns them (``"3"`` -> ``["3.weight",
    "3.bias"]``), in model order."""
    groups: dict[str, list[str]] = {}
    for name, _ in hessian_params(model, params):
        groups.setdefault(name.rpartition(".")[0] or name, []).append(name)
    return groups


def per_layer(fn: Callable[..., Any], model: nn.Module, loss_fn: LossFn, data: Data,
              params: ParamSelection = None, **kwargs: Any) -> pd.DataFrame:
    """Apply an estimator ``fn`` (e.g. :func:`hutchinson_trace`, :func:`top_eigenvalues`) to each layer's
    diagonal Hessian block; one row per layer with ``layer, n_params`` and the result: ``trace, stderr,
    n_hvp`` for a :class:`TraceEstimate`, ``lambda_1..k, n_hvp`` for eigenvalues, else ``value``.
    ``kwargs`` go to ``fn``; give it a seeded ``generator`` for reproducible rows."""
    if not callable(fn):
        raise TypeError(f"fn must be an estimator callable, got {type(fn).__name__}")
    named = dict(model.named_parameters())
    rows = []
    for layer, names in layer_groups(model, params).items():
        out = fn(model, loss_fn, data, params=names, **kwargs)
        row: dict[str, Any] = {"layer": layer, "n_params": sum(named[n].numel() for n in names)}
        if isinstance(out, TraceEstimate):
            row.update(trace=out.mean, stderr=out.stderr, n_hvp=out.n_hvp)
        elif isinstance(out, tuple) and len(out) == 3 and isinstance(out[0], Tensor):
            row.update({f"lambda_{i + 1}": float(v) for i, v in enumerate(out[0])}, n_hvp=out[2])
        else:
            row["value"] = float(out) if isinstance(out, (Tensor, float, int)) else out
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------ Hessian-aware training

def trace_penalty(model: nn.Module, loss: Tensor, params: ParamSelection = None, n_probes: int = 1,
                  generator: torch.Generator | None = None) -> Tensor:
    """Differentiable Hutchinson estimate of ``Tr(H)`` of ``loss`` (Pranto et al. 2025: minimize
    ``loss + lambda * Tr(H)``): ``(1/m) sum_i z_i^T H z_i`` with Rademacher ``z_i``, each ``H z_i`` by double
    backprop with ``create_graph=True``, so the result can be back-propagated (third-order terms included).
    ``loss`` must have been computed from the model's parameters with a graph. Its expectation over the
    probes is ``Tr(H)``."""
    _check_int("n_probes", n_probes, 1)
    generator = _check_generator(generator)
    if not isinstance(loss, Tensor) or loss.ndim != 0:
        raise ValueError(f"loss must be a scalar tensor, got {type(loss).__name__} "
                         f"{tuple(loss.shape) if isinstance(loss, Tensor) else ''}")
    if not loss.requires_grad:
        raise ValueError("loss does not require grad: compute it from the model's parameters, with grad enabled")
    ps = [p for _, p in hessian_params(model, params)]
    grads = torch.autograd.grad(loss, ps, create_graph=True, allow_unused=True)
    pairs = [(g, p) for g, p in zip(grads, ps) if g is not None and g.requires_grad]
    total = loss.new_zeros(())
    if not pairs:
        return total
    gs, ps = [g for g, _ in pairs], [p for _, p in pairs]
    for i in range(n_probes):
        zs = [torch.randint(0, 2, p.shape, generator=generator).to(device=p.device, dtype=p.dtype) * 2 - 1
              for p in ps]
        gz = sum((g * z).sum() for g, z in zip(gs, zs))
        hz = torch.autograd.grad(gz, ps, create_graph=True, retain_graph=True, allow_unused=True)
        total = total + sum((h * z).sum() for h, z in zip(hz, zs) if h is not None)
    return total / n_probes


def hessian_regularizer(lam: float, params: ParamSelection = None, n_probes: int = 1, seed: int = 0,
                        loss_fn: LossFn | None = None) -> Callable[[nn.Module, Tensor, Tensor], Tensor]:
    """A ``regularizer(model, x, y) -> lam * Tr(H)`` for :func:`bitlab.train.fit` (Pranto et al. 2025),
    with ``Tr(H)`` of ``loss_fn(model(x), y)`` (cross-entropy by default) estimated by :func:`trace_penalty`
    from its own generator seeded with ``seed`` (fresh probes each call). ``params`` restricts the penalty,
    e.g. to the last layers (``params="3.*"``)."""
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam >= 0:
        raise ValueError(f"lam must be a number >= 0, got {lam!r}")
    _check_int("n_probes", n_probes, 1)
    loss_fn = loss_fn if loss_fn is not None else nn.functional.cross_entropy
    gen = torch.Generator().manual_seed(seed)

    def regularizer(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return lam * trace_penalty(model, loss_fn(model(x), y), params=params, n_probes=n_probes, generator=gen)

    return regularizer


# ------------------------------------------------------------------------------- single-flip prediction

def _mean_loss(model: nn.Module, loss_fn: LossFn, batches: Any) -> float:
    """The size-weighted mean of the batch losses (the loss the Hessian operator differentiates)."""
    total, seen = 0.0, 0
    device = next(model.parameters()).device
    for x, y in batches:
        total += float(loss_fn(model(x.to(device)), y.to(device))) * len(y)
        seen += len(y)
    if not seen:
        raise ValueError("data must not be empty")
    return total / seen


def flip_loss_prediction(model: nn.Module, loss_fn: LossFn, data: Data, flips: pd.DataFrame,
                         observed: bool = True, mode: str = "check") -> pd.DataFrame:
    """Second-order Taylor prediction of the loss change caused by single-weight changes (e.g. bit flips).

    Each row of ``flips`` (columns ``param``, ``index``, ``flipped``, as in a bit census) sets weight
    ``index`` of parameter ``param`` (flat index) to ``flipped``, i.e. moves the weights by
    ``delta * e_i`` with ``delta = flipped - value``. The predicted change of the mean loss is
    ``g_i delta + 1/2 H_ii delta^2`` (``g`` the gradient, ``H_ii`` the exact diagonal element of the Hessian,
    ``(H e_i)_i`` by one Hessian-vector product per distinct weight) -- the quadratic model behind
    Hessian-aware training (Pranto et al. 2025): a small ``Tr(H) = sum_i H_ii`` makes every such term small.
    Returns a copy of ``flips`` with ``value, delta, grad, curvature, first_order, second_order, predicted``
    and, if ``observed``, ``observed`` = L(w + delta e_i) - L(w) measured with the weight set (restored
    bit for bit afterwards, also on an exception). The expansion is only meaningful for small ``delta``;
    non-finite ``flipped`` values give non-finite predictions."""
    if not isinstance(flips, pd.DataFrame):
        raise TypeError(f"flips must be a pandas DataFrame with columns param, index, flipped, "
                        f"got {type(flips).__name__}")
    missing = [c for c in ("param", "index", "flipped") if c not in flips.columns]
    if missing:
        raise ValueError(f"flips: columns {missing} are missing; expected param, index, flipped")
    if not isinstance(observed, bool):
        raise TypeError(f"observed must be a bool, got {type(observed).__name__}")
    out = flips.copy()
    if len(out) == 0:
        for c in ("value", "delta", "grad", "curvature", "first_order", "second_order", "predicted") + (
                ("observed",) if observed else ()):
            out[c] = pd.Series(dtype="float64")
        return out
    names = list(dict.fromkeys(out["param"].tolist()))
    named = dict(model.named_parameters())
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"flips: params {unknown} are not parameters of the model; allowed {sorted(named)}")
    with eval_mode(model, mode):
        op = _Hessian(model, loss_fn, data, names)
        sizes = {n: p.numel() for n, p in op.named}
        bad = [(n, i) for n, i in zip(out["param"], out["index"]) if not 0 <= int(i) < sizes[n]]
        if bad:
            raise ValueError(f"flips: index out of range for {bad[:3]} (param sizes {sizes})")
        offsets, start = {}, 0
        for n, p in op.named:
            offsets[n] = start
            start += p.numel()
        flat_pos = torch.tensor([offsets[n] + int(i) for n, i in zip(out["param"], out["index"])])
        # mean gradient over the data (size-weighted, as the Hessian operator)
        grad = torch.zeros(op.n, dtype=torch.float64)
        seen = 0
        batches = op.batches
        for x, y in batches:
            loss = loss_fn(model(x.to(op.device)), y.to(op.device))
            gs = torch.autograd.grad(loss, op.params, allow_unused=True)
            flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, op.params)])
            grad += flat.detach().to(device="cpu", dtype=torch.float64) * len(y)
            seen += len(y)
        grad /= seen
        # exact diagonal elements, one product per distinct weight
        diag: dict[int, float] = {}
        for j in sorted(set(flat_pos.tolist())):
            e = torch.zeros(op.n, dtype=torch.float64)
            e[j] = 1.0
            diag[j] = float(op(e)[j])
        flat_values = torch.cat([p.detach().reshape(-1) for p in op.params])
        value = flat_values[flat_pos].to(torch.float64)
        delta = torch.tensor(out["flipped"].to_numpy(dtype="float64")) - value
        g = grad[flat_pos]
        h = torch.tensor([diag[j] for j in flat_pos.tolist()], dtype=torch.float64)
        out["value"] = value.numpy()
        out["delta"] = delta.numpy()
        out["grad"] = g.numpy()
        out["curvature"] = h.numpy()
        out["first_order"] = (g * delta).numpy()
        out["second_order"] = (0.5 * h * delta ** 2).numpy()
        out["predicted"] = out["first_order"] + out["second_order"]
        if observed:
            with torch.no_grad():
                base = _mean_loss(model, loss_fn, batches)
                changes = []
                for n, i, new in zip(out["param"], out["index"], out["flipped"]):
                    w = named[n].data.view(-1)
                    old = w[int(i)].clone()
                    try:
                        w[int(i)] = float(new)
                        changes.append(_mean_loss(model, loss_fn, batches) - base)
                    finally:
                        w[int(i)] = old
            out["observed"] = changes
    return out
