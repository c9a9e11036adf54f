"""flip_loss_prediction: exact gradient and Hessian diagonal of a tiny model, Taylor error of third order
against the observed (finite) loss change, restoration of the weights, input checks."""

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import bitlab as bl
from bitlab.curvature import flip_loss_prediction


def tiny(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(24, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (24,), generator=g)
    return model, (x, y)


def exact_grad_hessian(model, batch):
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(flat):
        ps, i = {}, 0
        for n, s in zip(names, shapes):
            k = s.numel()
            ps[n] = flat[i : i + k].reshape(s)
            i += k
        return F.cross_entropy(functional_call(model, ps, (batch[0],)), batch[1])

    g = torch.autograd.functional.jacobian(loss, flat0)
    H = torch.autograd.functional.hessian(loss, flat0)
    offsets, i = {}, 0
    for n, s in zip(names, shapes):
        offsets[n] = i
        i += s.numel()
    return g, H, offsets


def test_grad_and_curvature_match_exact_hessian():
    model, batch = tiny()
    g, H, off = exact_grad_hessian(model, batch)
    flips = pd.DataFrame(
        {
            "param": ["0.weight", "0.bias", "2.weight", "2.weight", "2.bias"],
            "index": [5, 1, 0, 11, 2],
            "flipped": [0.3, -0.2, 1.0, 0.0, 0.5],
        }
    )
    out = flip_loss_prediction(model, F.cross_entropy, batch, flips)
    pos = [off[n] + i for n, i in zip(flips.param, flips["index"])]
    torch.testing.assert_close(torch.tensor(out.grad.to_numpy()), g[pos], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.tensor(out.curvature.to_numpy()), H[pos, pos], rtol=1e-10, atol=1e-12)
    values = torch.cat([p.detach().reshape(-1) for p in model.parameters()])[pos]
    torch.testing.assert_close(torch.tensor(out.delta.to_numpy()), torch.tensor(flips.flipped.to_numpy()) - values)
    assert (out.predicted == out.first_order + out.second_order).all()


def test_taylor_error_is_third_order():
    model, batch = tiny(1)
    named = dict(model.named_parameters())
    errors = []
    for step in (1e-2, 5e-3, 2.5e-3):
        rows = [
            {"param": n, "index": i, "flipped": float(named[n].detach().reshape(-1)[i]) + step}
            for n in ("0.weight", "2.weight")
            for i in (0, 3, 7)
        ]
        out = flip_loss_prediction(model, F.cross_entropy, batch, pd.DataFrame(rows))
        first_err = (out.observed - out.first_order).abs().max()
        err = (out.observed - out.predicted).abs().max()
        assert err < first_err  # the curvature term helps
        errors.append(err)
    # halving delta divides a third-order remainder by about 8 (second order would give 4)
    assert errors[0] / errors[1] > 6 and errors[1] / errors[2] > 6


def test_bit_flip_rows_from_a_census_frame():
    torch.manual_seed(0)
    model = bl.models.mlp(in_features=4, hidden=(5,), num_classes=3)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    w = model[1].weight.detach().reshape(-1)
    # mantissa-LSB flips: tiny changes, where the quadratic model must be nearly exact
    words = w.view(torch.int32) ^ 1
    flips = pd.DataFrame({"param": "1.weight", "index": range(w.numel()), "flipped": words.view(torch.float32)})
    out = flip_loss_prediction(model, F.cross_entropy, (x, y), flips)
    assert (out.delta.abs() > 0).all() and (out.delta.abs() < 1e-6).all()
    assert ((out.observed - out.predicted).abs() < 1e-5).all()


def test_model_restored_bit_for_bit_also_on_error():
    model, batch = tiny(2)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flips = pd.DataFrame({"param": ["0.weight"] * 3, "index": [0, 1, 2], "flipped": [5.0, float("inf"), -3.0]})
    flip_loss_prediction(model, F.cross_entropy, batch, flips)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    calls = {"n": 0}

    def flaky(out, y):
        calls["n"] += 1
        if calls["n"] > 4:  # fail while a weight is changed
            raise RuntimeError("boom")
        return F.cross_entropy(out, y)

    with pytest.raises(RuntimeError, match="boom"):
        flip_loss_prediction(model, flaky, batch, flips)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


def test_observed_false_and_empty():
    model, batch = tiny()
    flips = pd.DataFrame({"param": ["2.bias"], "index": [0], "flipped": [1.0]})
    assert "observed" not in flip_loss_prediction(model, F.cross_entropy, batch, flips, observed=False)
    empty = flip_loss_prediction(model, F.cross_entropy, batch, flips.iloc[:0])
    assert len(empty) == 0 and "predicted" in empty and "observed" in empty


def test_bad_input():
    model, batch = tiny()
    with pytest.raises(TypeError, match="flips"):
        flip_loss_prediction(model, F.cross_entropy, batch, [("0.weight", 0, 1.0)])
    with pytest.raises(ValueError, match="flipped"):
        flip_loss_prediction(model, F.cross_entropy, batch, pd.DataFrame({"param": ["0.weight"], "index": [0]}))
    with pytest.raises(ValueError, match="not parameters"):
        flip_loss_prediction(
            model, F.cross_entropy, batch, pd.DataFrame({"param": ["9.weight"], "index": [0], "flipped": [1.0]})
        )
    with pytest.raises(ValueError, match="index out of range"):
        flip_loss_prediction(
            model, F.cross_entropy, batch, pd.DataFrame({"param": ["2.bias"], "index": [3], "flipped": [1.0]})
        )
    with pytest.raises(TypeError, match="observed"):
        flip_loss_prediction(
            model,
            F.cross_entropy,
            batch,
            pd.DataFrame({"param": ["2.bias"], "index": [0], "flipped": [1.0]}),
            observed=1,
        )
