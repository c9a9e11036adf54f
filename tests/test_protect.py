"""Protection codecs: round trips, detection, overheads, bad input."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bitlab as bl
from bitlab.codecs import popcount

FORMATS = [bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5), bl.Int(8)]


def weights(seed=0, n=200):
    return torch.randn(n, generator=torch.Generator().manual_seed(seed)) * 0.3


@given(st.lists(st.integers(0, 2**62 - 1), min_size=1, max_size=20))
def test_popcount_matches_python(values):
    assert popcount(torch.tensor(values)).tolist() == [bin(v).count("1") for v in values]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("codec", [bl.Identity(), bl.RangeNulling(), bl.ParityNulling("extra")])
def test_fault_free_round_trip_equals_the_format(fmt, codec):
    w = weights()
    state = codec.fit(w, fmt)
    got = codec.decode(codec.encode(w, fmt, state), fmt, state)
    assert torch.equal(got, fmt.roundtrip(w))


@pytest.mark.parametrize("fmt", [bl.FP32, bl.FP16, bl.BF16])
def test_spare_parity_round_trip_and_no_overhead(fmt):
    w = weights()
    c = bl.ParityNulling("spare")
    state = c.fit(w, fmt)
    assert torch.equal(c.decode(c.encode(w, fmt, state), fmt, state), fmt.roundtrip(w))
    assert c.overhead_bits(fmt) == 0 and bl.ParityNulling("extra").overhead_bits(fmt) == 1


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["extra", "spare"])
def test_parity_nulls_every_single_flip_and_misses_double_flips(fmt, where):
    if where == "spare" and fmt.name.startswith(("Q", "int")):
        with pytest.raises(ValueError, match="no spare bit"):
            bl.ParityNulling(where).fit(weights(), fmt)
        return
    c = bl.ParityNulling(where)
    w = weights(n=5) + 0.05
    state = c.fit(w, fmt)
    words = c.encode(w, fmt, state)
    width = c.width(fmt)
    for b in range(width):  # exhaustive over single flips
        out = c.decode(words ^ (1 << b), fmt, state)
        assert (out == 0).all()
    out = c.decode(words ^ 0b11, fmt, state)  # two flips: parity cannot see them
    assert (out != 0).all()


@given(st.integers(0, 31))
def test_range_nulling_zeroes_exactly_the_out_of_range_reads(bit):
    w = torch.tensor([-0.5, 0.1, 0.7, 0.0, 0.3])
    c = bl.RangeNulling()
    state = c.fit(w, bl.FP32)
    plain = bl.FP32.decode(bl.FP32.encode(w) ^ (1 << bit))
    out = c.decode(c.encode(w, bl.FP32, state) ^ (1 << bit), bl.FP32, state)
    inside = torch.isfinite(plain) & (plain >= -0.5) & (plain <= 0.7)
    assert torch.equal(out, torch.where(inside, plain, torch.zeros_like(plain)))
    assert state["lo"] == -0.5 and state["hi"] == pytest.approx(0.7)


@given(st.integers(1, 62), st.floats(-1, 1, allow_nan=False), st.data())
def test_unary_flip_error_is_exactly_one_level(n, v, data):
    c = bl.Unary(n)
    state = {"scale": 1.0}
    word = c.encode(torch.tensor([v]), bl.FP32, state)
    bit = data.draw(st.integers(0, n - 1))
    clean = c.decode(word, bl.FP32, state).item()
    flipped = c.decode(word ^ (1 << bit), bl.FP32, state).item()
    assert abs(clean - v) <= 1 / n + 1e-6
    assert abs(abs(flipped - clean) - 2 / n) < 1e-5


def test_unary_overhead_and_bad_n():
    assert bl.Unary(16).overhead_bits(bl.Q(2, 5)) == 8 and bl.Unary(16).width(bl.FP32) == 16
    for bad in (0, 63, 2.5):
        with pytest.raises(ValueError, match="n"):
            bl.Unary(bad)


def test_bad_codec_arguments():
    with pytest.raises(ValueError, match="where"):
        bl.ParityNulling("inside")
    with pytest.raises(ValueError, match="margin"):
        bl.RangeNulling(-1)
