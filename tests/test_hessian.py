"""bitlab.hessian against the exact Hessian of a tiny float64 MLP (torch.autograd.functional.hessian)."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from references import flat_hessian
from torch import nn
from torch.func import functional_call
from torch.utils.data import DataLoader, TensorDataset

from bitlab import curvature as bh
from bitlab.curvature.products import HessianOperator
from bitlab.zoo.models import small_cnn

LOSS = F.cross_entropy


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """Dense Hessian of the mean cross-entropy w.r.t. the named parameters (flattened in model order)."""
    return flat_hessian(model, lambda ps: LOSS(functional_call(model, ps, (x,)), y), names)


@pytest.fixture(scope="module")
def setup():
    """A 3-6-3 tanh MLP (45 parameters), trained to near a minimum, its batch and exact Hessian."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    g = gen(0)
    x = torch.randn(40, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (40,), generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        LOSS(model(x), y).backward()
        opt.step()
    model.eval()
    H = exact_hessian(model, x, y)
    return model, x, y, H, torch.linalg.eigvalsh(H)


def rand_vec(model, seed):
    g = gen(seed)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in model.parameters()]


# ------------------------------------------------------------------------------------------------ hvp


def test_hvp_equals_exact_hessian_times_v(setup):
    model, x, y, H, _ = setup
    v = rand_vec(model, 1)
    hv = bh.hvp(model, LOSS, (x, y), v)
    assert [t.shape for t in hv] == [p.shape for p in model.parameters()]
    torch.testing.assert_close(bh.flatten(hv), H @ bh.flatten(v), rtol=1e-10, atol=1e-12)
    flat = bh.hvp(model, LOSS, (x, y), bh.flatten(v))  # flat in, flat out
    torch.testing.assert_close(flat, H @ bh.flatten(v), rtol=1e-10, atol=1e-12)


def test_hvp_over_loader_is_size_weighted_average(setup):
    model, x, y, H, _ = setup
    v = bh.flatten(rand_vec(model, 2))
    ds = TensorDataset(x, y)
    uneven = DataLoader(ds, batch_size=16)  # 16, 16, 8: an unweighted mean of batches would be wrong
    torch.testing.assert_close(bh.hvp(model, LOSS, uneven, v), H @ v, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(bh.hvp(model, LOSS, ds, v), H @ v, rtol=1e-10, atol=1e-12)


def test_hvp_on_selected_params_is_the_diagonal_block(setup):
    model, x, y, H, _ = setup
    names = ["2.weight", "2.bias"]
    block = exact_hessian(model, x, y, names)
    sizes = [p.numel() for p in model.parameters()]
    start = sum(sizes[:2])
    torch.testing.assert_close(block, H[start:, start:])
    v = [
        torch.randn(model[2].weight.shape, dtype=torch.float64, generator=gen(3)),
        torch.randn(model[2].bias.shape, dtype=torch.float64, generator=gen(4)),
    ]
    for sel in (names, "2.*", lambda n, p: n.startswith("2.")):
        hv = bh.hvp(model, LOSS, (x, y), v, params=sel)
        torch.testing.assert_close(bh.flatten(hv), block @ bh.flatten(v), rtol=1e-10, atol=1e-12)


@settings(max_examples=15)
@given(st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1))
def test_hvp_is_symmetric_and_flatten_round_trips(setup, s1, s2):
    model, x, y, _, _ = setup
    u, v = rand_vec(model, s1), rand_vec(model, s2)
    hu, hv = bh.hvp(model, LOSS, (x, y), u), bh.hvp(model, LOSS, (x, y), v)
    assert math.isclose(
        float(bh.flatten(u) @ bh.flatten(hv)), float(bh.flatten(v) @ bh.flatten(hu)), rel_tol=1e-9, abs_tol=1e-12
    )
    back = bh.unflatten(bh.flatten(u), u)
    assert all(torch.equal(a, b) for a, b in zip(back, u))


# ---------------------------------------------------------------------------------------- eigenvalues


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("k", [1, 3])
def test_top_eigenvalues_match_eigvalsh(setup, method, k):
    model, x, y, H, ev = setup
    top = ev.flip(0)[:k]
    # precondition for power iteration (largest magnitude): the top-k are also the largest in magnitude
    assert torch.equal(ev.abs().sort(descending=True).values[:k], top)
    tol = 1e-3 if method == "lanczos" else 1e-7  # power's rule is on the change, not the error
    vals, vecs, n_hvp = bh.top_eigenvalues(
        model, LOSS, (x, y), k=k, method=method, tol=tol, max_iter=2000, generator=gen(5)
    )
    assert vals.shape == (k,) and len(vecs) == k and n_hvp >= k
    assert torch.all((vals - top).abs() <= 1e-3 * top.abs()), (vals, top)
    for lam, vec in zip(vals, vecs):  # each returned vector is a (near) eigenvector of H
        v = bh.flatten(vec)
        assert math.isclose(float(v.norm()), 1.0, rel_tol=1e-9)
        assert float((H @ v - lam * v).norm()) <= 0.05 * float(lam)


def test_lanczos_needs_fewer_products_than_power(setup):
    model, x, y, _, _ = setup
    _, _, n_l = bh.top_eigenvalues(model, LOSS, (x, y), k=1, method="lanczos", generator=gen(6))
    _, _, n_p = bh.top_eigenvalues(model, LOSS, (x, y), k=1, method="power", generator=gen(6))
    assert n_l < n_p


def test_lanczos_full_spectrum_with_repeated_zero_eigenvalues(setup):
    """k = n: Lanczos must restart after breakdown to recover every eigenvalue (the softmax has exact
    zero-curvature directions, so eigenvalue 0 is repeated)."""
    model, x, y, _, ev = setup
    n = ev.numel()
    vals, _, n_hvp = bh.top_eigenvalues(model, LOSS, (x, y), k=n, max_iter=n, tol=0.0, generator=gen(7))
    torch.testing.assert_close(vals, ev.flip(0), rtol=0, atol=1e-9)
    assert n_hvp == n


# --------------------------------------------------------------------------------------------- trace


def hutchinson_variance(H: torch.Tensor) -> float:
    """Variance of z^T H z for Rademacher z: 2 (||H||_F^2 - sum_i H_ii^2)."""
    return float(2 * ((H**2).sum() - (H.diagonal() ** 2).sum()))


def test_hutchinson_covers_exact_trace_and_stderr_matches_theory(setup):
    model, x, y, H, _ = setup
    est = bh.hutchinson_trace(model, LOSS, (x, y), n_probes=2000, generator=gen(8))
    assert est.n_hvp == 2000 and est.samples.numel() == 2000
    assert math.isclose(est.mean, float(est.samples.mean()), rel_tol=1e-12)
    assert abs(est.mean - float(H.trace())) <= 3 * est.stderr
    assert math.isclose(est.stderr, math.sqrt(hutchinson_variance(H) / 2000), rel_tol=0.15)


def test_hutchinson_stopping_rule(setup):
    model, x, y, _, _ = setup
    est = bh.hutchinson_trace(model, LOSS, (x, y), tol=0.03, max_probes=5000, generator=gen(9))
    assert est.stderr <= 0.03 * abs(est.mean)
    assert 10 <= est.n_hvp < 5000 and est.n_hvp == est.samples.numel()
    # stopping as soon as allowed: one probe fewer would not have met the rule
    s = est.samples[:-1]
    if s.numel() >= 10:
        assert float(s.std()) / math.sqrt(s.numel()) > 0.03 * abs(float(s.mean()))


def test_hutchpp_exact_with_full_budget(setup):
    model, x, y, H, _ = setup
    n = H.shape[0]
    est = bh.hutchpp_trace(model, LOSS, (x, y), n_hvp=3 * n, generator=gen(10))
    assert est.n_hvp == 3 * n
    assert math.isclose(est.mean, float(H.trace()), rel_tol=1e-9)


def test_hutchpp_beats_hutchinson_at_equal_budget(setup):
    """Hutch++ with a budget about the number of parameters: within its error bars, and its mean squared
    error over seeds is well below Hutchinson's at the same number of products (decaying spectrum)."""
    model, x, y, H, _ = setup
    exact, budget = float(H.trace()), 45
    err_pp, err_h, outside = [], [], 0
    for s in range(12):
        pp = bh.hutchpp_trace(model, LOSS, (x, y), n_hvp=budget, generator=gen(100 + s))
        h = bh.hutchinson_trace(model, LOSS, (x, y), n_probes=budget, generator=gen(200 + s))
        assert pp.n_hvp == budget
        # the stderr comes from only 15 residual probes (heavy tails): count misses instead of failing on one
        outside += abs(pp.mean - exact) > 3 * pp.stderr
        err_pp.append((pp.mean - exact) ** 2)
        err_h.append((h.mean - exact) ** 2)
    assert outside <= 2
    assert sum(err_pp) < 0.25 * sum(err_h)


# -------------------------------------------------------------------------------------------- density


def test_slq_density_integrates_to_one_and_keeps_the_mean(setup):
    model, x, y, H, _ = setup
    n = H.shape[0]
    grid, dens = bh.slq_density(model, LOSS, (x, y), n_v=3, m=20, grid=4000, generator=gen(11))
    assert grid.shape == dens.shape == (4000,) and bool((dens >= 0).all())
    assert math.isclose(float(torch.trapezoid(dens, grid)), 1.0, abs_tol=1e-3)
    # first moment: the Gaussian smoothing keeps it; Lanczos gives e1^T T e1 = v^T H v / |v|^2 = z^T H z / n
    hutch = bh.hutchinson_trace(model, LOSS, (x, y), n_probes=3, generator=gen(11))
    assert math.isclose(float(torch.trapezoid(grid * dens, grid)), hutch.mean / n, rel_tol=1e-3)


def test_slq_nodes_with_full_lanczos_are_exact_eigenvalues(setup):
    model, x, y, _, ev = setup
    nodes, weights = bh.slq_nodes(model, LOSS, (x, y), n_v=2, m=ev.numel(), generator=gen(12))
    assert math.isclose(float(weights.sum()), 1.0, rel_tol=1e-12)
    assert float((nodes[:, None] - ev[None, :]).abs().min(dim=1).values.max()) <= 1e-8


# ------------------------------------------------------------------------------------------- per layer


def test_per_layer_traces_are_diagonal_block_traces(setup):
    model, x, y, H, _ = setup
    df = bh.per_layer(bh.hutchpp_trace, model, LOSS, (x, y), n_hvp=3 * 24, generator=gen(13))
    assert list(df["layer"]) == ["0", "2"] and list(df["n_params"]) == [24, 21]
    torch.testing.assert_close(
        torch.tensor(df["trace"].tolist(), dtype=torch.float64),
        torch.stack([H[:24, :24].trace(), H[24:, 24:].trace()]),
        rtol=1e-9,
        atol=1e-12,
    )
    eig = bh.per_layer(bh.top_eigenvalues, model, LOSS, (x, y), k=2, generator=gen(14))
    top = torch.linalg.eigvalsh(H[24:, 24:]).flip(0)[:2]
    assert math.isclose(eig["lambda_1"].iloc[1], float(top[0]), rel_tol=1e-3)
    assert math.isclose(eig["lambda_2"].iloc[1], float(top[1]), rel_tol=1e-3)


# ------------------------------------------------------------------------------------ trace penalty


def test_trace_penalty_expectation_is_the_trace(setup):
    model, x, y, H, _ = setup
    g = gen(15)
    samples = torch.tensor([bh.trace_penalty(model, LOSS(model(x), y), generator=g).item() for _ in range(600)])
    stderr = float(samples.std()) / math.sqrt(600)
    assert abs(float(samples.mean()) - float(H.trace())) <= 3 * stderr
    block = [
        bh.trace_penalty(model, LOSS(model(x), y), params="2.*", n_probes=4, generator=g).item() for _ in range(150)
    ]
    b = torch.tensor(block)
    assert abs(float(b.mean()) - float(H[24:, 24:].trace())) <= 3 * float(b.std()) / math.sqrt(150)


def test_trace_penalty_with_one_probe_is_the_quadratic_form(setup):
    """With one probe the penalty is z^T H z exactly, z redrawn here from the same seed in the penalty's
    documented draw order (one Rademacher tensor per parameter, in model order)."""
    model, x, y, H, _ = setup
    g = gen(16)
    pen = bh.trace_penalty(model, LOSS(model(x), y), generator=g).item()
    g = gen(16)
    z = torch.cat(
        [(torch.randint(0, 2, p.shape, generator=g) * 2 - 1).double().reshape(-1) for p in model.parameters()]
    )
    assert math.isclose(float(pen), float(z @ H @ z), rel_tol=1e-10)


def test_trace_penalty_gradient_matches_finite_differences(setup):
    model, x, y, _, _ = setup
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    model.load_state_dict(setup[0].state_dict())
    params = list(model.parameters())

    def penalty() -> torch.Tensor:
        return bh.trace_penalty(model, LOSS(model(x), y), n_probes=2, generator=gen(17))

    grads = torch.autograd.grad(penalty(), params)
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    d = rand_vec(model, 18)
    eps = 1e-5
    with torch.no_grad():
        for p, di in zip(params, d):
            p.add_(eps * di)
    up = penalty().item()
    with torch.no_grad():
        for p, di in zip(params, d):
            p.sub_(2 * eps * di)
    down = penalty().item()
    directional = sum(float((g * di).sum()) for g, di in zip(grads, d))
    assert math.isclose((up - down) / (2 * eps), directional, rel_tol=1e-5, abs_tol=1e-8)


def test_hessian_regularizer_in_fit():
    from bitlab.training import fit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    g = gen(1)
    x = torch.randn(64, 4, generator=g)
    ds = TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long())
    reg = bh.hessian_regularizer(0.1, params="2.*", seed=0)
    hist = fit(model, ds, epochs=2, regularizer=reg, progress=False)
    assert "penalty" in hist and bool(torch.isfinite(torch.tensor(hist["penalty"].tolist())).all())
    # the regularizer is lam * trace_penalty with its own seeded generator: reproducible from the seed
    a = bh.hessian_regularizer(0.1, seed=3)(model, x, ds.tensors[1])
    b = bh.hessian_regularizer(0.1, seed=3)(model, x, ds.tensors[1])
    assert torch.equal(a, b) and a.requires_grad


# -------------------------------------------------------------------------------------------- errors


def test_k_larger_than_number_of_params(setup):
    model, x, y, _, _ = setup
    with pytest.raises(ValueError, match="k"):
        bh.top_eigenvalues(model, LOSS, (x, y), k=46)
    with pytest.raises(ValueError, match="k"):
        bh.top_eigenvalues(model, LOSS, (x, y), k=0)
    with pytest.raises(ValueError, match="k must be <= the number of selected parameters \\(21\\)"):
        bh.top_eigenvalues(model, LOSS, (x, y), k=22, params="2.*")
    with pytest.raises(ValueError, match="method"):
        bh.top_eigenvalues(model, LOSS, (x, y), method="arnoldi")


def test_empty_params_selection(setup):
    model, x, y, _, _ = setup
    with pytest.raises(ValueError, match="params"):
        bh.hutchinson_trace(model, LOSS, (x, y), n_probes=2, params="fc*")
    with pytest.raises(ValueError, match="params"):
        bh.trace_penalty(model, LOSS(model(x), y), params=[])


@pytest.mark.parametrize("layer", [nn.BatchNorm1d(6), nn.Dropout(0.5)])
def test_train_mode_with_batchnorm_or_dropout(layer):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), layer, nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(16, 3, dtype=torch.float64, generator=gen(0)), torch.randint(0, 3, (16,), generator=gen(1))
    model.train()
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        bh.top_eigenvalues(model, LOSS, (x, y))
    with pytest.raises(ValueError, match="mode"):
        bh.hutchinson_trace(model, LOSS, (x, y), mode="train")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ref = bh.hutchpp_trace(model.eval(), LOSS, (x, y), n_hvp=3 * 45, generator=gen(2)).mean
    model.train()
    est = bh.hutchpp_trace(model, LOSS, (x, y), n_hvp=3 * 45, generator=gen(2), mode="eval")
    assert est.mean == ref
    assert all(m.training for m in model.modules())  # restored
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # no running-stat update


def test_other_bad_inputs(setup):
    model, x, y, _, _ = setup
    with pytest.raises(ValueError, match="n_hvp"):
        bh.hutchpp_trace(model, LOSS, (x, y), n_hvp=2)
    with pytest.raises(ValueError, match="n_probes"):
        bh.hutchinson_trace(model, LOSS, (x, y), n_probes=0)
    with pytest.raises(ValueError, match="sigma"):
        bh.slq_density(model, LOSS, (x, y), n_v=1, m=5, sigma=0.0)
    with pytest.raises(ValueError, match="vec"):
        bh.hvp(model, LOSS, (x, y), [torch.zeros(3)])
    with pytest.raises(ValueError, match="loss_fn"):
        bh.hvp(model, lambda o, t: F.cross_entropy(o, t, reduction="none"), (x, y), rand_vec(model, 0))
    with pytest.raises(TypeError, match="data"):
        bh.hvp(model, LOSS, (x, y, y), rand_vec(model, 0))
    with pytest.raises(ValueError, match="loss"):
        with torch.no_grad():
            bh.trace_penalty(model, LOSS(model(x), y))
    with pytest.raises(ValueError, match="lam"):
        bh.hessian_regularizer(-1.0)


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_zero_hessian_block_breakdown(method):
    """A parameter the loss does not use has an exactly zero Hessian block: Lanczos breaks down at once
    (beta = 0) and must restart rather than divide by zero."""
    torch.manual_seed(0)
    model = WithUnused().double()
    x, y = torch.randn(8, 3, dtype=torch.float64, generator=gen(0)), torch.randint(0, 2, (8,), generator=gen(1))
    vals, vecs, _ = bh.top_eigenvalues(model, LOSS, (x, y), k=3, method=method, params="unused.*", generator=gen(2))
    assert torch.equal(vals, torch.zeros(3, dtype=torch.float64))
    assert all(torch.isfinite(bh.flatten(v)).all() for v in vecs)


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_callback_sees_every_product(setup, method):
    model, x, y, _, _ = setup
    seen = []
    vals, _, n_hvp = bh.top_eigenvalues(
        model,
        LOSS,
        (x, y),
        k=2,
        method=method,
        generator=gen(19),
        callback=lambda n, est: seen.append((n, est.clone())),
    )
    first = 2 if method == "lanczos" else 1  # Lanczos reports once it has k Ritz values
    assert [n for n, _ in seen] == list(range(first, n_hvp + 1))
    assert math.isclose(float(seen[-1][1].max()), float(vals[0]), rel_tol=1e-12)


def test_batched_products_match_single_products(setup):
    """Hutchinson with fixed n_probes runs vmapped blocks of products; per-probe values must equal
    z^T H z of the exact Hessian, over one batch and over an uneven DataLoader alike."""
    model, x, y, H, _ = setup
    batch = bh.hutchinson_trace(model, LOSS, (x, y), n_probes=40, generator=gen(20))
    loader = bh.hutchinson_trace(
        model, LOSS, DataLoader(TensorDataset(x, y), batch_size=16), n_probes=40, generator=gen(20)
    )
    g = gen(20)
    Z = torch.stack([(torch.randint(0, 2, (45,), generator=g) * 2 - 1).double() for _ in range(40)])
    ref = ((Z @ H) * Z).sum(1)
    torch.testing.assert_close(batch.samples, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(loader.samples, ref, rtol=1e-10, atol=1e-12)


def test_products_fall_back_to_columns_where_vmap_cannot_run():
    """Max-pooling on a channels-last model cannot run inside vmap ("NYI: querying is_contiguous");
    the vmapped block of products falls back to one product per column, same values, same count."""
    torch.manual_seed(0)
    model = small_cnn().eval().to(memory_format=torch.channels_last)
    x, y = torch.rand(24, 1, 8, 8), torch.randint(0, 10, (24,))
    with pytest.raises(RuntimeError, match="vmap"):  # the limitation this guards against is real
        op = HessianOperator(model, LOSS, (x, y))
        op.matmat_vmap(torch.randn(op.n, 2, dtype=torch.float64), 32)
    op = HessianOperator(model, LOSS, (x, y))
    V = torch.randn(op.n, 3, dtype=torch.float64, generator=gen(1))
    with pytest.warns(RuntimeWarning, match="vmap"):
        cols = op.matmat(V, vmap=True)  # matmat vmaps off the CPU only by default: take that path here
    assert op.n_hvp == 3 and op.vmap_error is not None  # it tried vmap, fell back to columns
    ref = torch.stack([HessianOperator(model, LOSS, (x, y))(V[:, j]) for j in range(3)], dim=1)
    torch.testing.assert_close(cols, ref, rtol=1e-10, atol=1e-12)
    est = bh.hutchinson_trace(model, LOSS, (x, y), n_probes=6, generator=gen(2))
    assert est.n_hvp == 6 and math.isfinite(est.mean)


# -------------------------------------------------------------------------------------------- XTrace


def _direct_loo(A: torch.Tensor, omega: torch.Tensor, i: int) -> float:
    """Leave-one-out estimate ``i`` of XTrace written out with explicit matrices: Hutch++'s low-rank part
    on the span of every other column of ``A omega``, probe ``i`` on the rest."""
    keep = [j for j in range(omega.shape[1]) if j != i]
    Qi, _ = torch.linalg.qr(A @ omega[:, keep])
    w = omega[:, i] - Qi @ (Qi.T @ omega[:, i])
    return float(torch.trace(Qi.T @ A @ Qi) + w @ A @ w)


def test_xtrace_estimates_are_the_leave_one_out_hutchpp_estimates_and_exact_on_low_rank():
    g = torch.Generator().manual_seed(0)
    n, m = 30, 8
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = B + B.T  # symmetric, indefinite
    omega = torch.randint(0, 2, (n, m), generator=g).double() * 2 - 1
    est = bh.xtrace_estimates(omega, A @ omega, lambda q: A @ q)
    for i in range(m):
        assert math.isclose(float(est[i]), _direct_loo(A, omega, i), rel_tol=1e-9, abs_tol=1e-9)
    U, _ = torch.linalg.qr(torch.randn(n, m - 2, generator=g, dtype=torch.float64))
    low = U @ torch.diag(torch.tensor([5.0, -3.0, 2.0, 1.0, -0.5, 0.25], dtype=torch.float64)) @ U.T  # rank 6 < m-1
    est = bh.xtrace_estimates(omega, low @ omega, lambda q: low @ q)
    assert torch.allclose(est, torch.full((m,), float(torch.trace(low)), dtype=torch.float64), atol=1e-9)
    with pytest.raises(ValueError, match="omega"):
        bh.xtrace_estimates(omega[:, :1], (A @ omega)[:, :1], lambda q: A @ q)


def test_xtrace_on_a_model_is_xtrace_of_its_exact_hessian_and_beats_hutchpp(setup):
    model, x, y, H, _ = setup
    n, exact, budget = H.shape[0], float(H.trace()), 44
    est = bh.xtrace(model, LOSS, (x, y), n_hvp=budget, generator=gen(3))
    assert est.n_hvp == budget
    omega = torch.randint(0, 2, (budget // 2, n), generator=gen(3)).double().mul(2).sub(1).T  # the same probes
    ref = bh.xtrace_estimates(omega, H @ omega, lambda q: H @ q)
    assert math.isclose(est.mean, float(ref.mean()), rel_tol=1e-8)
    err_x, err_pp = [], []
    for s in range(12):
        err_x.append((bh.hessian_trace(model, LOSS, (x, y), n_hvp=budget, generator=gen(300 + s)).mean - exact) ** 2)
        pp = bh.hessian_trace(model, LOSS, (x, y), n_hvp=budget, method="hutch++", generator=gen(400 + s))
        err_pp.append((pp.mean - exact) ** 2)
    assert sum(err_x) < sum(err_pp)
    with pytest.raises(ValueError, match="method"):
        bh.hessian_trace(model, LOSS, (x, y), method="lanczos")
    with pytest.raises(ValueError, match="n_hvp"):
        bh.xtrace(model, LOSS, (x, y), n_hvp=3)


def test_xtrace_with_repeated_probes_is_the_leave_one_out_definition():
    """Two equal probes make ``A Omega`` rank-deficient for a full-rank ``A``: each estimate still uses
    the real span of the other probes' products, nothing else."""
    g = torch.Generator().manual_seed(5)
    n, m = 7, 4
    B = torch.randn(n, n, generator=g, dtype=torch.float64)
    A = B + B.T
    omega = torch.randint(0, 2, (n, m), generator=g).double() * 2 - 1
    omega[:, 1] = omega[:, 0]
    est = bh.xtrace_estimates(omega, A @ omega, lambda q: A @ q)
    for i in range(m):
        keep = [j for j in range(m) if j != i]
        left, sing, _ = torch.linalg.svd(A @ omega[:, keep], full_matrices=False)
        Qi = left[:, sing > 1e-10 * float(sing.max())]
        w = omega[:, i] - Qi @ (Qi.T @ omega[:, i])
        assert math.isclose(float(est[i]), float(torch.trace(Qi.T @ A @ Qi) + w @ A @ w), rel_tol=1e-9, abs_tol=1e-9)
