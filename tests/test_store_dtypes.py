"""Stores follow the stored dtype: fp16/bf16 weights are flipped in their own 16 bits, checked against
numpy's float16 and hand-made bfloat16 bit patterns; wider formats are refused; mixed models get each
tensor's own format; codecs work on native fp16; sites are moved to the tensor's device."""

import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import ZOO, same_as, snapshot

import bitlab as bl
from bitlab.campaigns.scaling import sweep_t
from bitlab.codecs import SECDED, WeightScaling
from bitlab.faults import BitFlips, per_tensor_bits
from bitlab.inject import Store
from bitlab.params import store_format


def ref_bits16(w: torch.Tensor) -> np.ndarray:
    """The 16-bit patterns of fp16 / bf16 weights, computed without torch's bit views: numpy's float16
    for fp16; for bf16, the upper half of the float32 bit pattern (struct), which bf16 is by definition."""
    vals = w.detach().float().reshape(-1).tolist()
    if w.dtype == torch.float16:
        return np.array(vals, dtype=np.float16).view(np.uint16).astype(np.int64)
    return np.array([struct.unpack("<I", struct.pack("<f", v))[0] >> 16 for v in vals], dtype=np.int64)


def bits16(w: torch.Tensor) -> np.ndarray:
    return w.detach().reshape(-1).view(torch.int16).numpy().astype(np.int64) & 0xFFFF


@pytest.mark.parametrize("name", ["fp16", "bf16"])
@pytest.mark.parametrize("bit", range(16))
def test_every_bit_of_a_16_bit_weight_flips_as_the_reference_says(name, bit):
    model, _ = ZOO[name]()
    w = model[0].weight
    snap, before = snapshot(model), ref_bits16(w)
    index = 7
    with bl.corrupted(model, bl.SingleBitFlip("0.weight", index, bit)) as r:
        now = bits16(w)
    want = before.copy()
    want[index] ^= 1 << bit
    assert np.array_equal(now, want)  # exactly this bit of this word, nothing else
    assert r.flips == 1 and r.fmt == ("FP16" if name == "fp16" else "BF16")
    assert same_as(model, snap)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_signalling_nan_payload_is_kept(name):
    """A flip into the all-ones exponent keeps its mantissa: the word is XORed, not round-tripped
    through float32 (which would quiet the NaN and change its payload)."""
    model, _ = ZOO[name]()
    w = model[0].weight
    exp = range(10, 15) if name == "fp16" else range(7, 15)
    with torch.no_grad():  # one weight whose exponent is all ones but the MSB, mantissa 1: +-1.x with LSB set
        pattern = sum(1 << b for b in exp if b != 14) | 1
        w.view(-1).view(torch.int16)[3] = pattern
    before = ref_bits16(w) if name == "bf16" else bits16(w)
    with bl.corrupted(model, bl.SingleBitFlip("0.weight", 3, 14)):
        assert bits16(w)[3] == before[3] ^ (1 << 14)
        assert torch.isnan(w.reshape(-1)[3])


@pytest.mark.parametrize("name", ["fp16", "bf16"])
@pytest.mark.parametrize("k", [1, 40, 306])
def test_bit_flips_change_exactly_k_stored_bits(name, k):
    model, _ = ZOO[name]()
    before = {n: bits16(p) for n, p in model.named_parameters()}
    with bl.corrupted(model, BitFlips(k), generator=torch.Generator().manual_seed(k)) as r:
        diff = {n: bits16(p) ^ before[n] for n, p in model.named_parameters()}
    changed_bits = sum(int(np.unpackbits(d.astype(">u2").view(np.uint8)).sum()) for d in diff.values())
    changed_words = sum(int((d != 0).sum()) for d in diff.values())
    words = {(int(t), int(w)) for t, w in zip(r.sites.tensor, r.sites.word)}
    assert r.flips == k and changed_bits == k and changed_words == len(words)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_bit_error_rate_counts_the_stored_width(name):
    model, _ = ZOO[name]()
    n = sum(p.numel() for p in model.parameters())
    refs = [ref_bits16(p) for p in model.parameters()]
    with bl.corrupted(model, bl.BitErrorRate(1.0)) as r:
        assert all(np.array_equal(bits16(p), ref ^ 0xFFFF) for p, ref in zip(model.parameters(), refs))
    assert r.flips == 16 * n
    with bl.corrupted(model, bl.BitErrorRate(1.0, bits="exponent")) as r:
        pass
    assert r.flips == (5 if name == "fp16" else 8) * n


@pytest.mark.parametrize("fmt", [bl.FP32, bl.Q(15, 16), bl.Int(32)])
def test_a_format_wider_than_the_stored_dtype_is_refused(fmt):
    model, _ = ZOO["fp16"]()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"{fmt.name}.*'0\.weight'.*float16.*allowed"):
        with bl.corrupted(model, bl.BitFlips(1), fmt=fmt):
            pass
    with pytest.raises(ValueError, match="bfloat16"):
        Store(ZOO["bf16"]()[0], fmt)
    assert same_as(model, snap)


@pytest.mark.parametrize("fmt", [bl.FP16, bl.BF16, bl.Q(2, 5), bl.Int(8)])
def test_narrower_formats_on_fp32_quantize_on_purpose(fmt):
    model, _ = ZOO["conv1d"]()
    w = model.conv1.weight
    want = fmt.roundtrip(w.detach().reshape(-1)).view_as(w)
    with bl.corrupted(model, bl.BitErrorRate(0.0), fmt=fmt, params="conv1.weight") as r:
        assert torch.equal(w, want)
    assert r.fmt == fmt.name


def test_float64_needs_an_explicit_format():
    model = nn.Linear(3, 2).double()
    with pytest.raises(ValueError, match=r"'weight'.*torch.float64.*float32 \(FP32\).*fmt="):
        Store(model)
    w = model.weight.detach().clone()
    with bl.corrupted(model, bl.BitErrorRate(0.0), fmt=bl.FP32):  # every weight rounded to float32
        assert torch.equal(model.weight, w.float().double())
    assert torch.equal(model.weight, w)


def mixed():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 3))
    m[0].half()
    return m


def test_a_mixed_model_gets_each_tensors_native_format():
    m = mixed()
    snap = snapshot(m)
    n16, n32 = sum(p.numel() for p in m[0].parameters()), sum(p.numel() for p in m[1].parameters())
    store = Store(m)
    assert store.fmt is None and store.formats == {
        "0.weight": bl.FP16,
        "0.bias": bl.FP16,
        "1.weight": bl.FP32,
        "1.bias": bl.FP32,
    }
    with store.corrupted(bl.BitErrorRate(1.0)) as r:
        assert bits16(m[0].weight).tolist() == (ref_bits16(snap["state"]["0.weight"]) ^ 0xFFFF).tolist()
    assert r.flips == 16 * n16 + 32 * n32 and r.fmt == "FP16+FP32"
    assert r.formats["0.bias"] == "FP16" and r.formats["1.bias"] == "FP32"
    with store.corrupted(bl.BitErrorRate(1.0, bits="exponent")) as r:
        ints = m[1].weight.detach().view(torch.int32)
        orig = snap["state"]["1.weight"].view(torch.int32)
        assert torch.equal(ints ^ orig, torch.full_like(ints, 0xFF << 23))
        assert np.array_equal(bits16(m[0].weight) ^ ref_bits16(snap["state"]["0.weight"]), np.full(20, 0x1F << 10))
    assert r.flips == 5 * n16 + 8 * n32
    with pytest.raises(ValueError, match="bit index 20.*0..15.*FP16"):
        with store.corrupted(bl.BitFlips(1, bits=20)):
            pass
    with pytest.raises(ValueError, match=r"'0.weight' as FP16, '1.weight' as FP32"):
        store_format(m, None)
    assert store_format(m, None, params="1.*") is bl.FP32
    assert same_as(m, snap)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 7), st.sampled_from([(0, 1), (3,), (0, 5, 9, 31)])), min_size=1, max_size=4),
    st.integers(0, 2**20),
)
def test_sites_in_a_mixed_bit_space_are_distinct_and_in_range(tensors, seed):
    shapes = [torch.Size([n]) for n, _ in tensors]
    per = [b for _, b in tensors]
    total = sum(n * len(b) for n, b in tensors)
    k = total // 2
    s = BitFlips(k).sample([f"t{i}" for i in range(len(tensors))], shapes, per, torch.Generator().manual_seed(seed))
    triples = {(int(t), int(w), int(b)) for t, w, b in zip(s.tensor, s.word, s.bit)}
    assert len(s) == k == len(triples)
    assert all(0 <= w < tensors[t][0] and b in per[t] for t, w, b in triples)
    assert per_tensor_bits((1, 2), 3) == [(1, 2)] * 3


def test_secded_corrects_one_flip_per_word_on_native_fp16():
    model, _ = ZOO["fp16"]()
    snap = snapshot(model)
    w = model[0].weight
    flips = bl.FlipList(tuple(("0.weight", i, (5 * i) % 22) for i in range(w.numel())))
    with bl.corrupted(model, flips, codec=SECDED()) as r:
        assert np.array_equal(bits16(w), ref_bits16(snap["state"]["0.weight"]))  # every word corrected
    assert r.fmt == "FP16" and r.flips == w.numel()
    with bl.corrupted(model, bl.BitFlips(2, bits="data"), codec=SECDED(), params="0.bias"):
        pass
    assert same_as(model, snap)


def test_weight_scaling_on_native_fp16_matches_a_hand_computation():
    model, _ = ZOO["fp16"]()
    w = model[0].weight
    vals = w.detach().float().reshape(-1).numpy().astype(np.float64)
    t = 2.0**12
    c = 2.0 ** np.floor(np.log2(t / np.abs(vals).max()))
    stored = (vals * c).astype(np.float16).view(np.uint16).copy()
    stored[4] ^= 1 << 3
    want = (stored.view(np.float16).astype(np.float64) / c).astype(np.float32).astype(np.float16)
    codec = WeightScaling(t, pow2=True)
    with bl.corrupted(model, bl.SingleBitFlip("0.weight", 4, 3), codec=codec, params="0.weight"):
        got = w.detach().reshape(-1).numpy().copy()
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_campaigns_default_to_the_native_format():
    model, data = ZOO["fp16"]()
    n = sum(p.numel() for p in model.parameters())
    df = bl.ber_sweep(model, data, [0.0, 1.0], trials=1)
    assert set(df["format"]) == {"FP16"} and df["flips"].tolist() == [0, 16 * n]
    with pytest.raises(ValueError, match="FP32.*float16"):
        bl.ber_sweep(model, data, [0.1], trials=1, fmt=bl.FP32)
    df = sweep_t(model, data, [None, 4.0], None, 0.0, trials=1)
    assert set(df["format"]) == {"FP16"}


def test_sites_follow_an_explicit_device_and_meta_is_refused():
    model = nn.Linear(4, 3, device=torch.device("cpu"))
    snap = snapshot(model)
    with bl.corrupted(model, bl.BitFlips(5), generator=torch.Generator(device="cpu").manual_seed(0)) as r:
        assert r.sites.word.device.type == "cpu"
    assert same_as(model, snap)
    meta = nn.Linear(4, 3, device="meta")
    with pytest.raises(ValueError, match="'weight' is on the meta device"):
        Store(meta)
    with pytest.raises(TypeError, match="generator"):
        Store(model).corrupted(bl.BitFlips(1), generator=3).__enter__()
