"""Coverage reports of quantize_model, the bit-flip attack and WeightScaling, on the zoo's models: each report
lists exactly the parameters the code touched (weights compared before/after), nothing is left out silently,
and the models come back bit for bit."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import ZOO, forward, same_as, snapshot

import bitlab as bl
from bitlab.campaigns.attack import attack_coverage, bit_flip_attack
from bitlab.codecs import WeightScaling
from bitlab.coverage import Coverage, CoverageWarning
from bitlab.faults import FlipList
from bitlab.training.quant import quantize_model

MODELS = ["encoder", "recurrent", "conv1d", "tied", "resnet_bn"]


def inputs(data):
    return torch.cat([x for x, _ in data])


def quiet_quantize(model, x, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CoverageWarning)
        return quantize_model(model, x, **kw)


def changed(a: nn.Module, b: nn.Module) -> set[str]:
    """Names (all tied aliases) of the parameters whose bits differ between two copies of one model."""
    pb = dict(b.named_parameters(remove_duplicate=False))
    return {n for n, p in a.named_parameters(remove_duplicate=False) if not torch.equal(p, pb[n])}


def weight_rows(cov: Coverage) -> list[str]:
    return [r["name"] for r in cov.rows if r["part"] == "weight"]


def naive_int8(w: torch.Tensor, per_row: bool = False) -> torch.Tensor:
    """Independent reference: symmetric int8, scale max|w| / 127 (per tensor or per row) held as a float32
    number (as :class:`bitlab.formats.Int` stores it), levels by numpy rounding in float64."""
    a = w.detach().double().numpy().reshape(w.shape[0], -1) if per_row else w.detach().double().numpy().reshape(1, -1)
    out = np.empty_like(a)
    for i, row in enumerate(a):
        s = float(np.float32(np.abs(row).max() / 127.0))
        s = s if s > 0 else 1.0
        out[i] = np.clip(np.round(row / s), -127, 127) * s  # np.round: half to even
    return torch.from_numpy(out.reshape(tuple(w.shape))).to(torch.float32)


# --- quantize_model -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_quant_report_lists_exactly_the_weights_it_changed(name):
    model, data = ZOO[name]()
    snap = snapshot(model)
    qm = quiet_quantize(model, inputs(data))
    assert same_as(model, snap)
    cov = qm.coverage
    every = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_floating_point()]
    assert sorted(weight_rows(cov)) == sorted(every)  # each float parameter once, none left out
    assert changed(model, qm.model) == set(cov.names("covered", "weight"))
    forward(qm, data[0][0])  # runs


def test_quant_matches_a_naive_int8_reference_on_conv1d_embedding_and_lstm():
    for name, params in [
        ("conv1d", ["conv1.weight", "conv2.weight"]),
        ("encoder", ["embed.weight", "layer.self_attn.in_proj_weight"]),
        ("recurrent", ["lstm.weight_ih_l0", "lstm.weight_hh_l0", "gru.weight_hh_l0"]),
    ]:
        model, data = ZOO[name]()
        for per_channel in (False, True):
            qm = quiet_quantize(model, inputs(data), per_channel=per_channel)
            for p in params:
                ref = naive_int8(model.get_parameter(p), per_row=per_channel)
                assert torch.equal(qm.model.get_parameter(p), ref), (name, p, per_channel)
                scale = qm.param_scales[p].double()
                scale = scale.reshape(-1, *[1] * (ref.dim() - 1)) if per_channel else scale
                assert torch.equal((qm.weight_int(p).double() * scale).float(), ref)  # the integer levels


def test_attention_no_misleading_calibration_error_and_out_proj_reported():
    model, data = ZOO["encoder"]()
    x = inputs(data)
    with pytest.warns(CoverageWarning, match="layer.self_attn.out_proj"):
        qm = quantize_model(model, x)
    # the layers inside the TransformerEncoderLayer run their own forward: calibrated, not skipped
    assert {"layer.self_attn", "layer.linear1", "layer.linear2", "head"} <= set(qm.layers)
    assert "embed" not in qm.layers and "embed" in qm.weight_layers
    assert "received no input" not in str(qm.coverage)
    with pytest.raises(ValueError, match=r"strict: .*layer.self_attn.out_proj"):
        quantize_model(model, x, strict=True)


def test_attention_inputs_are_quantized_once_per_call():
    model, data = ZOO["encoder"]()
    qm = quiet_quantize(model, inputs(data))
    calls: list[str] = []

    def probe(layer, words):
        calls.append(layer)
        return words

    with qm.act_fault(probe), torch.no_grad():
        qm(data[0][0])
    assert calls.count("layer.self_attn") == 1  # query is key is value: one tensor, quantized once
    s = qm.act_scales["layer.self_attn"]
    xs = []
    h = qm.model.layer.self_attn.register_forward_pre_hook(lambda m, a, k: xs.append(a[0]), with_kwargs=True)
    try:
        with torch.no_grad():
            qm(data[0][0])
    finally:
        h.remove()
    levels = xs[0].double() / s  # the hook after the quantizer sees integer levels times the scale
    assert torch.allclose(levels, levels.round(), atol=1e-3)


def test_recurrent_hidden_state_reported_and_strict_refuses():
    model, data = ZOO["recurrent"]()
    with pytest.warns(CoverageWarning, match="lstm: hidden state"):
        qm = quantize_model(model, inputs(data))
    assert qm.coverage.unsupported.keys() == {"lstm", "gru"}
    with pytest.raises(ValueError, match="strict"):
        quantize_model(model, inputs(data), strict=True)


def test_subset_and_unsupported_kinds():
    model = nn.Sequential(nn.Linear(4, 5), nn.PReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
    with pytest.warns(CoverageWarning, match=r"1.weight: PReLU is not a supported kind"):
        quantize_model(model, x)
    qm = quantize_model(model, x, layers=["2"])  # a subset: the rest is by design, no warning
    assert qm.coverage.skipped["0.weight"] == "by design: its layer is not in layers="
    assert changed(model, qm.model) == {"2.weight"}
    with pytest.raises(ValueError, match="layers: .*'1'.*valid names: '0', '2'"):
        quantize_model(model, x, layers=["1"])


# --- the bit-flip attack --------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
def test_attack_report_lists_exactly_the_weights_its_store_holds(name):
    model, data = ZOO[name]()
    snap = snapshot(model)
    cov = attack_coverage(model)
    covered = set(cov.names("covered"))
    every = [n for n, p in model.named_parameters(remove_duplicate=False) if p.is_floating_point()]
    assert sorted(weight_rows(cov)) == sorted(every)
    before = {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}
    result = bit_flip_attack(model, data, budget=1, attack_batch=8, progress=False)
    assert same_as(model, snap)
    assert result.coverage is not None and set(result.coverage.covered) == covered
    with result.applied(model, n=0):  # the int8 store of every attacked tensor, no flip
        now = {n for n, p in model.named_parameters(remove_duplicate=False) if not torch.equal(p, before[n])}
    assert now == covered
    assert same_as(model, snap)


@pytest.mark.parametrize(
    "name, param",
    [
        ("recurrent", "lstm.weight_hh_l0"),
        ("recurrent", "lstm.weight_ih_l0"),
        ("encoder", "layer.self_attn.in_proj_weight"),
    ],
)
def test_attack_flips_a_bit_in_lstm_and_attention_weights(name, param):
    model, data = ZOO[name]()
    snap = snapshot(model)
    result = bit_flip_attack(model, data, budget=1, attack_batch=16, params=param, progress=False)
    assert same_as(model, snap)
    assert len(result) == 1 and result.flips["param"].tolist() == [param]
    row = result.flips.iloc[0]
    w = model.get_parameter(param)
    s = float(bl.Int(8).calibrate(w.detach()))
    q = round(float(w.detach().reshape(-1)[int(row["index"])]) / s)  # the clean level, by hand
    flipped = (q & 0xFF) ^ (1 << int(row["bit"]))
    flipped = flipped - 256 if flipped >= 128 else flipped
    with result.applied(model):
        assert float(w.detach().reshape(-1)[int(row["index"])]) == pytest.approx(flipped * s, rel=1e-6)
        assert float(w.detach().reshape(-1)[int(row["index"])]) == pytest.approx(float(row["new"]), rel=1e-6)
    assert same_as(model, snap)


def test_attack_selected_bias_and_unknown_kind_are_reported():
    model = nn.Sequential(nn.Linear(4, 5), nn.PReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    data = [(x, torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(2)))]
    cov = attack_coverage(model)
    assert cov.unsupported == {"1.weight": "PReLU is not an attacked layer kind"}
    assert cov.skipped["0.bias"].startswith("by design")
    assert attack_coverage(model, "0.*").unsupported == {"0.bias": "bias or normalization: stays float"}
    with pytest.warns(CoverageWarning, match="1.weight"):
        bit_flip_attack(model, data, budget=1, progress=False)
    with pytest.raises(ValueError, match=r"strict: .*1.weight"):
        bit_flip_attack(model, data, budget=1, progress=False, strict=True)


# --- WeightScaling --------------------------------------------------------------------------------


def zero_bias_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    nn.init.zeros_(model[0].bias)
    return model


@pytest.mark.parametrize("fmt", [bl.FP32, bl.FP16, bl.Q(2, 5)])
def test_weight_scaling_with_a_zero_bias_round_trips_and_reports_it(fmt):
    model = zero_bias_model()
    snap = snapshot(model)
    codec = WeightScaling(1.0 if fmt.name == "Q2.5" else None, pow2=True)
    cov = codec.coverage(model, fmt)
    assert cov.unsupported.keys() == {"0.bias"} and set(cov.covered) == {"0.weight", "2.weight", "2.bias"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}  # detached copies
    with pytest.warns(CoverageWarning, match="'0.bias'.*stored unscaled"):
        with bl.corrupted(model, bl.BitErrorRate(0.0), fmt=fmt, codec=codec):
            assert torch.equal(model[0].bias, torch.zeros(6))  # left as it is
            t = 1.0 if fmt.name == "Q2.5" else {"FP32": 2.0**124, "FP16": 2.0**12}[fmt.name]
            for n, p in model.named_parameters():  # the fault-free read by hand: fmt's rounding of c * w, / c
                m = float(before[n].abs().max())
                c = 1.0 if m == 0 else 2.0 ** math.floor(math.log2(t / m))
                ref = fmt.decode(fmt.encode(before[n].double() * c, None), None).double() / c
                assert torch.equal(p.detach(), ref.to(torch.float32)), n
    assert same_as(model, snap)
    if fmt.name == "FP32":  # power-of-two c: exact, the whole model bit for bit
        with pytest.warns(CoverageWarning), bl.corrupted(model, bl.BitErrorRate(0.0), fmt=fmt, codec=codec):
            assert same_as(model, snap)


def test_weight_scaling_flip_in_a_zero_tensor_reads_back_unscaled():
    model = zero_bias_model()
    codec = WeightScaling(2.0)
    fault = FlipList((("0.bias", 2, 7),))  # Q2.5: bit 7 of word 2 is the sign bit
    with pytest.warns(CoverageWarning), bl.corrupted(model, fault, fmt=bl.Q(2, 5), codec=codec, params="0.bias"):
        assert float(model[0].bias.detach()[2]) == -4.0  # two's complement 0b10000000 at c = 1


def test_weight_scaling_names_a_tensor_it_cannot_handle():
    model = zero_bias_model()
    with torch.no_grad():
        model[2].weight[0, 0] = float("inf")
    snap = snapshot(model)
    with (
        pytest.raises(ValueError, match=r"params: '2.weight': w: the tensor holds non-finite"),
        pytest.warns(CoverageWarning),
    ):
        with bl.corrupted(model, bl.BitErrorRate(0.0), fmt=bl.FP32, codec=WeightScaling()):
            pass
    with pytest.raises(ValueError, match=r"params: '2.weight'"):
        WeightScaling().coverage(model, bl.FP32)
    with pytest.raises(TypeError, match="strict"):
        WeightScaling(strict=1)  # type: ignore[arg-type]
    assert same_as(model, snap)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 4), st.integers(2, 6), st.integers(0, 2**31 - 1))
def test_quantized_lstm_weights_are_the_reference_for_any_shape(layers, hidden, seed):
    torch.manual_seed(seed)
    model = nn.LSTM(3, hidden, num_layers=layers, batch_first=True).eval()
    x = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(seed))
    qm = quiet_quantize(model, x)
    names = [n for n, _ in model.named_parameters() if n.startswith("weight_")]
    assert set(qm.coverage.names("covered", "weight")) == set(names)
    for n in names:
        assert torch.equal(qm.model.get_parameter(n), naive_int8(model.get_parameter(n)))
