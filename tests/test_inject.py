"""Injection: faults land where sampled, and every weight is restored bit for bit."""

import struct
from dataclasses import dataclass

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import bitlab as bl
from bitlab.faults import fault_words
from bitlab.formats import to_signed, to_unsigned

FORMATS = [bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5), bl.Int(8), bl.Int(4, per_channel=True)]
CODECS = [None, bl.RangeNulling(), bl.ParityNulling("extra"), bl.Unary(12)]


def snapshot(model):
    """Bit patterns of every tensor in the state dict (NaN-safe exact comparison)."""
    return {
        k: v.detach().clone().view(torch.int32) if v.dtype == torch.float32 else v.clone()
        for k, v in model.state_dict().items()
    }


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@given(st.sampled_from(FORMATS), st.sampled_from(CODECS), st.floats(0, 0.2), st.integers(0, 2**31))
def test_every_injection_is_undone_bit_for_bit(fmt, codec, p, seed):
    torch.manual_seed(seed % 1000)
    model = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 2))
    before = snapshot(model)
    g = torch.Generator().manual_seed(seed)
    with bl.corrupted(model, bl.BitErrorRate(p), fmt=fmt, codec=codec, generator=g):
        model(torch.randn(3, 5))
    assert same(before, snapshot(model))


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("codec", CODECS)
def test_restored_when_the_body_raises(tiny_model, fmt, codec):
    before = snapshot(tiny_model)
    with pytest.raises(RuntimeError, match="boom"):
        with bl.corrupted(
            tiny_model, bl.BitErrorRate(0.05), fmt=fmt, codec=codec, generator=torch.Generator().manual_seed(0)
        ):
            assert not same(before, snapshot(tiny_model))
            raise RuntimeError("boom")
    assert same(before, snapshot(tiny_model))


def test_restored_when_setup_fails_midway(tiny_model):
    with torch.no_grad():
        tiny_model[2].weight[0, 0] = 3.0  # |w| >= 2 uses the exponent MSB: no spare bit in this layer
    before = snapshot(tiny_model)
    with pytest.raises(ValueError, match="where='extra'"):
        with bl.corrupted(tiny_model, bl.BitErrorRate(0.05), fmt=bl.FP16, codec=bl.ParityNulling("spare")):
            pass
    assert same(before, snapshot(tiny_model))


def f32_flip(v, bit):
    u = struct.unpack("<I", struct.pack("<f", v))[0] ^ (1 << bit)
    return struct.unpack("<f", struct.pack("<I", u))[0]


@given(st.integers(0, 31), st.integers(0, 31))
def test_single_bit_flip_matches_struct(bit, index):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    v = model.weight.reshape(-1)[index].item()
    with bl.corrupted(model, bl.SingleBitFlip("weight", index, bit), params="weight") as r:
        got = model.weight.reshape(-1)[index].item()
        others = torch.cat([model.weight.reshape(-1)[:index], model.weight.reshape(-1)[index + 1 :]])
    want = f32_flip(v, bit)
    assert struct.pack("<f", got) == struct.pack("<f", want)
    assert r.flips == 1 and r.per_param == {"weight": 1}
    with torch.no_grad():
        clean = torch.cat([model.weight.reshape(-1)[:index], model.weight.reshape(-1)[index + 1 :]])
    assert torch.equal(others, clean)


def test_sparse_flips_change_exactly_the_sampled_bits():
    torch.manual_seed(0)
    model = torch.nn.Linear(50, 40)
    before = model.weight.detach().clone().view(torch.int32).reshape(-1).long() & 0xFFFFFFFF
    with bl.corrupted(model, bl.BitFlips(300), params="weight", generator=torch.Generator().manual_seed(1)) as r:
        after = model.weight.detach().clone().view(torch.int32).reshape(-1).long() & 0xFFFFFFFF
    diff = before ^ after
    expected = torch.zeros_like(diff)
    for w, b in zip(r.sites.word.tolist(), r.sites.bit.tolist()):
        expected[w] ^= 1 << b
    assert torch.equal(diff, expected)


def test_lossy_format_without_faults_reads_the_rounded_weights(tiny_model):
    w = tiny_model[0].weight.detach().clone()
    with bl.corrupted(tiny_model, bl.BitErrorRate(0.0), fmt=bl.Q(2, 5)):
        assert torch.equal(tiny_model[0].weight, bl.Q(2, 5).roundtrip(w))
    with bl.corrupted(tiny_model, bl.BitErrorRate(0.0), fmt=bl.Int(8)):
        s = bl.Int(8).calibrate(w)
        assert torch.allclose(tiny_model[0].weight, bl.Int(8).roundtrip(w, s))


def test_stuck_at_sets_bits(tiny_model):
    with bl.corrupted(
        tiny_model, bl.StuckAt(0.3, 1), params="0.weight", generator=torch.Generator().manual_seed(0)
    ) as r:
        words = bl.FP32.encode(tiny_model[0].weight).reshape(-1)
        for w, b in zip(r.sites.word.tolist(), r.sites.bit.tolist()):
            assert (words[w].item() >> b) & 1 == 1


def test_parameter_selection(tiny_model):
    with bl.corrupted(tiny_model, bl.BitErrorRate(0.0), params=["0.*"]) as r:
        assert r.names == ["0.weight", "0.bias"]
    with bl.corrupted(tiny_model, bl.BitErrorRate(0.0), params=lambda n, p: p.dim() > 1) as r:
        assert r.names == ["0.weight", "2.weight"]


def test_pattern_that_selects_nothing(tiny_model):
    with pytest.raises(ValueError, match="params: 'conv\\*' selects no parameter.*0.weight"):
        with bl.corrupted(tiny_model, bl.BitErrorRate(0.1), params="conv*"):
            pass


def test_non_floating_parameter_rejected():
    m = torch.nn.Module()
    m.register_parameter("counts", torch.nn.Parameter(torch.tensor([1, 2]), requires_grad=False))
    with pytest.raises(TypeError, match="counts.*floating"):
        with bl.corrupted(m, bl.BitErrorRate(0.1)):
            pass


@pytest.mark.parametrize(
    "kwargs,err,msg",
    [
        (dict(fault=0.1), TypeError, "fault"),
        (dict(fmt="FP32"), TypeError, "fmt"),
        (dict(codec="ecc"), TypeError, "codec"),
        (dict(fault=bl.BitErrorRate(0.1, bits=[40])), ValueError, "0..31"),
        (dict(fault=bl.BitErrorRate(0.1, bits="exponent"), fmt=bl.Q(2, 5)), ValueError, "integer"),
    ],
)
def test_bad_injection_arguments(tiny_model, kwargs, err, msg):
    args = dict(fault=bl.BitErrorRate(0.1), fmt=bl.FP32, codec=None) | kwargs
    before = snapshot(tiny_model)
    with pytest.raises(err, match=msg):
        with bl.corrupted(tiny_model, **args):
            pass
    assert same(before, snapshot(tiny_model))


def test_activation_hooks_are_removed_on_exit(tiny_model):
    x = torch.randn(16, 4)
    clean = tiny_model(x)
    with bl.corrupted_activations(
        tiny_model, bl.BitErrorRate(0.05), modules=["0", "1"], generator=torch.Generator().manual_seed(0)
    ) as r:
        faulty = tiny_model(x)
        assert len(tiny_model[0]._forward_hooks) == 1
    assert r.calls == {"0": 1, "1": 1} and r.total_flips > 0
    assert not torch.equal(clean, faulty)
    assert all(len(m._forward_hooks) == 0 for m in tiny_model.modules())
    assert torch.equal(tiny_model(x), clean)
    with pytest.raises(RuntimeError):
        with bl.corrupted_activations(tiny_model, bl.BitErrorRate(0.05), modules="0"):
            raise RuntimeError
    assert all(len(m._forward_hooks) == 0 for m in tiny_model.modules())


def test_activation_fault_in_fp32_is_a_bit_flip(tiny_model):
    x = torch.randn(2, 4)
    clean = tiny_model[0](x)
    with bl.corrupted_activations(tiny_model, bl.SingleBitFlip("0", 3, 31), modules="0"):
        out = tiny_model[0](x)
    assert out.reshape(-1)[3].item() == -clean.reshape(-1)[3].item()
    assert torch.equal(
        torch.cat([out.reshape(-1)[:3], out.reshape(-1)[4:]]), torch.cat([clean.reshape(-1)[:3], clean.reshape(-1)[4:]])
    )


def test_activation_quantized_format_uses_given_scale(tiny_model):
    x = torch.randn(8, 4)
    with bl.corrupted_activations(tiny_model, bl.BitErrorRate(0.0), modules="0", fmt=bl.Int(8), scales={"0": 0.5}):
        out = tiny_model[0](x)
    assert torch.allclose(out, torch.clamp(torch.round(tiny_model[0](x) / 0.5), -127, 127) * 0.5)


def test_unknown_module_name(tiny_model):
    with pytest.raises(ValueError, match="modules.*valid names: 0, 1, 2"):
        with bl.corrupted_activations(tiny_model, bl.BitErrorRate(0.1), modules="fc"):
            pass


@dataclass(frozen=True)
class _Repeated(bl.faults.Fault):
    """A custom fault that lists each of its sites twice (bitlab's own samplers never repeat one)."""

    sites: tuple[tuple[int, int], ...]
    mode: str = "flip"

    def sample(self, names, shapes, bits, generator=None):
        word = torch.tensor([w for w, _ in self.sites] * 2, dtype=torch.int64)
        bit = torch.tensor([b for _, b in self.sites] * 2, dtype=torch.int64)
        return bl.faults.Sites(torch.zeros_like(word), word, bit)


@pytest.mark.parametrize("mode", ["flip", "stuck0", "stuck1"])
def test_native_write_is_the_same_on_contiguous_and_strided_weights(mode):
    """A contiguous CPU weight (written through NumPy) and a column-major one (tensor ops) read back the words
    fault_words makes of the same sites, repeated sites included, and both come back bit for bit."""
    w = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    fault = _Repeated(((0, 3), (7, 30), (7, 2), (29, 31)), mode)
    sites = fault.sample(["weight"], [w.shape], tuple(range(32)))
    hit, inv = torch.unique(sites.word, return_inverse=True)
    ints = w.reshape(-1).view(torch.int32)
    want = ints.clone()
    want[hit] = to_signed(fault_words(to_unsigned(ints[hit], 32), inv, sites.bit, mode), 32).to(torch.int32)
    for weight in (w.clone(), w.t().clone().t()):  # same values, the second one column-major
        m = nn.Linear(5, 6, bias=False)
        m.weight.data = weight
        assert m.weight.is_contiguous() == (weight.stride() == (5, 1))
        with bl.corrupted(m, fault):
            got = m.weight.detach().contiguous().reshape(-1).view(torch.int32).clone()
        assert torch.equal(got, want), (mode, weight.stride())
        assert torch.equal(m.weight.detach().contiguous().view(torch.int32), w.view(torch.int32))
