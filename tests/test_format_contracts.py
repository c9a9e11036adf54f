"""Contracts of the number formats that mutation testing showed unchecked: the bit fields of a freshly
built float format, the defaults and bounds of Int and Q, int encoding at the edges (clamping, NaN and
Inf), per-channel calibration's axis rule, and the exact wording of the refusals users read."""

from __future__ import annotations

import pytest
import torch

import bitlab as bl
from bitlab.formats import FloatFormat, check_storable, resolve_bits


@pytest.mark.parametrize(
    "width,exp,dtype,idtype",
    [(32, 8, torch.float32, torch.int32), (16, 5, torch.float16, torch.int16), (16, 8, torch.bfloat16, torch.int16)],
)
def test_a_float_format_built_now_names_its_fields_by_hand(width, exp, dtype, idtype):
    f = FloatFormat("F", width, exp, dtype, idtype)
    mant = width - 1 - exp
    assert dict(f.fields) == {
        "sign": (width - 1,),
        "exponent": tuple(range(mant, width - 1)),
        "mantissa": tuple(range(mant)),
        "exponent_msb": (width - 2,),
        "msb": (width - 1,),
    }
    assert f.bits("exponent") == tuple(range(mant, width - 1))


def test_int_and_q_defaults_and_bounds():
    i = bl.Int()
    assert (i.width, i.per_channel, i.axis, i.qmax, i.name) == (8, False, 0, 127, "int8")
    assert bl.Int(2).qmax == 1 and bl.Int(32).width == 32 and bl.Int(8, True).name == "int8/ch"
    for bad in (1, 33):
        with pytest.raises(ValueError, match=rf"^bits: {bad} is out of range; allowed ints 2\.\.32$"):
            bl.Int(bad)
    assert bl.Q(0, 0).width == 1 and bl.Q(2, 0).width == 3
    with pytest.raises(ValueError, match=r"^m: -1 is out of range"):
        bl.Q(-1, 2)
    with pytest.raises(ValueError, match=r"^n: -1 is out of range"):
        bl.Q(2, -1)
    with pytest.raises(ValueError, match=r"\(1 \+ m \+ n = 43\)"):
        bl.Q(2, 40)


def test_int_encoding_clamps_and_maps_non_finite_values():
    f = bl.Int(8)
    x = torch.tensor([0.5, -0.5, 3.0, -3.0, float("nan"), float("inf"), -float("inf"), 0.01])
    words = f.encode(x, 1.0 / 127)
    got = f.decode(words, 1.0 / 127) * 127
    assert got.round().tolist() == [64.0, -64.0, 127.0, -127.0, 0.0, 127.0, -127.0, 1.0]


def test_per_channel_calibration_follows_the_axis_rule():
    x = torch.arange(6.0).reshape(2, 3)
    assert bl.Int(8, per_channel=True, axis=-2).calibrate(x).shape == (2, 1)
    assert bl.Int(8, per_channel=True, axis=1).calibrate(x).shape == (1, 3)
    assert bl.Int(8, per_channel=True).calibrate(torch.arange(3.0)).shape == ()  # 1-D: one scale
    assert bl.Int(8, per_channel=False).calibrate(x).shape == ()
    assert float(bl.Int(8).calibrate(x)) == pytest.approx(5.0 / 127)
    with pytest.raises(ValueError, match=r"axis: 2 does not exist .* allowed -2\.\.1$"):
        bl.Int(8, per_channel=True, axis=2).calibrate(x)
    with pytest.raises(ValueError, match=r"allowed -2\.\.1$"):
        bl.Int(8, per_channel=True, axis=-3).calibrate(x)


def test_refusals_say_exactly_what_is_allowed():
    with pytest.raises(
        ValueError, match=r"'tensor' is stored as torch.float16 .*\(the native format, FP16\) or a format"
    ):
        check_storable(bl.FP32, torch.float16)
    with pytest.raises(ValueError, match=r"native format, none\)"):
        check_storable(bl.FP16, torch.float8_e4m3fn)
    with pytest.raises(
        ValueError,
        match=r"allowed: 'all', 'sign', 'exponent', 'mantissa', 'exponent_msb', 'msb' or bit indices 0\.\.31$",
    ):
        resolve_bits("expo", 32, bl.FP32.fields)
    with pytest.raises(TypeError, match="bits: bit indices must be ints, got True"):
        resolve_bits([True], 32, bl.FP32.fields)
    assert resolve_bits(["sign", 0, 1, 0], 32, bl.FP32.fields) == (0, 1, 31)


def test_distinct_sampling_edges_and_uniformity_on_both_paths():
    from bitlab.faults import sample_distinct

    g = torch.Generator().manual_seed(0)
    assert sample_distinct(10, 0, g).dtype == torch.int64 and sample_distinct(10, 0, g).numel() == 0
    assert sorted(sample_distinct(10, 10, g).tolist()) == list(range(10))
    assert sample_distinct(1, 1, g).tolist() == [0]
    for k in (-1, 11):
        with pytest.raises(ValueError, match=rf"^k: cannot draw {k} distinct positions from 10; allowed 0\.\.10$"):
            sample_distinct(10, k, g)
    for total in (1000, (1 << 17) + 3):  # the permutation path and the rejection path
        counts = torch.zeros(8)
        for _ in range(400):
            d = sample_distinct(total, 5, g)
            assert d.numel() == 5 == d.unique().numel() and 0 <= int(d.min()) and int(d.max()) < total
            counts += torch.bincount(d * 8 // total, minlength=8)
        expected = 400 * 5 / 8  # 250 per bin; a 5-sigma band
        assert (counts - expected).abs().max() < 5 * expected**0.5, counts
