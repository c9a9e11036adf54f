"""Every zoo model (tests/zoo.py) through every entry point: each result checked against a naive
reference (a hand loop of flip, forward, restore), and the model given back bit for bit (parameters,
buffers and every submodule's mode). The regressor is scored by MSE, the dict-output model through
``output="logits"``, everything else by accuracy."""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from zoo import KIND, OUTPUT, ZOO, forward, same_as, snapshot

import bitlab as bl
from bitlab.campaigns import activation_sweep, ber_sweep, sweep_t
from bitlab.campaigns.attack import bit_flip_attack
from bitlab.campaigns.census import bit_census, naive_bit_census
from bitlab.campaigns.seeds import trial_generator
from bitlab.coverage import CoverageWarning
from bitlab.curvature.landscape import loss_slice, random_direction
from bitlab.evaluate import pick, score
from bitlab.inject import Store
from bitlab.training.adversarial import robust_accuracy
from bitlab.training.quant import quantize_model

NAMES = sorted(ZOO)


def _setup(name: str):
    model, data = ZOO[name]()
    metric = "mse" if KIND[name] == "regress" else "accuracy"
    return model, data, metric, OUTPUT[name]


def _naive_score(model, data, metric, output) -> float:
    """The metric by hand: forward each batch, pick, compare."""
    hits, total, sq = 0, 0, 0.0
    with torch.no_grad():
        for x, y in data:
            out = forward(model, x)
            out = out[output] if output is not None else out
            if metric == "mse":
                sq += float(((out.double() - y.double()) ** 2).sum())
            else:
                hits += int(((out.argmax(1) == y) & torch.isfinite(out).all(1)).sum())
            total += len(y)
    return sq / total if metric == "mse" else hits / total


def _last_param(model) -> str:
    """A small floating parameter (the head's), so the census stays fast."""
    names = [n for n, p in model.named_parameters() if p.is_floating_point()]
    return names[-1]


@pytest.mark.parametrize("name", NAMES)
def test_score_equals_the_hand_computation(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    assert score(model, data, metric, output) == pytest.approx(_naive_score(model, data, metric, output), rel=1e-9)
    assert same_as(model, snap)


@pytest.mark.parametrize("name", NAMES)
def test_corrupted_flips_the_reported_words_and_restores(name):
    model = _setup(name)[0]
    snap = snapshot(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with bl.corrupted(model, bl.BitFlips(7), generator=torch.Generator().manual_seed(1)) as r:
        changed = sum(int((p.detach().view(-1) != before[n].view(-1)).sum()) for n, p in model.named_parameters())
        # a flip that makes a NaN reads back unequal too; one word hit twice could cancel, seed 1 does not
        assert r.flips == 7 and changed == 7
    assert same_as(model, snap)


@pytest.mark.parametrize("name", NAMES)
def test_ber_sweep_equals_a_naive_loop(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    df = ber_sweep(model, data, [1e-3], trials=2, seed=3, metric=metric, output=output, progress=False)
    assert same_as(model, snap)
    store = Store(model)
    for t in range(2):
        with store.corrupted(bl.BitErrorRate(1e-3), generator=trial_generator(3, "ber", 1e-3, t)) as r:
            want = _naive_score(model, data, metric, output)
        row = df.iloc[t]
        assert row["flips"] == r.flips
        assert row[metric] == pytest.approx(want, rel=1e-9, nan_ok=True)


@pytest.mark.parametrize("name", NAMES)
def test_census_equals_the_naive_loop(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    kw = dict(params=_last_param(model), bits="exponent", n_weights=3, metric=metric, output=output, progress=False)
    fast = bit_census(model, data, **kw)
    assert same_as(model, snap)
    naive = naive_bit_census(model, data, **kw)
    pd.testing.assert_frame_equal(fast, naive)
    one = naive.iloc[-1]
    with bl.corrupted(model, bl.SingleBitFlip(one["param"], int(one["index"]), int(one["bit"]))):
        assert one[metric] == pytest.approx(_naive_score(model, data, metric, output), rel=1e-9, nan_ok=True)


@pytest.mark.parametrize("name", NAMES)
def test_activation_faults_reach_a_module_and_restore(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    kinds = (torch.nn.Linear, torch.nn.LSTM, torch.nn.Conv1d, torch.nn.Conv2d)
    module = next(n for n, m in model.named_modules() if isinstance(m, kinds) and not n.endswith("out_proj"))
    clean = score(model, data, metric, output)
    with bl.corrupted_activations(
        model, bl.BitErrorRate(0.05), modules=module, generator=torch.Generator().manual_seed(0)
    ) as rep:
        faulty = score(model, data, metric, output)
    assert rep.calls[module] == len(data) and rep.flips[module] > 0
    assert faulty != clean
    assert same_as(model, snap)


@pytest.mark.parametrize("name", NAMES)
def test_activation_sweep_on_the_quantized_model(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoverageWarning)  # what stays float is in qm.coverage
        qm = quantize_model(model, data)
    assert same_as(model, snap)
    assert qm.coverage.covered, f"{name}: nothing quantized"
    df = activation_sweep(qm, data, [0.0, 0.01], trials=1, metric=metric, output=output, progress=False)
    assert df.iloc[0][metric] == pytest.approx(_naive_score(qm, data, metric, output), rel=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_attack_flips_are_replayed_exactly(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    loss = F.mse_loss if metric == "mse" else None
    fmt = bl.Int(8)  # narrower than every zoo dtype: quantizing on purpose, allowed on fp16/bf16 too
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoverageWarning)
        res = bit_flip_attack(
            model, data, fmt=fmt, budget=2, attack_batch=16, metric=metric, output=output, loss=loss, progress=False
        )
    assert same_as(model, snap)
    assert len(res.flips) >= 1
    with res.applied(model):
        got = _naive_score(model, data, metric, output)
    assert got == pytest.approx(res.flips[metric].iloc[-1], rel=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_sweep_t_restores_and_scores_the_metric(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    df = sweep_t(model, data, [None, 1.0], None, 1e-3, trials=1, metric=metric, output=output, progress=False)
    assert same_as(model, snap)
    plain = ber_sweep(model, data, [1e-3], trials=1, metric=metric, output=output, progress=False)[metric].iloc[0]
    got = df[df.t.isna()][metric].iloc[0]
    assert got == plain or (pd.isna(got) and pd.isna(plain))


@pytest.mark.parametrize("name", NAMES)
def test_loss_slice_at_zero_is_the_clean_score(name):
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    d = random_direction(model, generator=torch.Generator().manual_seed(0))
    base = F.mse_loss if metric == "mse" else F.cross_entropy
    df = loss_slice(model, lambda o, y: base(o.float(), y), data, d, [0.0, 0.5], metric=metric, output=output)
    assert same_as(model, snap)
    assert df[metric].iloc[0] == pytest.approx(_naive_score(model, data, metric, output), rel=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_robust_accuracy_or_a_clear_refusal(name):
    model, data, metric, output = _setup(name)
    x0 = data[0][0]
    if metric == "mse" or not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
        pytest.skip("adversarial examples need a classifier with one float input tensor")
    snap = snapshot(model)
    ds = torch.utils.data.TensorDataset(torch.cat([x for x, _ in data]), torch.cat([y for _, y in data]))
    acc = robust_accuracy(model, ds, eps=0.0, steps=1, random_start=False, clamp=None, output=output)
    assert acc == pytest.approx(_naive_score(model, data, metric, output))
    assert same_as(model, snap)


def test_robust_accuracy_refuses_keyword_inputs_by_name():
    model, data = ZOO["dict_out"]()
    with pytest.raises(TypeError, match="perturbs one input tensor"):
        robust_accuracy(model, data, eps=0.1, output="logits")


@pytest.mark.parametrize("name", NAMES)
def test_hessian_vector_products_are_symmetric(name):
    """``u . Hv == v . Hu`` (in float64 sums) for any loss form the model needs; the model is untouched."""
    model, data, metric, output = _setup(name)
    snap = snapshot(model)
    base = F.mse_loss if metric == "mse" else F.cross_entropy

    def fn(m, batch):
        x, y = batch
        return base(pick(forward(m, x), output).float(), y)

    loss = bl.hessian.batch_loss(fn)
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(0)
    u = [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]
    v = [torch.randn(p.shape, generator=g).to(p.dtype) for p in params]
    hv = bl.hessian.hvp(model, loss, data[:1], v)
    hu = bl.hessian.hvp(model, loss, data[:1], u)
    a = sum(float((x.double() * y.double()).sum()) for x, y in zip(u, hv))
    b = sum(float((x.double() * y.double()).sum()) for x, y in zip(v, hu))
    assert a == pytest.approx(b, rel=1e-3, abs=1e-4)
    assert same_as(model, snap)


def test_pick_matches_the_zoo_convention():
    model, data = ZOO["dict_out"]()
    out = forward(model, data[0][0])
    assert pick(out, "logits") is out["logits"]
