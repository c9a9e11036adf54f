"""bitlab.landscape: loss slices against a numpy reference, weights restored bit for bit, direction
builders (filter normalization of Li et al. 2018, sparse multiplicative bit-flip-like directions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bitlab.curvature.landscape import bitflip_direction, loss_slice, random_direction


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3))


def _data(n: int = 40, seed: int = 1) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.utils.data.TensorDataset(x, y)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same_bits(model: nn.Module, snap: dict[str, torch.Tensor]) -> bool:
    return all(
        torch.equal(p.detach().view(torch.int32), snap[n].view(torch.int32)) for n, p in model.named_parameters()
    )


def _numpy_ce(w: np.ndarray, b: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    z = x @ w.T + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((z.argmax(axis=1) == y).mean())


def test_loss_slice_matches_numpy_reference():
    model, data = _linear(), _data()
    d = random_direction(model, torch.Generator().manual_seed(3), filter_normalized=False)
    alphas = [-1.0, 0.0, 0.5, 2.0]
    df = loss_slice(model, None, data, d, alphas)
    assert list(df.columns) == ["alpha", "loss", "accuracy"] and df["alpha"].tolist() == alphas
    w = model[1].weight.detach().double().numpy()
    b = model[1].bias.detach().double().numpy()
    dw, db = d["1.weight"].double().numpy(), d["1.bias"].double().numpy()
    x, y = data.tensors[0].double().numpy(), data.tensors[1].numpy()
    for a, loss, acc in zip(alphas, df["loss"], df["accuracy"]):
        ref_loss, ref_acc = _numpy_ce(w + a * dw, b + a * db, x, y)
        assert loss == pytest.approx(ref_loss, rel=1e-5, abs=1e-6)
        assert acc == pytest.approx(ref_acc)


def test_loss_slice_quadratic_in_alpha_for_mse():
    """For a linear model and a squared-error loss, L(alpha) is a parabola: third differences vanish."""
    model, data = _linear(), _data()
    d = random_direction(model, torch.Generator().manual_seed(4), filter_normalized=False)
    mse = lambda out, y: (out - nn.functional.one_hot(y, 3).float()).pow(2).sum(1).mean()  # noqa: E731
    loss = loss_slice(model, mse, data, d, [0.0, 1.0, 2.0, 3.0])["loss"].to_numpy()
    assert abs(loss[3] - 3 * loss[2] + 3 * loss[1] - loss[0]) < 1e-4 * loss.max()
    assert loss[2] - 2 * loss[1] + loss[0] > 0  # convex along any direction


def test_loss_slice_restores_weights_and_mode_even_on_error():
    model, data = _linear(), _data()
    model.train()
    snap = _snapshot(model)
    d = bitflip_direction(model, fraction=0.5, generator=torch.Generator().manual_seed(0))
    loss_slice(model, None, data, d, [0.3, -7.0])
    assert _same_bits(model, snap) and model.training

    calls = []

    def boom(out, y):
        calls.append(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        loss_slice(model, boom, data, d, [5.0])
    assert calls and _same_bits(model, snap) and model.training


def test_loss_slice_alpha_zero_is_clean_and_nonfinite_counts_wrong():
    model, data = _linear(), _data()
    d = {"1.weight": torch.full((3, 4), 2.0)}
    df = loss_slice(model, None, data, d, [0.0, 3e38])  # 3e38 * 2 overflows: inf weights, non-finite logits
    with torch.no_grad():
        out = model(data.tensors[0])
    assert df["loss"][0] == pytest.approx(float(nn.functional.cross_entropy(out, data.tensors[1])), rel=1e-6)
    assert df["accuracy"][0] == pytest.approx(float((out.argmax(1) == data.tensors[1]).float().mean()))
    assert df["accuracy"][1] == 0.0  # overflowed logits (inf/nan) are wrong predictions


def test_random_direction_filter_normalized():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 5, 3), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 4 * 4, 3))
    d = random_direction(model, torch.Generator().manual_seed(1))
    assert set(d) == {n for n, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        assert d[name].shape == p.shape
        if p.dim() == 1:
            assert torch.count_nonzero(d[name]) == 0
        else:
            rows_d = d[name].reshape(p.shape[0], -1).norm(dim=1)
            rows_w = p.detach().reshape(p.shape[0], -1).norm(dim=1)
            assert torch.allclose(rows_d, rows_w, rtol=1e-5)
    again = random_direction(model, torch.Generator().manual_seed(1))
    assert all(torch.equal(d[n], again[n]) for n in d)
    raw = random_direction(model, torch.Generator().manual_seed(1), filter_normalized=False)
    g = torch.Generator().manual_seed(1)
    assert all(torch.equal(raw[n], torch.randn(p.shape, generator=g)) for n, p in model.named_parameters())


def test_random_direction_params_selection():
    model = _linear()
    d = random_direction(model, params="1.weight")
    assert list(d) == ["1.weight"]


@given(fraction=st.floats(1e-3, 1.0), eta=st.sampled_from([0.0, 0.01]), seed=st.integers(0, 2**16))
def test_bitflip_direction_is_sparse_and_multiplicative(fraction, eta, seed):
    model = _linear(seed % 5)
    n = sum(p.numel() for p in model.parameters())
    d = bitflip_direction(model, fraction=fraction, eta=eta, generator=torch.Generator().manual_seed(seed))
    k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
    hits = sum(int(torch.count_nonzero(v)) for v in d.values())
    assert hits == k  # all weights are nonzero, so every hit has |d| > 0
    for name, p in model.named_parameters():
        v, w = d[name], p.detach()
        m = v != 0
        assert torch.equal(v[m].abs(), w[m].abs() + eta)
        if eta == 0.0:  # alpha = 1 doubles or zeroes each hit weight, exactly
            moved = (w + v)[m]
            assert torch.all((moved == 2 * w[m]) | (moved == 0))


def test_bitflip_direction_grow_and_determinism():
    model = _linear()
    d = bitflip_direction(model, fraction=0.5, signs="grow", generator=torch.Generator().manual_seed(2))
    for name, p in model.named_parameters():
        m = d[name] != 0
        assert torch.equal(torch.sign(d[name][m]), torch.sign(p.detach()[m]))
    a = bitflip_direction(model, 0.2, generator=torch.Generator().manual_seed(7))
    b = bitflip_direction(model, 0.2, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(a[n], b[n]) for n in a)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fraction=0.0), "fraction"),
        (dict(fraction=1.5), "fraction"),
        (dict(fraction=True), "fraction"),
        (dict(eta=-1.0), "eta"),
        (dict(signs="up"), "signs"),
    ],
)
def test_bitflip_direction_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bitflip_direction(_linear(), **kwargs)


def test_bad_input():
    model, data = _linear(), _data()
    d = random_direction(model)
    with pytest.raises(TypeError, match="generator"):
        random_direction(model, generator=3)
    with pytest.raises(ValueError, match="direction"):
        loss_slice(model, None, data, {}, [0.0])
    with pytest.raises(ValueError, match="direction"):
        loss_slice(model, None, data, {"nope": torch.zeros(1)}, [0.0])
    with pytest.raises(ValueError, match="direction"):
        loss_slice(model, None, data, {"1.weight": torch.zeros(2, 2)}, [0.0])
    with pytest.raises(ValueError, match="alphas"):
        loss_slice(model, None, data, d, [])
    with pytest.raises(ValueError, match="alphas"):
        loss_slice(model, None, data, d, [float("nan")])
    with pytest.raises(TypeError, match="loss_fn"):
        loss_slice(model, 3, data, d, [0.0])
