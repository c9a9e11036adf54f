"""Number formats against independent references (struct / numpy bit patterns)."""

import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bitlab as bl
from bitlab.formats import to_signed, to_unsigned

EDGE32 = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    1e-45,
    -1e-45,
    1.17549435e-38,
    3.4028235e38,
    -3.4028235e38,
    float("inf"),
    float("-inf"),
    0.1,
    2.0,
    1.9999999,
    65504.0,
    6e-8,
]


def f32_bits(v: float) -> int:
    return struct.unpack("<I", struct.pack("<f", v))[0]


def bits_f32(u: int) -> float:
    return struct.unpack("<f", struct.pack("<I", u & 0xFFFFFFFF))[0]


def same_float(a: float, b: float) -> bool:
    return f32_bits(a) == f32_bits(b)


floats32 = st.floats(width=32, allow_nan=False)
pytestmark = pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")


@given(st.lists(floats32, min_size=1, max_size=20))
def test_fp32_encode_matches_struct(values):
    words = bl.FP32.encode(torch.tensor(values, dtype=torch.float32))
    assert words.tolist() == [f32_bits(v) for v in values]
    assert torch.equal(bl.FP32.decode(words).view(torch.int32), torch.tensor(values).view(torch.int32))


def test_fp32_edge_cases_and_nan():
    x = torch.tensor(EDGE32 + [float("nan")], dtype=torch.float32)
    words = bl.FP32.encode(x)
    assert words.tolist()[:-1] == [f32_bits(v) for v in EDGE32]
    assert (words >= 0).all() and (words < 2**32).all()
    assert torch.equal(bl.FP32.decode(words).view(torch.int32), x.view(torch.int32))


@given(floats32, st.integers(0, 31))
def test_fp32_bit_flip_matches_struct(v, bit):
    w = bl.FP32.encode(torch.tensor([v])) ^ (1 << bit)
    got = bl.FP32.decode(w).item()
    want = bits_f32(f32_bits(v) ^ (1 << bit))
    assert same_float(got, want) or (np.isnan(got) and np.isnan(want))


@given(st.lists(floats32, min_size=1, max_size=20))
def test_fp16_encode_matches_numpy(values):
    ref = np.array(values, dtype=np.float32).astype(np.float16).view(np.uint16).astype(np.int64)
    assert bl.FP16.encode(torch.tensor(values, dtype=torch.float32)).tolist() == ref.tolist()


def test_fp16_edges_overflow_subnormal():
    x = torch.tensor([65504.0, 65520.0, -1e6, 6e-8, 3e-8, -0.0], dtype=torch.float32)
    ref = np.array(x.tolist(), dtype=np.float32).astype(np.float16)
    assert bl.FP16.encode(x).tolist() == ref.view(np.uint16).astype(np.int64).tolist()
    dec = bl.FP16.decode(bl.FP16.encode(x))
    assert dec[1].item() == float("inf") and dec[2].item() == float("-inf")
    assert np.array_equal(dec.numpy(), ref.astype(np.float32))


@given(st.integers(0, 0xFFFF), st.integers(0, 15))
def test_fp16_flip_decodes_like_numpy(word, bit):
    got = bl.FP16.decode(torch.tensor([word ^ (1 << bit)])).numpy()
    want = np.array([word ^ (1 << bit)], dtype=np.uint16).view(np.float16).astype(np.float32)
    assert np.array_equal(got, want, equal_nan=True)


def bf16_reference(v: float) -> int:
    """Round-to-nearest-even truncation of the FP32 pattern to its upper 16 bits."""
    u = f32_bits(v)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) & 0xFFFF


BIG32 = float(np.float32(3e38))


@given(
    st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False, max_value=BIG32, min_value=-BIG32),
        min_size=1,
        max_size=20,
    )
)
def test_bf16_encode_matches_bit_reference(values):
    assert bl.BF16.encode(torch.tensor(values)).tolist() == [bf16_reference(v) for v in values]


def test_bf16_decode_is_upper_half_of_fp32():
    words = torch.tensor([0x3F80, 0xBF80, 0x7F80, 0x0001, 0x4049])
    got = bl.BF16.decode(words)
    want = [bits_f32(int(w) << 16) for w in words]
    assert all(same_float(a, b) for a, b in zip(got.tolist(), want))


def q25_reference(v: float) -> int:
    k = round(v * 32)  # Python's round is half to even
    return max(-128, min(127, k)) & 0xFF


@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=30))
def test_q25_encode_matches_reference(values):
    x = torch.tensor(values, dtype=torch.float64)
    assert bl.Q(2, 5).encode(x).tolist() == [q25_reference(v) for v in values]


@given(st.integers(0, 255), st.integers(0, 7))
def test_q25_flip_decodes_like_struct(word, bit):
    w = word ^ (1 << bit)
    want = struct.unpack("b", bytes([w]))[0] / 32
    assert bl.Q(2, 5).decode(torch.tensor([w])).item() == want


def test_q_saturation_rounding_and_fields():
    q = bl.Q(2, 5)
    assert q.width == 8 and q.max_value == 4 - 1 / 32 and q.min_value == -4
    x = torch.tensor([4.0, 100.0, -4.0, -100.0, 1 / 64, 3 / 64, float("nan")])
    assert q.roundtrip(x).tolist() == [q.max_value, q.max_value, -4.0, -4.0, 0.0, 2 / 32, 0.0]
    assert q.bits("sign") == (7,) and q.bits("integer") == (5, 6) and q.bits("fraction") == tuple(range(5))
    assert bl.Q(15, 16).width == 32


@pytest.mark.parametrize("m,n", [(16, 16), (31, 1), (0, 32)])
def test_q_wider_than_32_bits_is_rejected(m, n):
    with pytest.raises(ValueError, match="at most 32 bits"):
        bl.Q(m, n)


@pytest.mark.parametrize("bad", [(-1, 2), (2, -1)])
def test_q_negative_sizes_rejected(bad):
    with pytest.raises(ValueError, match="allowed"):
        bl.Q(*bad)


@given(st.lists(st.floats(-3, 3, allow_nan=False), min_size=2, max_size=40), st.sampled_from([8, 4]))
def test_int_quantization_matches_numpy(values, bits):
    x = np.array(values, dtype=np.float32)
    fmt = bl.Int(bits)
    qmax = 2 ** (bits - 1) - 1
    amax = np.abs(x).max()
    scale = np.float32(amax) / np.float32(qmax)
    scale = scale if scale > 0 else 1.0  # an all-zero (or underflowing) tensor gets scale 1
    q = np.clip(np.rint(x.astype(np.float64) / np.float64(np.float32(scale))), -qmax, qmax).astype(np.int64)
    s = fmt.calibrate(torch.tensor(x))
    assert abs(s.item() - scale) <= 1e-6 * max(scale, 1)
    words = fmt.encode(torch.tensor(x), s)
    assert words.tolist() == (q & (2**bits - 1)).tolist()
    dec = fmt.decode(words, s)
    assert torch.allclose(dec, torch.tensor(q * np.float32(s.item()), dtype=torch.float32))
    assert (dec - torch.tensor(x)).abs().max() <= s.item() / 2 + 1e-6


def test_int8_per_channel_and_flip():
    w = torch.tensor([[1.0, -0.5], [0.01, 0.02]])
    fmt = bl.Int(8, per_channel=True)
    s = fmt.calibrate(w)
    assert s.shape == (2, 1) and torch.allclose(s.squeeze(), torch.tensor([1 / 127, 0.02 / 127]))
    words = fmt.encode(w, s)
    assert words[0, 0].item() == 127 and words[0, 1].item() == (-64) & 0xFF
    flipped = fmt.decode(words ^ (1 << 7), s)  # sign bit of two's complement: 127 -> -1
    assert flipped[0, 0].item() == pytest.approx(-1 / 127)
    with pytest.raises(ValueError, match="scale"):
        fmt.decode(words)


def test_bit_selections():
    assert bl.FP32.bits("exponent") == tuple(range(23, 31))
    assert bl.FP32.bits("sign") == (31,)
    assert bl.FP32.bits([30]) == (30,)
    assert bl.FP32.bits(30) == (30,)
    assert bl.FP32.bits("all") == tuple(range(32))
    assert bl.FP16.bits("exponent") == tuple(range(10, 15)) and bl.BF16.bits("mantissa") == tuple(range(7))
    assert bl.FP32.bits(["sign", 0]) == (0, 31)


@pytest.mark.parametrize(
    "sel,err,msg",
    [
        ("mantisa", ValueError, "allowed"),
        ([32], ValueError, "0..31"),
        (-1, ValueError, "0..31"),
        ([], ValueError, "empty"),
        (1.5, TypeError, "bits"),
    ],
)
def test_bad_bit_selections(sel, err, msg):
    with pytest.raises(err, match=msg):
        bl.FP32.bits(sel)


@given(st.integers(1, 32), st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=10))
def test_twos_complement_roundtrip(width, values):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    v = torch.tensor([min(max(x, lo), hi) for x in values])
    assert torch.equal(to_signed(to_unsigned(v, width), width), v)
