"""Tests for bitlab.act_campaign: activation bit-flip campaigns on quantized models."""

import math

import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bitlab.campaigns.activations import (
    act_fault_fn,
    activation_sizes,
    activation_sweep,
    flips_per_inference_fn,
    resilience_auc,
)
from bitlab.faults import BitErrorRate, SingleBitFlip
from bitlab.formats import Int
from bitlab.training.quant import quantize_model


def _cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )


@pytest.fixture
def setup():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 1, 6, 6, generator=g)
    y = (x.mean(dim=(1, 2, 3)) * 3).long().clamp(0, 2)
    qm = quantize_model(_cnn(), x)
    return qm, torch.utils.data.TensorDataset(x, y), x


def _popcount(v: torch.Tensor) -> torch.Tensor:
    c = torch.zeros_like(v)
    for b in range(8):
        c += (v >> b) & 1
    return c


def test_sizes_are_words_per_inference(setup):
    qm, _, x = setup
    assert activation_sizes(qm, x) == {"0": 36, "2": 4 * 36, "5": 4 * 36}


def test_sweep_restores_clean_behaviour_and_previous_hook(setup):
    qm, ds, x = setup
    with torch.no_grad():
        before = qm(x).clone()
    df = activation_sweep(qm, ds, [1e-2, 1e-1], trials=2, progress=False)
    assert qm.set_act_fault(None) is None  # no hook left behind
    with torch.no_grad():
        assert torch.equal(qm(x), before)
    assert (df["accuracy"] <= 1).all() and set(df["rate"]) == {1e-2, 1e-1}

    def prev(name, words):
        return words

    qm.set_act_fault(prev)
    activation_sweep(qm, ds, [1e-2], trials=1, progress=False)
    assert qm.set_act_fault(None) is prev


def test_hook_restored_when_evaluation_raises(setup):
    qm, _ds, x = setup

    class Flaky(list):  # data that fails while the faulty evaluation runs
        def __iter__(self):
            if qm._act_fault is not None:
                raise RuntimeError("read error")
            return super().__iter__()

    bad = Flaky([(x[:8], torch.zeros(8, dtype=torch.long))])
    with pytest.raises(RuntimeError, match="read error"):
        activation_sweep(qm, bad, [0.1], trials=1, progress=False)
    assert qm.set_act_fault(None) is None


def test_fixed_k_gives_exactly_k_distinct_flips_per_inference(setup):
    qm, _, x = setup
    sizes = activation_sizes(qm, x)
    k = 5
    per_image = torch.zeros(len(x), dtype=torch.int64)
    fn = flips_per_inference_fn(k, sizes, torch.Generator().manual_seed(3))

    def spy(name, words):
        out = fn(name, words)
        per_image.add_(_popcount(out ^ words).reshape(len(x), -1).sum(dim=1))
        return out

    for _ in range(3):  # three forward passes: each draws a new plan
        per_image.zero_()
        with qm.act_fault(spy), torch.no_grad():
            qm(x)
        assert per_image.tolist() == [k] * len(x)


def test_flips_mode_counts(setup):
    qm, ds, _ = setup
    df = activation_sweep(qm, ds, [0, 1, 7], trials=2, mode="flips", progress=False)
    assert (df["flips"] == df["rate"] * len(ds)).all()
    assert (df.loc[df["rate"] == 0, "accuracy"] == df.attrs["clean_accuracy"]).all()


def test_ber_mode_mean_matches_binomial(setup):
    qm, ds, _ = setup
    p, trials = 0.01, 30
    df = activation_sweep(qm, ds, [p], trials=trials, progress=False)
    n_bits = df.attrs["bits_per_inference"] * len(ds)
    assert n_bits == (36 + 144 + 144) * 8 * 40
    mean, var = n_bits * p, n_bits * p * (1 - p)
    # the mean of 30 binomial counts lies within 5 standard errors of n*p (fails with prob. < 1e-6)
    assert abs(df["flips"].mean() - mean) < 5 * math.sqrt(var / trials)
    assert df["flips"].std() > 0


def test_sign_bit_selection_flips_only_sign_bits(setup):
    qm, _, x = setup
    seen = []
    fn = act_fault_fn(BitErrorRate(0.2, bits="sign"), torch.Generator().manual_seed(0))

    def spy(name, words):
        out = fn(name, words)
        seen.append(out ^ words)
        return out

    with qm.act_fault(spy), torch.no_grad():
        qm(x)
    diff = torch.cat([d.reshape(-1) for d in seen])
    assert set(diff.unique().tolist()) == {0, 128}


@settings(max_examples=40)
@given(st.integers(0, 3), st.integers(0, 7), st.floats(-2.0, 2.0, allow_nan=False))
def test_one_flip_changes_activation_by_power_of_two_times_scale(index, bit, value):
    torch.manual_seed(0)
    x = torch.linspace(-2, 2, 4).reshape(1, 4)
    qm = quantize_model(nn.Sequential(nn.Linear(4, 2)), x)
    s = qm.act_scales["0"]
    xin = x.clone()
    xin[0, index] = value
    seen = []
    qm.model[0].register_forward_pre_hook(lambda m, inp: seen.append(inp[0].detach().clone()))
    with torch.no_grad():
        qm(xin)
        with qm.act_fault(act_fault_fn(SingleBitFlip("0", index, bit))):
            qm(xin)
    clean, flipped = seen
    # independent reference: python ints, two's complement by hand
    q = round(clean[0, index].item() / s)
    u = q & 0xFF
    was_set = (u >> bit) & 1
    u ^= 1 << bit
    q2 = u - 256 if u >= 128 else u
    if bit < 7:
        assert q2 - q == (-(1 << bit) if was_set else (1 << bit))
    else:
        assert q2 - q == (128 if was_set else -128)
    # the layer reads float32(q * s): exactly the reference levels times the scale
    f32 = lambda v: torch.tensor(v, dtype=torch.float64).to(torch.float32).item()  # noqa: E731
    assert clean[0, index].item() == f32(q * s)
    assert flipped[0, index].item() == f32(q2 * s)
    assert (q2 - q) * s == pytest.approx(((-1) ** was_set) * (1 << bit) * s * (-1 if bit == 7 else 1))
    others = [i for i in range(4) if i != index]
    assert torch.equal(flipped[0, others], clean[0, others])


def test_int8_format_reads_back_the_quantized_weights(setup):
    """ber_sweep(qm.model, fmt=Int(8)) stores the weights with the same scale and levels as qm."""
    qm, _, _ = setup
    mods = dict(qm.model.named_modules())
    for name in qm.layers:
        w = mods[name].weight.detach()
        fmt = Int(8)
        s = fmt.calibrate(w)
        assert float(s) == pytest.approx(float(qm.weight_scales[name]), rel=1e-6)
        q = fmt.encode(w, s)
        assert torch.equal(q, qm.weight_int(name) & 0xFF)


def test_deterministic(setup):
    qm, ds, _ = setup
    a = activation_sweep(qm, ds, [0.05], trials=3, seed=7, progress=False)
    b = activation_sweep(qm, ds, [0.05], trials=3, seed=7, progress=False)
    pd.testing.assert_frame_equal(a, b)


def test_bad_input(setup):
    qm, ds, _x = setup
    with pytest.raises(ValueError, match="layers"):
        activation_sweep(qm, ds, [0.1], layers=["nope"], progress=False)
    with pytest.raises(ValueError, match="rates"):
        activation_sweep(qm, ds, [1.5], progress=False)
    with pytest.raises(ValueError, match="rates"):
        activation_sweep(qm, ds, [-0.1], progress=False)
    with pytest.raises(ValueError, match="rates"):
        activation_sweep(qm, ds, [0.5], mode="flips", progress=False)
    with pytest.raises(ValueError, match="rates"):
        activation_sweep(qm, ds, [10**6], mode="flips", progress=False)
    with pytest.raises(ValueError, match="mode"):
        activation_sweep(qm, ds, [0.1], mode="burst", progress=False)
    with pytest.raises(ValueError, match="trials"):
        activation_sweep(qm, ds, [0.1], trials=0, progress=False)
    with pytest.raises(TypeError, match="qm"):
        activation_sweep(qm.model, ds, [0.1], progress=False)
    with pytest.raises(ValueError, match="k"):
        flips_per_inference_fn(-1, {"0": 4})
    with pytest.raises(ValueError, match="k"):
        flips_per_inference_fn(33, {"0": 4})
    with pytest.raises(TypeError, match="fault"):
        act_fault_fn(0.1)


def test_resilience_auc_by_hand():
    df = pd.DataFrame({"ber": [1e-3, 1e-3, 1e-2, 1e-1], "accuracy": [0.9, 1.1, 0.5, 0.0]})
    # means 1.0, 0.5, 0.0 at log10 = -3, -2, -1: trapezoids (0.75 + 0.25) / width 2
    assert resilience_auc(df) == pytest.approx(0.5)
    assert resilience_auc(df, relative=True, clean=0.8) == pytest.approx(0.625)
    df.attrs["clean_accuracy"] = 0.5
    assert resilience_auc(df, relative=True) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="two"):
        resilience_auc(df[df["ber"] == 1e-3])
    with pytest.raises(ValueError, match="column"):
        resilience_auc(df, x="rate")
