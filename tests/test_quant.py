"""Tests for bitlab.quant against hand-computed integer references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bitlab.formats import Int
from bitlab.training.quant import (
    calibrate_activations,
    dequantize,
    fake_quantize,
    qmax,
    quantizable_layers,
    quantize,
    quantize_model,
    scale_report,
    weight_scale,
)

floats = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, width=32)
scales = st.floats(min_value=1e-3, max_value=10.0, allow_nan=False)


@given(st.lists(floats, min_size=1, max_size=32), scales, st.sampled_from([2, 4, 8, 16]))
def test_quantize_within_half_step_or_saturated(values, scale, bits):
    x = torch.tensor(values, dtype=torch.float32)
    q = quantize(x, scale, bits)
    m = qmax(bits)
    assert q.dtype == torch.int64
    assert int(q.abs().max()) <= m
    xd = x.double()
    back = dequantize(q, scale).double()
    inside = xd.abs() <= m * scale
    # in range: within half a step (float32 output adds a relative rounding of 2**-24)
    err = (back - xd).abs()[inside]
    assert bool((err <= 0.5 * scale * (1 + 1e-6) + 1e-6 * xd.abs()[inside]).all())
    # outside: saturated at +-qmax with the right sign
    out = ~inside
    assert bool((q[out] == torch.sign(xd[out]).long() * m).all())


def test_quantize_rounds_half_to_even_and_matches_int_format():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 126.5, 127.5, 1000.0, -1000.0])
    assert quantize(x, 1.0).tolist() == [0, 2, 2, 0, -2, -2, 126, 127, 127, -127]
    fmt = Int(8)
    y = torch.randn(100, generator=torch.Generator().manual_seed(0))
    s = float(fmt.calibrate(y))
    q = quantize(y, s)
    assert torch.equal(Int(8).encode(y, s), q & 0xFF)
    assert torch.equal(fake_quantize(y, s), fmt.decode(fmt.encode(y, s), s))


def test_quantize_rejects_bad_arguments():
    with pytest.raises(ValueError, match="bits"):
        quantize(torch.zeros(2), 1.0, bits=1)
    with pytest.raises(ValueError, match="scale"):
        quantize(torch.zeros(2), 0.0)
    with pytest.raises(ValueError, match="scale"):
        quantize(torch.zeros(2), torch.tensor([1.0, -1.0]))


def test_fake_quantize_straight_through_gradient():
    x = torch.tensor([0.3, -0.7, 2.0], requires_grad=True)
    y = fake_quantize(x, 0.1)
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones(3))
    assert torch.allclose(y.detach(), torch.tensor([0.3, -0.7, 2.0]), atol=0.05 + 1e-6)


def test_weight_scale_per_tensor_and_channel():
    w = torch.tensor([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]])
    assert float(weight_scale(w)) == pytest.approx(2.0 / 127)
    s = weight_scale(w, per_channel=True)
    assert s.shape == (3,)
    assert s.tolist() == pytest.approx([2.0 / 127, 0.5 / 127, 1.0])  # zero channel -> scale 1


def _calib(shape, n=32, seed=0):
    return torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed)) * 2 - 0.5


@pytest.mark.parametrize("per_channel", [False, True])
def test_linear_matches_integer_reference(per_channel):
    torch.manual_seed(0)
    lin = nn.Linear(6, 4)
    x_cal = _calib((6,))
    qm = quantize_model(lin, x_cal, per_channel=per_channel)
    # activation scale: max |x| over calibration data / 127, by hand
    s_x = float(x_cal.abs().max()) / 127
    (name,) = qm.layers
    assert name == ""  # the model itself is the layer
    assert qm.act_scales[name] == pytest.approx(s_x)
    w = lin.weight.detach()
    if per_channel:
        s_w = w.abs().amax(dim=1).double() / 127
    else:
        s_w = w.abs().max().double().expand(4) / 127
    q_w = torch.round(w.double() / s_w[:, None]).long()
    x = torch.randn(5, 6, generator=torch.Generator().manual_seed(1))
    q_x = torch.round(x.double() / s_x).clamp(-127, 127).long()
    y_ref = (q_x @ q_w.T).double() * s_x * s_w[None, :] + lin.bias.detach().double()
    y = qm(x)
    assert torch.allclose(y.double(), y_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(qm.weight_int(name), q_w)
    # saturating inputs (x outside the calibrated range) are clamped to +-127
    assert int(q_x.abs().max()) == 127


@pytest.mark.parametrize("per_channel", [False, True])
def test_conv_matches_integer_reference(per_channel):
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, padding=1, stride=1)
    net = nn.Sequential(conv)
    x_cal = _calib((2, 5, 5))
    qm = quantize_model(net, x_cal, per_channel=per_channel, layers=["0"])
    s_x = float(x_cal.abs().max()) / 127
    w = conv.weight.detach()
    s_w = (w.abs().amax(dim=(1, 2, 3)) if per_channel else w.abs().max().expand(3)).double() / 127
    q_w = torch.round(w.double() / s_w[:, None, None, None]).long()
    x = torch.rand(2, 2, 5, 5, generator=torch.Generator().manual_seed(3))
    q_x = torch.round(x.double() / s_x).clamp(-127, 127).long()
    # integer convolution by im2col: (N, C*k*k, L) columns, int64 matmul
    cols = F.unfold(q_x.double(), 3, padding=1).round().long()
    acc = torch.einsum("ok,nkl->nol", q_w.reshape(3, -1), cols)
    y_ref = acc.double() * s_x * s_w[None, :, None] + conv.bias.detach().double()[None, :, None]
    y = qm(x).reshape(2, 3, -1)
    assert torch.allclose(y.double(), y_ref, rtol=1e-5, atol=1e-6)


def test_original_model_untouched_and_quantized_model_close(tiny_model, tiny_data):
    before = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    qm = quantize_model(tiny_model, tiny_data)
    for k, v in tiny_model.state_dict().items():
        assert torch.equal(v, before[k])
    x = tiny_data.tensors[0]
    with torch.no_grad():
        diff = (qm(x) - tiny_model(x)).abs().max()
    assert 0 < float(diff) < 0.05
    # switching activation quantization off leaves only the weight quantization
    qm.quantize_activations = False
    with torch.no_grad():
        diff_w = (qm(x) - tiny_model(x)).abs().max()
    assert 0 < float(diff_w) < float(diff) + 1e-6


def test_calibration_percentile_and_errors(tiny_model, tiny_data):
    x = tiny_data.tensors[0]
    scales, amax = calibrate_activations(tiny_model, x, layers=["0"], method="percentile", percentile=90.0)
    assert scales["0"] == pytest.approx(np.percentile(x.abs().numpy(), 90.0) / 127, rel=1e-6)
    assert amax["0"] == pytest.approx(float(x.abs().max()))
    assert scales["0"] < amax["0"] / 127
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="calib_data"):
        quantize_model(tiny_model, empty)
    with pytest.raises(ValueError, match=r"layers.*valid names: '0', '2'"):
        quantize_model(tiny_model, x, layers=["1"])  # a ReLU, not a quantizable layer
    with pytest.raises(ValueError, match="layers.*nope"):
        quantize_model(tiny_model, x, layers="nope")
    with pytest.raises(ValueError, match="act_method"):
        quantize_model(tiny_model, x, act_method="mean")
    with pytest.raises(ValueError, match="bits"):
        quantize_model(tiny_model, x, bits=0)
    assert quantizable_layers(tiny_model) == ["0", "2"]
    # the second layer's scale is calibrated on the ReLU output of the weight-quantized first layer
    qm = quantize_model(tiny_model, x)
    qm.quantize_activations = False
    with torch.no_grad():
        h = torch.relu(qm.model[0](x))
    assert not torch.equal(qm.model[0].weight, tiny_model[0].weight)
    assert qm.act_scales["2"] == pytest.approx(float(h.abs().max()) / 127, rel=1e-6)


def test_scale_report_columns(tiny_model, tiny_data):
    qm = quantize_model(tiny_model, tiny_data, per_channel=True, bits=4)
    df = scale_report(qm)
    assert list(df.columns) == ["layer", "kind", "weight_scale", "act_scale", "weight_max_abs", "act_max_abs", "bits"]
    assert df["layer"].tolist() == ["0", "2"] and df["kind"].tolist() == ["Linear", "Linear"]
    assert (df["bits"] == 4).all()
    w0 = tiny_model[0].weight.detach().abs()
    assert df["weight_max_abs"][0] == pytest.approx(float(w0.max()))
    assert df["weight_scale"][0] == pytest.approx(float(w0.max()) / 7)
    assert df["act_scale"][0] == pytest.approx(df["act_max_abs"][0] / 7)


def test_act_fault_hook_words_and_restore(tiny_model, tiny_data):
    qm = quantize_model(tiny_model, tiny_data)
    x = tiny_data.tensors[0][:8]
    with torch.no_grad():
        clean = qm(x)
    seen = {}

    def identity(name, words):
        seen[name] = words.clone()
        return words

    with qm.act_fault(identity), torch.no_grad():
        assert torch.equal(qm(x), clean)  # the identity fault changes nothing
    assert set(seen) == {"0", "2"}
    w = seen["0"]
    assert w.dtype == torch.int64 and w.shape == x.shape
    assert int(w.min()) >= 0 and int(w.max()) < 256
    assert torch.equal(w, Int(8).encode(x, qm.act_scales["0"]))

    # flip the sign bit (bit 7) of input word [0, 1] of layer "0": value changes by -128 * s_x
    def flip(name, words):
        if name != "0":
            return words
        out = words.clone()
        out[0, 1] ^= 1 << 7
        return out

    q = quantize(x[0, 1], qm.act_scales["0"])
    expected_q = q - 128 if q >= 0 else q + 128
    w_col = qm.model[0].weight.detach()[:, 1]
    with qm.act_fault(flip), torch.no_grad():
        h_faulty = qm.model[0](x)
    with torch.no_grad():
        h_clean = qm.model[0](x)
    delta = (expected_q - q).item() * qm.act_scales["0"] * w_col
    assert torch.allclose(h_faulty[0] - h_clean[0], delta, atol=1e-5)
    assert torch.equal(h_faulty[1:], h_clean[1:])
    assert qm._act_fault is None  # restored after the block
    with torch.no_grad():
        assert torch.equal(qm(x), clean)


def test_act_fault_errors_and_restore_on_exception(tiny_model, tiny_data):
    qm = quantize_model(tiny_model, tiny_data)
    x = tiny_data.tensors[0][:4]
    with pytest.raises(TypeError, match="fn"):
        qm.set_act_fault(3)
    with pytest.raises(ValueError, match="shape"):
        with qm.act_fault(lambda n, w: w[:1]):
            qm(x)
    with pytest.raises(TypeError, match="integer"):
        with qm.act_fault(lambda n, w: w.float()):
            qm(x)
    assert qm._act_fault is None
    prev = qm.set_act_fault(lambda n, w: w)
    assert prev is None and qm.set_act_fault(None) is not None


def test_quantize_model_on_small_cnn_keeps_accuracy():
    from bitlab import data, models, train

    split = data.digits(seed=0)
    torch.manual_seed(0)
    model = models.small_cnn()
    train.fit(model, split.train, epochs=3, progress=False)
    acc = train.accuracy(model, split.test)
    qm = quantize_model(model, split.val)
    assert train.accuracy(qm, split.test) == pytest.approx(acc, abs=0.03)
    assert scale_report(qm)["kind"].tolist() == ["Conv2d", "Conv2d", "Linear"]
    assert not qm.training


def test_deepcopy_binds_hooks_to_the_copy(tiny_model, tiny_data):
    import copy

    qm = quantize_model(tiny_model, tiny_data)
    x = tiny_data.tensors[0][:8]
    twin = copy.deepcopy(qm)
    twin.act_scales["0"] *= 4  # coarser input quantization in the copy only
    with torch.no_grad():
        a, b = qm(x), twin(x)
        assert not torch.equal(a, b)
        with twin.act_fault(lambda n, w: torch.zeros_like(w)):
            assert torch.equal(qm(x), a)  # the original does not see the copy's fault
            assert torch.equal(twin(x), twin.model[2].bias.expand(8, 3))  # zeroed inputs -> bias
