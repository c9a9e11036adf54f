"""Weight scaling (Fuengfusin 2024): round trips, the per-layer constant, t selection, the
function-preserving ReLU rescaling, bad input, and restoration after injection."""

import math
import struct

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bitlab as bl
from bitlab.campaigns.scaling import best_t, sweep_t
from bitlab.codecs.scaling import DEFAULT_T, WeightScaling, default_t, max_t
from bitlab.codecs.secded import SECDED
from bitlab.rescale import balance_factors, rescale_relu_network

FORMATS = [bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5), bl.Q(3, 12), bl.Int(8), bl.Int(4, per_channel=True)]


def weights(seed=0, n=400, scale=0.3):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * scale


def f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def tolerance(fmt, w, c):
    """Documented bound on |read - w| for a fault-free store of c*w: the format's rounding of c*w
    (relative 2**-(mantissa+1) for floats, plus half the smallest subnormal; half a step for Q),
    divided by c, plus the final float32 rounding of the division (relative 2**-24)."""
    a = w.abs().double()
    if isinstance(fmt, bl.formats.FloatFormat):
        p = len(fmt.fields["mantissa"])
        tiny = torch.finfo(fmt.dtype).smallest_normal * 2.0**-p
        fmt_err = (a * c) * 2.0 ** -(p + 1) + tiny / 2
    elif isinstance(fmt, bl.Q):
        fmt_err = torch.full_like(a, fmt.step / 2)
    else:
        raise AssertionError
    return fmt_err / c + a * 2.0**-24 + 1e-45


@pytest.mark.parametrize("fmt", [bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5), bl.Q(3, 12)])
@pytest.mark.parametrize("t", [None, 0.7, 1.9])
def test_fault_free_round_trip_within_the_documented_step(fmt, t):
    w = weights()
    c = WeightScaling(t)
    state = c.fit(w, fmt)
    assert state["c"] == pytest.approx(c.t_for(fmt) / w.abs().max().item(), rel=1e-12)
    got = c.decode(c.encode(w, fmt, state), fmt, state)
    err = (got.double() - w.double()).abs()
    assert bool((err <= tolerance(fmt, w, state["c"])).all())


def test_fp32_round_trip_is_within_one_ulp_and_exact_with_pow2():
    w = weights(n=2000)
    for t in (3.0, 2.0**100):
        c = WeightScaling(t)
        s = c.fit(w, bl.FP32)
        got = c.decode(c.encode(w, bl.FP32, s), bl.FP32, s)
        ulp = torch.nextafter(w.abs(), torch.tensor(math.inf)) - w.abs()
        assert bool(((got - w).abs() <= ulp).all())
        p = WeightScaling(t, pow2=True)
        s = p.fit(w, bl.FP32)
        assert math.log2(s["c"]) == int(math.log2(s["c"])) and s["c"] <= t / w.abs().max().item()
        assert torch.equal(p.decode(p.encode(w, bl.FP32, s), bl.FP32, s).view(torch.int32), w.view(torch.int32))


def test_q25_scaling_shrinks_the_rounding_error_by_c():
    w = weights(scale=0.1)
    plain = (bl.Q(2, 5).roundtrip(w) - w).abs().max().item()
    c = WeightScaling()  # t = 3.96875, the top of Q2.5's range
    s = c.fit(w, bl.Q(2, 5))
    scaled = (c.decode(c.encode(w, bl.Q(2, 5), s), bl.Q(2, 5), s) - w).abs().max().item()
    assert plain <= 2**-6 + 1e-9 and scaled <= 2**-6 / s["c"] + 1e-7 < plain


def test_int_format_scaling_stores_the_same_words():
    w = weights(n=1000).reshape(10, 100)
    for fmt in (bl.Int(8), bl.Int(4, per_channel=True)):
        c = WeightScaling(5.0)
        s = c.fit(w, fmt)
        plain = bl.protect.Identity()
        ps = plain.fit(w, fmt)
        assert torch.equal(c.encode(w.reshape(-1), fmt, s), plain.encode(w.reshape(-1), fmt, ps))
        assert torch.allclose(
            c.decode(c.encode(w.reshape(-1), fmt, s), fmt, s),
            plain.decode(plain.encode(w.reshape(-1), fmt, ps), fmt, ps),
            rtol=1e-6,
            atol=1e-9,
        )


@given(st.integers(0, 7), st.floats(-0.9, 0.9, allow_nan=False), st.floats(0.05, 3.0))
def test_q25_flip_error_is_divided_by_c(bit, v, t):
    """Fixed point: a flip adds +-2**(bit-5) to the stored value, so the read error is that / c."""
    w = torch.tensor([v, 0.9, -0.3])
    fmt = bl.Q(2, 5)
    c = WeightScaling(t)
    s = c.fit(w, fmt)
    word = c.encode(w, fmt, s)
    clean = c.decode(word, fmt, s)[0].item()
    flipped = c.decode(word ^ (1 << bit), fmt, s)[0].item()
    step = 2.0 ** (bit - 5) if bit < 7 else 4.0
    assert abs(abs(flipped - clean) - step / s["c"]) <= 1e-6 * max(1.0, step / s["c"])


def test_fp32_exponent_msb_flip_shrinks_weights_scaled_above_2():
    w = torch.tensor([0.5, -0.25, 0.01, 0.001])
    c = WeightScaling(2.0**124)
    s = c.fit(w, bl.FP32)
    words = c.encode(w, bl.FP32, s)
    assert bool(((words >> 30) & 1).all())  # every scaled weight has the exponent MSB set
    read = c.decode(words ^ (1 << 30), bl.FP32, s)
    assert bool((read.abs() < 1e-30).all())
    plain = bl.FP32.decode(bl.FP32.encode(w) ^ (1 << 30))
    assert bool((plain.abs() > 1e30).all())


def test_defaults_and_max_t():
    assert default_t(bl.Q(2, 5)) == 3.96875 == max_t(bl.Q(2, 5))
    assert default_t(bl.FP32) == DEFAULT_T["FP32"] and default_t(bl.FP16) == DEFAULT_T["FP16"]
    assert default_t(bl.Int(8)) == 1.0 and max_t(bl.Int(8)) == math.inf
    assert max_t(bl.FP16) == 65504.0
    for fmt in (bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5)):
        assert 0 < default_t(fmt) <= max_t(fmt)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf")])
def test_bad_t(bad):
    with pytest.raises(ValueError, match="t: .*allowed values are finite numbers > 0"):
        WeightScaling(bad)


def test_t_must_be_a_number():
    with pytest.raises(TypeError, match="t"):
        WeightScaling("big")
    with pytest.raises(TypeError, match="pow2"):
        WeightScaling(1.0, pow2="yes")


def test_t_that_does_not_fit_the_format():
    with pytest.raises(ValueError, match=r"t: 5 does not fit Q2.5.*allowed 0 < t <= 3.96875"):
        WeightScaling(5.0).fit(weights(), bl.Q(2, 5))
    with pytest.raises(ValueError, match="t: 70000 does not fit FP16"):
        WeightScaling(70000.0).fit(weights(), bl.FP16)


def test_all_zero_tensor_is_an_error_with_strict_and_named_by_the_store():
    with pytest.raises(ValueError, match=r"w: every weight of this tensor is 0 \(max\|w\| = 0\)"):
        WeightScaling(1.0, strict=True).fit(torch.zeros(5), bl.FP32)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    torch.nn.init.zeros_(model[2].bias)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="params: '2.bias'.*max\\|w\\| = 0"):
        with bl.corrupted(model, bl.BitErrorRate(0.01), fmt=bl.FP16, codec=WeightScaling(2.0, strict=True)):
            pass
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with bl.corrupted(model, bl.BitErrorRate(0.0), fmt=bl.FP16, codec=WeightScaling(2.0), params="*.weight"):
        pass  # leaving the zero tensor out works
    with pytest.warns(UserWarning, match="'2.bias'.*stored unscaled"):
        with bl.corrupted(model, bl.BitErrorRate(0.0), fmt=bl.FP16, codec=WeightScaling(2.0)):
            assert torch.equal(model[2].bias, torch.zeros(2))


# --- injection is undone bit for bit ----------------------------------------------------------


def snapshot(model):
    return {k: v.detach().clone().view(torch.int32) for k, v in model.state_dict().items()}


T_FOR = {
    "FP32": [2.0, 2.0**124],
    "FP16": [2.0, 4096.0],
    "BF16": [2.0**100],
    "Q2.5": [1.0, 3.96875],
    "Q3.12": [7.5],
    "int8": [3.0],
    "int4/ch": [1.0],
}
CODECS = [(fmt, WeightScaling(t)) for fmt in FORMATS for t in T_FOR[fmt.name]]
CODECS += [(fmt, WeightScaling(None, pow2=True)) for fmt in FORMATS]
CODECS += [(fmt, SECDED(mode)) for fmt in FORMATS for mode in ("zero", "raw")]


@given(st.sampled_from(CODECS), st.floats(0, 0.2), st.integers(0, 2**31))
def test_every_injection_is_undone_bit_for_bit(fmt_codec, p, seed):
    fmt, codec = fmt_codec
    torch.manual_seed(seed % 1000)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    before = snapshot(model)
    g = torch.Generator().manual_seed(seed)
    with bl.corrupted(model, bl.BitErrorRate(p), fmt=fmt, codec=codec, generator=g):
        model(torch.randn(3, 5))
    after = snapshot(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("fmt,codec", CODECS[:6])
def test_restored_when_the_body_raises(fmt, codec):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        with bl.corrupted(
            model, bl.BitErrorRate(0.05), fmt=fmt, codec=codec, generator=torch.Generator().manual_seed(0)
        ):
            raise RuntimeError("boom")
    after = snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


# --- choosing t -------------------------------------------------------------------------------


def test_sweep_t_shares_fault_draws_and_picks_the_best(tiny_data):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    bl.train.fit(model, tiny_data, epochs=5, seed=0, progress=False)
    df = sweep_t(model, tiny_data, [None, 0.5, 3.96875], bl.Q(2, 5), ber=[0.01, 0.05], trials=4, seed=1, progress=False)
    assert len(df) == 3 * 2 * 4 and set(df.columns) >= {"t", "ber", "trial", "accuracy", "clean_accuracy", "flips"}
    flips = df.pivot_table(index=["ber", "trial"], columns="t", values="flips", dropna=False)
    assert (flips.nunique(axis=1) == 1).all()  # same number of flips for every t: same draws
    means = df.groupby("t", dropna=False)["accuracy"].mean()
    assert df.attrs["best_t"] == best_t(df)
    best = df.attrs["best_t"]
    assert means.loc[best] == means.max()
    with pytest.raises(ValueError, match="t: 5 does not fit"):
        sweep_t(model, tiny_data, [5.0], bl.Q(2, 5), ber=0.01, trials=1, progress=False)
    with pytest.raises(ValueError, match="ts"):
        sweep_t(model, tiny_data, [], bl.Q(2, 5), ber=0.01, trials=1, progress=False)


def test_best_t_breaks_ties_by_clean_accuracy_then_smaller_t():
    import pandas as pd

    df = pd.DataFrame(
        {
            "t": [1.0, 2.0, 4.0, float("nan")],
            "accuracy": [0.5, 0.9, 0.9, 0.9],
            "clean_accuracy": [0.9, 0.95, 0.95, 0.93],
        }
    )
    assert best_t(df) == 2.0
    assert math.isnan(best_t(df[df["t"].isna() | (df["t"] == 1.0)]))


# --- function-preserving rescaling ------------------------------------------------------------


def test_rescaling_keeps_the_small_cnn_function():
    torch.manual_seed(0)
    model = bl.models.small_cnn()
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    new = rescale_relu_network(model, [8.0, 0.25])
    assert torch.allclose(new(x), model(x), rtol=1e-5, atol=1e-5)
    assert torch.allclose(new[0].weight, 8 * model[0].weight) and torch.allclose(new[0].bias, 8 * model[0].bias)
    assert torch.allclose(new[3].weight, model[3].weight / 32) and torch.allclose(new[3].bias, model[3].bias / 4)
    assert torch.allclose(new[7].weight, model[7].weight * 4) and torch.equal(new[7].bias, model[7].bias)
    assert new is not model and not torch.equal(new[0].weight, model[0].weight)  # deep copy, original untouched


@given(st.lists(st.floats(1e-3, 1e3), min_size=2, max_size=2), st.integers(0, 1000))
def test_rescaling_keeps_the_mlp_function(factors, seed):
    torch.manual_seed(seed)
    model = bl.models.mlp(in_features=6, hidden=(7, 5), num_classes=3)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(seed))
    new = rescale_relu_network(model, factors)
    ref = model(x)
    assert torch.allclose(new(x), ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_balance_factors_equalize_layer_maxima():
    torch.manual_seed(0)
    model = bl.models.small_cnn()
    maxima = [m.weight.abs().max().item() for m in (model[0], model[3], model[7])]
    new = rescale_relu_network(model, balance_factors(model))
    got = [m.weight.abs().max().item() for m in (new[0], new[3], new[7])]
    geo = math.prod(maxima) ** (1 / 3)
    assert got == pytest.approx([geo] * 3, rel=1e-5)
    x = torch.rand(4, 1, 8, 8)
    assert torch.allclose(new(x), model(x), rtol=1e-5, atol=1e-5)


def test_rescaling_refuses_what_it_cannot_preserve():
    bn = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="model: module '1' \\(BatchNorm1d\\).*not positively homogeneous"):
        rescale_relu_network(bn, [2.0])
    tanh = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match="Tanh"):
        rescale_relu_network(tanh, [2.0])
    with pytest.raises(TypeError, match="model: .*nn.Sequential.*residual"):
        rescale_relu_network(bl.models.resnet20(), [2.0])
    mlp = bl.models.mlp(in_features=3, hidden=(4,), num_classes=2)
    with pytest.raises(ValueError, match="factors: 2 given.*1 for this model"):
        rescale_relu_network(mlp, [1.0, 2.0])
    with pytest.raises(ValueError, match="factors: .*> 0"):
        rescale_relu_network(mlp, [-1.0])
    with pytest.raises(ValueError, match="at least two"):
        rescale_relu_network(torch.nn.Sequential(torch.nn.Linear(2, 2)), [])
    zero = bl.models.mlp(in_features=3, hidden=(4,), num_classes=2)
    torch.nn.init.zeros_(zero[1].weight)
    with pytest.raises(ValueError, match="model: layer '1' has all-zero weights"):
        balance_factors(zero)
