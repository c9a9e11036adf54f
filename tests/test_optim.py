"""SAM / ASAM / SAR against hand-computed steps on quadratics (numpy references), BatchNorm statistics,
checkpoints, and the closure contract of bitlab.train.fit."""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bitlab.training.optim import SAM, SAR, frozen_bn, hit_fraction

DT = torch.float64


# -- a separable quadratic f(w) = sum_j 0.5 w_j^T A_j w_j over two parameter tensors --------------------------


def _spd(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = rng.normal(size=(n, n))
    return m @ m.T + n * np.eye(n)


A1, A2 = _spd(3, 1), _spd(4, 2)
W1 = np.array([1.0, -2.0, 0.5])
W2 = np.array([0.0, 3.0, -1.0, 0.25])  # stored as a 2x2 tensor, flattened in A2's order


def _quadratic_params():
    return nn.Parameter(torch.tensor(W1, dtype=DT)), nn.Parameter(torch.tensor(W2, dtype=DT).reshape(2, 2))


def _closure(opt, p1, p2, calls=None):
    a1, a2 = torch.tensor(A1, dtype=DT), torch.tensor(A2, dtype=DT)

    def closure():
        opt.zero_grad()
        v2 = p2.reshape(-1)
        loss = 0.5 * p1 @ a1 @ p1 + 0.5 * v2 @ a2 @ v2
        loss.backward()
        if calls is not None:
            calls.append(float(loss.detach()))
        return loss

    return closure


def _two_groups(cls, lr1=0.1, lr2=0.2, **kw):
    p1, p2 = _quadratic_params()
    opt = cls([{"params": [p1], "lr": lr1}, {"params": [p2], "lr": lr2}], torch.optim.SGD, **kw)
    return opt, p1, p2


def _hand_sam(rho, lr1, lr2, adaptive=False, eta=0.0, global_norm=True):
    """Foret et al. eq. 2 / Kwon et al. ASAM, then an SGD step with the gradient at w + eps (numpy)."""
    g1, g2 = A1 @ W1, A2 @ W2
    t1 = np.abs(W1) + eta if adaptive else np.ones(3)
    t2 = np.abs(W2) + eta if adaptive else np.ones(4)
    if global_norm:
        n1 = n2 = np.sqrt(np.sum((t1 * g1) ** 2) + np.sum((t2 * g2) ** 2))
    else:
        n1, n2 = np.linalg.norm(t1 * g1), np.linalg.norm(t2 * g2)
    e1, e2 = rho * t1**2 * g1 / n1, rho * t2**2 * g2 / n2
    return W1 - lr1 * A1 @ (W1 + e1), W2 - lr2 * A2 @ (W2 + e2)


def test_sam_step_matches_hand_computation_with_global_norm():
    opt, p1, p2 = _two_groups(SAM, rho=0.05)
    calls = []
    loss = opt.step(_closure(opt, p1, p2, calls))
    h1, h2 = _hand_sam(0.05, 0.1, 0.2)
    np.testing.assert_allclose(p1.detach().numpy(), h1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p2.detach().numpy().reshape(-1), h2, rtol=1e-12, atol=1e-12)
    # one norm over both groups, not one per group (the two readings give different steps here)
    l1, _ = _hand_sam(0.05, 0.1, 0.2, global_norm=False)
    assert not np.allclose(h1, l1, rtol=1e-6, atol=0)
    # the closure ran twice; the step returns the loss at w, the second call was at w + eps (higher)
    assert len(calls) == 2 and float(loss.detach()) == calls[0]
    assert calls[0] == pytest.approx(0.5 * W1 @ A1 @ W1 + 0.5 * W2 @ A2 @ W2, rel=1e-12)
    assert calls[1] > calls[0]


def test_asam_step_matches_hand_computation():
    opt, p1, p2 = _two_groups(SAM, rho=0.5, adaptive=True, eta=0.01)
    opt.step(_closure(opt, p1, p2))
    h1, h2 = _hand_sam(0.5, 0.1, 0.2, adaptive=True, eta=0.01)
    np.testing.assert_allclose(p1.detach().numpy(), h1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p2.detach().numpy().reshape(-1), h2, rtol=1e-12, atol=1e-12)
    s1, _ = _hand_sam(0.5, 0.1, 0.2)  # plain SAM would differ
    assert not np.allclose(h1, s1, rtol=1e-6, atol=0)


def test_sam_with_momentum_two_steps_match_hand_computation():
    p1, p2 = _quadratic_params()
    opt = SAM([p1, p2], torch.optim.SGD, rho=0.1, lr=0.05, momentum=0.9)
    closure = _closure(opt, p1, p2)
    w = np.concatenate([W1, W2])
    a = np.block([[A1, np.zeros((3, 4))], [np.zeros((4, 3)), A2]])
    buf = None
    for _ in range(2):
        opt.step(closure)
        g = a @ w
        d = a @ (w + 0.1 * g / np.linalg.norm(g))
        buf = d if buf is None else 0.9 * buf + d
        w = w - 0.05 * buf
    got = np.concatenate([p1.detach().numpy(), p2.detach().numpy().reshape(-1)])
    np.testing.assert_allclose(got, w, rtol=1e-12, atol=1e-12)


@given(
    shapes=st.lists(st.tuples(st.integers(1, 4), st.integers(1, 4)), min_size=1, max_size=4),
    rho=st.floats(1e-3, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_sam_perturbation_has_global_norm_rho_and_is_undone_exactly(shapes, rho, seed):
    g = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=DT)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=DT)
    before = [p.detach().clone() for p in params]
    opt = SAM([{"params": [p]} for p in params], torch.optim.SGD, rho=rho, lr=0.0)
    opt.first_step()
    dist = math.sqrt(sum(float(((p.detach() - b) ** 2).sum()) for p, b in zip(params, before)))
    assert dist == pytest.approx(rho, rel=1e-9)
    opt.second_step()  # lr = 0: the weights must come back bit for bit
    assert all(torch.equal(p, b) for p, b in zip(params, before))


def test_closure_is_required():
    opt, _, _ = _two_groups(SAM)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
    with pytest.raises(ValueError, match="first_step"):
        SAR([nn.Parameter(torch.ones(2))], torch.optim.SGD, lr=0.1).step()


@pytest.mark.parametrize("rho", [0, -0.1, math.nan, math.inf, "0.05", True])
@pytest.mark.parametrize("cls", [SAM, SAR])
def test_bad_rho(cls, rho):
    with pytest.raises(ValueError, match="rho"):
        cls([nn.Parameter(torch.ones(2))], torch.optim.SGD, rho=rho, lr=0.1)


def test_bad_rho_in_a_param_group():
    with pytest.raises(ValueError, match="rho"):
        SAM([{"params": [nn.Parameter(torch.ones(2))], "rho": -1.0}], torch.optim.SGD, lr=0.1)


@pytest.mark.parametrize("base", [torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=0.1), "sgd", len, nn.Linear, SAM])
def test_base_optimizer_must_be_an_optimizer_class(base):
    with pytest.raises(TypeError, match="base_optimizer"):
        SAM([nn.Parameter(torch.ones(2))], base, lr=0.1)


def test_other_bad_arguments():
    p = [nn.Parameter(torch.ones(2))]
    with pytest.raises(ValueError, match="eta"):
        SAM(p, torch.optim.SGD, adaptive=True, eta=-0.01, lr=0.1)
    with pytest.raises(TypeError, match="adaptive"):
        SAM(p, torch.optim.SGD, adaptive="yes", lr=0.1)
    with pytest.raises(TypeError, match="model"):
        SAM(p, torch.optim.SGD, model="net", lr=0.1)
    for f in (0, -0.5, 1.5, math.nan):
        with pytest.raises(ValueError, match="fraction"):
            SAR(p, torch.optim.SGD, fraction=f, lr=0.1)


def test_step_order_is_enforced():
    opt, p1, p2 = _two_groups(SAM)
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()
    _closure(opt, p1, p2)()
    opt.first_step()
    with pytest.raises(RuntimeError, match="second_step"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="perturbed"):
        opt.state_dict()


def test_weights_restored_when_second_closure_raises():
    opt, p1, p2 = _two_groups(SAM, rho=0.5)
    before = [p1.detach().clone(), p2.detach().clone()]
    inner = _closure(opt, p1, p2)
    calls = []

    def closure():
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return inner()

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert torch.equal(p1, before[0]) and torch.equal(p2, before[1])
    opt.step(inner)  # and the optimizer is usable afterwards


def test_lr_scheduler_drives_the_base_optimizer():
    opt, p1, p2 = _two_groups(SAM)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    opt.step(_closure(opt, p1, p2))
    sched.step()
    assert [g["lr"] for g in opt.base_optimizer.param_groups] == [0.05, 0.1]
    assert opt.param_groups is opt.base_optimizer.param_groups


# -- BatchNorm ------------------------------------------------------------------------------------------------


def _bn_net(momentum=0.1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4, momentum=momentum),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 8 * 8, 8),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Linear(8, 3),
    )


def _batch():
    g = torch.Generator().manual_seed(3)
    return torch.rand(16, 1, 8, 8, generator=g), torch.randint(0, 3, (16,), generator=g)


def _bn_buffers(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("cls", [SAM, SAR])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_statistics_come_from_the_first_pass_only(cls, momentum):
    x, y = _batch()
    reference = _bn_net(momentum)
    reference.train()
    with torch.no_grad():
        reference(x)  # one plain forward pass in train mode
    expected = _bn_buffers(reference)

    def run(model_arg):
        model = _bn_net(momentum)
        model.train()
        opt = cls(model.parameters(), torch.optim.SGD, lr=0.1, model=model if model_arg else None)

        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
        return _bn_buffers(model)

    got = run(model_arg=True)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    unfrozen = run(model_arg=False)  # without model=, the perturbed pass moves the statistics as well
    assert not all(torch.equal(unfrozen[k], expected[k]) for k in expected)


def test_frozen_bn_restores_on_exception_and_keeps_batch_statistics():
    model = _bn_net()
    model.train()
    x, _ = _batch()
    before = _bn_buffers(model)
    out_plain = model(x).detach()
    after_one = _bn_buffers(model)
    with pytest.raises(KeyError):
        with frozen_bn(model):
            out_frozen = model(x)
            raise KeyError("x")
    assert all(torch.equal(a, b) for a, b in zip(_bn_buffers(model).values(), after_one.values()))
    assert not all(torch.equal(a, b) for a, b in zip(before.values(), after_one.values()))
    # the forward inside still normalizes with the batch statistics (same output as a plain train pass)
    torch.testing.assert_close(out_frozen.detach(), out_plain, rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="model"):
        with frozen_bn(object()):
            pass


# -- checkpoints ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cls,kw", [(SAM, {"rho": 0.07}), (SAM, {"rho": 0.5, "adaptive": True}), (SAR, {"rho": 0.5, "fraction": 0.1})]
)
def test_state_dict_round_trip(cls, kw):
    x, y = _batch()
    model_a = _bn_net()
    opt_a = cls(model_a.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, model=model_a, **kw)

    def closure_for(model, opt):
        def closure():
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        return closure

    for _ in range(3):
        opt_a.step(closure_for(model_a, opt_a))
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    model_b = copy.deepcopy(model_a)
    opt_b = cls(model_b.parameters(), torch.optim.SGD, lr=1.0, momentum=0.0, model=model_b, rho=3.0)
    buf.seek(0)
    opt_b.load_state_dict(torch.load(buf))
    assert opt_b.param_groups is opt_b.base_optimizer.param_groups and opt_b.state is opt_b.base_optimizer.state
    assert opt_b.param_groups[0]["rho"] == kw["rho"] and opt_b.param_groups[0]["lr"] == 0.05
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(opt_a.state[pa]["momentum_buffer"], opt_b.state[pb]["momentum_buffer"])
    opt_a.step(closure_for(model_a, opt_a))
    opt_b.step(closure_for(model_b, opt_b))
    for (na, ta), (nb, tb) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert na == nb and torch.equal(ta, tb), na


# -- SAR ------------------------------------------------------------------------------------------------------


def _hand_sar(rho, fraction, eta):
    """Our reading of SAR: top-k of |g| * rho * (|w| + eta) over all weights, eps = sign(g) * rho * (|w| + eta)."""
    w = np.concatenate([W1, W2])
    g = np.concatenate([A1 @ W1, A2 @ W2])
    m = rho * (np.abs(w) + eta)
    k = math.ceil(fraction * w.size)
    top = np.argsort(-np.abs(g) * m)[:k]
    eps = np.zeros_like(w)
    eps[top] = np.sign(g[top]) * m[top]
    return w, eps, top


def test_sar_perturbation_and_step_match_hand_computation():
    rho, fraction, eta = 0.5, 0.3, 0.01  # 7 weights -> k = ceil(2.1) = 3
    opt, p1, p2 = _two_groups(SAR, rho=rho, fraction=fraction, eta=eta)
    w, eps, top = _hand_sar(rho, fraction, eta)
    scores = np.abs(np.concatenate([A1 @ W1, A2 @ W2])) * rho * (np.abs(w) + eta)
    assert len(set(np.round(scores, 9))) == 7  # no ties, so the top-k is unambiguous
    _closure(opt, p1, p2)()
    opt.first_step()
    got = np.concatenate([p1.detach().numpy(), p2.detach().numpy().reshape(-1)]) - w
    np.testing.assert_allclose(got, eps, rtol=1e-12, atol=1e-15)
    assert np.count_nonzero(got) == 3
    # shape of a bit flip: the hit weights move by rho * (|w| + eta); W2[0] = 0 can be hit through eta
    np.testing.assert_allclose(np.abs(got[top]), rho * (np.abs(w[top]) + eta), rtol=1e-12)

    opt, p1, p2 = _two_groups(SAR, rho=rho, fraction=fraction, eta=eta)
    opt.step(_closure(opt, p1, p2))
    a = np.block([[A1, np.zeros((3, 4))], [np.zeros((4, 3)), A2]])
    lr = np.array([0.1] * 3 + [0.2] * 4)
    expected = w - lr * (a @ (w + eps))
    got = np.concatenate([p1.detach().numpy(), p2.detach().numpy().reshape(-1)])
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@given(
    n=st.integers(1, 60),
    fraction=st.floats(1e-3, 1.0),
    rho=st.floats(1e-2, 4.0),
    eta=st.floats(0, 0.1),
    seed=st.integers(0, 2**31 - 1),
)
def test_sar_perturbation_is_sparse_weight_scaled_and_worst_case(n, fraction, rho, eta, seed):
    g = torch.Generator().manual_seed(seed)
    sizes = [n // 2, n - n // 2]
    params = [nn.Parameter(torch.randn(s, generator=g, dtype=DT)) for s in sizes if s]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g, dtype=DT)
    opt = SAR(params, torch.optim.SGD, rho=rho, fraction=fraction, eta=eta, lr=0.1)
    eps = torch.cat([e.reshape(-1) for _, e in opt.perturbation()])
    w = torch.cat([p.detach().reshape(-1) for p in params])
    grad = torch.cat([p.grad.reshape(-1) for p in params])
    m = rho * (w.abs() + eta)
    k = max(1, math.ceil(fraction * n - 1e-9))
    hit = eps != 0
    assert int(hit.sum()) == k  # random gradients are nonzero
    torch.testing.assert_close(eps[hit], grad[hit].sign() * m[hit], rtol=0, atol=0)
    score = grad.abs() * m
    if k < n:
        assert score[hit].min() >= score[~hit].max()
    # it is the worst case of its set to first order: no other k-sparse box vertex increases g.eps more
    assert float(grad @ eps) == pytest.approx(float(score.topk(k).values.sum()), rel=1e-12)


def test_hit_fraction():
    assert hit_fraction(1e-4, 8) == pytest.approx(1 - (1 - 1e-4) ** 8, rel=1e-12)
    assert hit_fraction(1e-12, 32) == pytest.approx(32e-12, rel=1e-9)
    assert hit_fraction(0.0) == 0.0 and hit_fraction(1.0, 8) == 1.0
    with pytest.raises(ValueError, match="ber"):
        hit_fraction(1.5)
    with pytest.raises(ValueError, match="width"):
        hit_fraction(1e-3, 0)


# -- through bitlab.training.fit -------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [SAM, SAR])
def test_fit_with_sam_equals_a_manual_two_pass_loop(cls):
    from bitlab import training as train

    g = torch.Generator().manual_seed(5)
    x, y = torch.rand(48, 1, 8, 8, generator=g), torch.randint(0, 3, (48,), generator=g)
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    model = _bn_net()
    twin = copy.deepcopy(model)
    df = train.fit(
        model,
        data,
        epochs=2,
        progress=False,
        optimizer=lambda p: cls(p, torch.optim.SGD, lr=0.1, momentum=0.9, model=model),
    )
    assert list(df["epoch"]) == [1, 2] and df["loss"].iloc[1] < df["loss"].iloc[0]

    opt = cls(twin.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    twin.train()
    for _ in range(2):
        for xb, yb in data:
            opt.zero_grad()
            nn.functional.cross_entropy(twin(xb), yb).backward()
            opt.first_step(zero_grad=True)
            with frozen_bn(twin):
                nn.functional.cross_entropy(twin(xb), yb).backward()
            opt.second_step()
    for (na, ta), (nb, tb) in zip(model.state_dict().items(), twin.state_dict().items()):
        assert na == nb and torch.equal(ta, tb), na
