"""CUDA-related fixes checked on the CPU: the vmapped Hessian products fall back to columns on any
RuntimeError, a non-CPU generator is refused by name everywhere bitlab draws on the CPU, ``unflatten``
(so the eigenvectors) follows each parameter's device and dtype, and the census runs with cuDNN
autotuning off and the caller's flags restored."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from bitlab import curvature as bh
from bitlab.campaigns.census import bit_census
from bitlab.curvature.landscape import bitflip_direction, random_direction
from bitlab.curvature.products import HessianOperator
from bitlab.training.recipes import crop_flip
from bitlab.validate import check_cpu_generator

# ------------------------------------------------------------------------------- 1. vmap fallback


class _SquareGrad(torch.autograd.Function):
    """``2 x g``, the gradient of ``x^2``; its backward calls ``torch.equal``, which has no batching rule."""

    @staticmethod
    def forward(ctx, x, g):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x, g)
        return 2 * x * g

    @staticmethod
    def backward(ctx, gg):  # type: ignore[no-untyped-def]
        x, g = ctx.saved_tensors
        torch.equal(gg, gg)  # "Batching rule not implemented for aten::equal. We could not generate a fallback."
        return 2 * g * gg, 2 * x * gg


class _Square(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x * x

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        return _SquareGrad.apply(x, g)


class _SquareModule(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Square.apply(x)


def test_products_fall_back_to_columns_on_any_runtime_error_of_vmap():
    """An error without "vmap" in its message (a missing batching rule) falls back too, with a warning."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), _SquareModule(), nn.Linear(3, 2)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 2, (8,))
    V = torch.randn(HessianOperator(model, F.cross_entropy, (x, y)).n, 3, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="Batching rule not implemented") as info:  # the case is real
        HessianOperator(model, F.cross_entropy, (x, y)).matmat_vmap(V)
    assert "vmap" not in str(info.value)
    op = HessianOperator(model, F.cross_entropy, (x, y))
    with pytest.warns(RuntimeWarning, match="aten::equal"):
        out = op.matmat(V, vmap=True)
    assert op.n_hvp == 3 and op.vmap_error is not None and "aten::equal" in op.vmap_error
    ref = torch.stack([HessianOperator(model, F.cross_entropy, (x, y))(V[:, j]) for j in range(3)], dim=1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------- 2. CPU generators


class _CudaGenerator(torch.Generator):
    """A generator that says it is on CUDA (torch cannot build a non-CPU generator without a GPU)."""

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        return torch.device("cuda")


def _tiny() -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    return model, (torch.randn(6, 3), torch.randint(0, 2, (6,)))


def _penalty(g: torch.Generator) -> object:
    model, (x, y) = _tiny()
    return bh.trace_penalty(model, F.cross_entropy(model(x), y), generator=g)


def _curvature(fn: Callable[..., object], **kw: object) -> Callable[[torch.Generator], object]:
    def call(g: torch.Generator) -> object:
        model, data = _tiny()
        return fn(model, F.cross_entropy, data, generator=g, **kw)

    return call


CALLS: dict[str, Callable[[torch.Generator], object]] = {
    "random_direction": lambda g: random_direction(_tiny()[0], generator=g),
    "bitflip_direction": lambda g: bitflip_direction(_tiny()[0], generator=g),
    "top_eigenvalues lanczos": _curvature(bh.top_eigenvalues, max_iter=3),
    "top_eigenvalues power": _curvature(bh.top_eigenvalues, method="power", max_iter=3),
    "slq_nodes": _curvature(bh.slq_nodes, n_v=1, m=3),
    "hutchinson_trace": _curvature(bh.hutchinson_trace, n_probes=2),
    "trace_penalty": _penalty,
    "crop_flip": lambda g: crop_flip(torch.rand(2, 1, 4, 4), 1, generator=g),
}


@pytest.mark.parametrize("name", list(CALLS))
def test_a_non_cpu_generator_is_refused_by_name(name):
    with pytest.raises(ValueError, match=r"generator: a cuda generator.*CPU torch\.Generator\(\)"):
        CALLS[name](_CudaGenerator())
    CALLS[name](torch.Generator().manual_seed(0))  # a CPU generator is fine


def test_check_cpu_generator():
    g = torch.Generator()
    assert check_cpu_generator("generator", g) is g and check_cpu_generator("generator", None) is None
    with pytest.raises(ValueError, match="rng: a cuda generator"):
        check_cpu_generator("rng", _CudaGenerator())
    with pytest.raises(TypeError, match="rng: expected None or a torch.Generator"):
        check_cpu_generator("rng", 3)


# ------------------------------------------------------------------------ 3. unflatten's device


def test_unflatten_follows_each_tensors_device_and_dtype():
    like = [torch.empty(2, 3, device="meta", dtype=torch.float16), torch.empty(4, dtype=torch.float64)]
    out = bh.unflatten(torch.arange(10, dtype=torch.float64), like)
    assert [(t.device, t.dtype, t.shape) for t in out] == [(t.device, t.dtype, t.shape) for t in like]


def test_eigenvectors_have_the_parameters_device_and_dtype():
    model, (x, y) = _tiny()
    model.double()
    _, vecs, _ = bh.top_eigenvalues(model, F.cross_entropy, (x.double(), y), k=2, generator=torch.Generator())
    params = list(model.parameters())
    for vec in vecs:
        assert [(v.device, v.dtype, v.shape) for v in vec] == [(p.device, p.dtype, p.shape) for p in params]


# -------------------------------------------------------------------------------- 4. census cuDNN


class _Recorder(nn.Module):
    """Identity that records ``torch.backends.cudnn.benchmark`` at each call."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(torch.backends.cudnn.benchmark)
        return x


def test_census_runs_without_cudnn_autotuning_and_restores_the_flags():
    torch.manual_seed(0)
    rec = _Recorder()
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), rec, nn.Linear(4, 2)).eval()
    data = TensorDataset(torch.randn(10, 3), torch.randint(0, 2, (10,)))
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = True, False
    try:
        bit_census(model, data, bits=[30, 31], n_weights=2, progress=False)
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
        with pytest.raises(ValueError):  # restored after an error too
            bit_census(model, data, batch_flips=0)
        assert (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic) == (True, False)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before
    assert rec.seen and not any(rec.seen)
