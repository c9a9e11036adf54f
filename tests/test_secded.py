"""SECDED (extended Hamming) codec: exhaustive single/double-error behaviour on 8-bit words, property
tests on 32-bit words, round trips, overhead, layout checks against an independent reference."""

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bitlab as bl
from bitlab.codecs.secded import CORRECTED, DETECTED, OK, SECDED, layout, secded_decode, secded_encode
from bitlab.formats import Format

FORMATS = [bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5), bl.Int(8), bl.Int(4, per_channel=True)]


def reference_encode(d: int, k: int) -> int:
    """Textbook extended Hamming code built bit by bit with Python ints (independent of the
    vectorized encoder): data bits at the non-power-of-two positions 1..n, check bit at 2**j the XOR
    of the positions with bit j set, overall parity at position 0."""
    r = 1
    while 2**r < k + r + 1:
        r += 1
    n = k + r
    bits = [0] * (n + 1)
    data_positions = [p for p in range(1, n + 1) if p & (p - 1) != 0]
    for i, p in enumerate(data_positions):
        bits[p] = (d >> i) & 1
    for j in range(r):
        bits[2**j] = sum(bits[p] for p in range(1, n + 1) if (p >> j) & 1 and p != 2**j) % 2
    bits[0] = sum(bits[1:]) % 2
    return sum(b << p for p, b in enumerate(bits))


@pytest.mark.parametrize("k,width", [(8, 13), (16, 22), (32, 39), (4, 8), (1, 4)])
def test_widths_and_overheads(k, width):
    assert layout(k).width == width


def test_codec_overhead_per_format():
    c = SECDED()
    assert (c.width(bl.FP32), c.overhead_bits(bl.FP32)) == (39, 7)
    assert (c.width(bl.FP16), c.overhead_bits(bl.FP16)) == (22, 6)
    assert (c.width(bl.BF16), c.overhead_bits(bl.BF16)) == (22, 6)
    assert (c.width(bl.Q(2, 5)), c.overhead_bits(bl.Q(2, 5))) == (13, 5)
    assert (c.width(bl.Int(8)), c.overhead_bits(bl.Int(8))) == (13, 5)


def test_encoder_matches_the_textbook_reference_on_all_8_bit_words():
    d = torch.arange(256)
    assert secded_encode(d, 8).tolist() == [reference_encode(v, 8) for v in range(256)]


@given(st.integers(0, 2**32 - 1))
def test_encoder_matches_the_textbook_reference_on_32_bit_words(v):
    assert secded_encode(torch.tensor([v]), 32).item() == reference_encode(v, 32)


def test_exhaustive_8_bit_no_single_and_double_errors():
    k, n = 8, 13
    data = torch.arange(256)
    words = secded_encode(data, k)
    got, status = secded_decode(words, k)
    assert torch.equal(got, data) and bool((status == OK).all())
    for b in range(n):  # every single flip of every word is corrected
        got, status = secded_decode(words ^ (1 << b), k)
        assert torch.equal(got, data), b
        assert bool((status == CORRECTED).all()), b
    for b1, b2 in itertools.combinations(range(n), 2):  # every double flip is flagged
        _, status = secded_decode(words ^ ((1 << b1) | (1 << b2)), k)
        assert bool((status == DETECTED).all()), (b1, b2)


@given(st.integers(0, 2**32 - 1), st.integers(0, 38), st.integers(0, 38))
def test_32_bit_single_corrected_double_detected(v, b1, b2):
    word = secded_encode(torch.tensor([v]), 32)
    got, status = secded_decode(word ^ (1 << b1), 32)
    assert got.item() == v and status.item() == CORRECTED
    if b1 != b2:
        _, status = secded_decode(word ^ ((1 << b1) | (1 << b2)), 32)
        assert status.item() == DETECTED


@pytest.mark.parametrize("fmt", FORMATS)
def test_fault_free_round_trip_equals_the_format(fmt):
    w = torch.randn(300, generator=torch.Generator().manual_seed(0)) * 0.3
    c = SECDED()
    state = c.fit(w, fmt)
    assert torch.equal(c.decode(c.encode(w, fmt, state), fmt, state), fmt.roundtrip(w))


@pytest.mark.parametrize("fmt", FORMATS)
def test_codec_reads_single_flips_right_and_nulls_double_flips(fmt):
    w = torch.randn(50, generator=torch.Generator().manual_seed(1)) * 0.3 + 0.05
    c, raw = SECDED(), SECDED(on_detect="raw")
    state = c.fit(w, fmt)
    words = c.encode(w, fmt, state)
    clean = c.decode(words, fmt, state)
    width = c.width(fmt)
    for b in range(width):
        assert torch.equal(c.decode(words ^ (1 << b), fmt, state), clean)
    for b1, b2 in [(0, 1), (3, width - 1), (width - 2, width - 1)]:
        bad = words ^ ((1 << b1) | (1 << b2))
        assert bool((c.decode(bad, fmt, state) == 0).all())
        _, status = c.check(bad, fmt)
        assert bool((status == DETECTED).all())
        # raw mode reads the data bits of the stored word as they are
        data = torch.zeros_like(bad)
        for i, p in enumerate(layout(fmt.width).data_pos):
            data |= ((bad >> p) & 1) << i
        assert torch.equal(raw.decode(bad, fmt, state), fmt.decode(data, state.get("scale")))


def test_fields_map_the_format_bits_to_stored_positions():
    c = SECDED()
    f = c.fields(bl.FP32)
    lay = layout(32)
    assert f["sign"] == (lay.data_pos[31],) and f["exponent_msb"] == (lay.data_pos[30],)
    assert sorted(f["data"] + f["check"] + f["parity"]) == list(range(39))
    # flipping the stored exponent MSB of a weight is corrected
    w = torch.tensor([0.25])
    state = c.fit(w, bl.FP32)
    assert c.decode(c.encode(w, bl.FP32, state) ^ (1 << f["exponent_msb"][0]), bl.FP32, state).item() == 0.25


class Wide(Format):
    """A made-up 56-bit format: SECDED would need 63 stored bits."""

    name, width, fields = "wide56", 56, {"msb": (55,)}

    def encode(self, x, scale=None):
        return torch.zeros_like(x, dtype=torch.int64)

    def decode(self, words, scale=None):
        return torch.zeros_like(words, dtype=torch.float32)


def test_too_wide_for_62_stored_bits_is_a_clear_error():
    with pytest.raises(ValueError, match="fmt: wide56.*63 stored bits.*at most 62"):
        SECDED().width(Wide())
    assert layout(55).width == 62
    with pytest.raises(ValueError, match="k: 56"):
        layout(56)


def test_bad_arguments():
    with pytest.raises(ValueError, match="on_detect"):
        SECDED("ignore")
    with pytest.raises(ValueError, match="k"):
        layout(0)
    with pytest.raises(ValueError, match="data"):
        secded_encode(torch.tensor([256]), 8)


def test_injection_with_one_flip_per_word_is_fully_corrected():
    torch.manual_seed(0)
    model = torch.nn.Linear(40, 10)
    before = model.weight.detach().clone()
    x = torch.randn(5, 40)
    clean = model(x)
    with bl.corrupted(
        model, bl.BitFlips(5), fmt=bl.FP32, codec=SECDED(), generator=torch.Generator().manual_seed(3)
    ) as r:
        assert len(set(zip(r.sites.tensor.tolist(), r.sites.word.tolist()))) == r.flips == 5
        assert torch.equal(model(x), clean)
    assert torch.equal(model.weight, before)
