"""bitlab.report: intervals against scipy's Student t, the verdict rule case by case and as properties,
claims round-tripped through their CSV results files, and bad input refused by name."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bitlab.plot import METHOD_COLORS, method_color
from bitlab.report import RULE, VERDICTS, Claim, claims_table, interval, load_claims, results_dir, save_claims, verdict


@pytest.mark.parametrize("n", [2, 3, 5, 12, 31, 40])
def test_interval_matches_scipy_t(n):
    x = np.random.default_rng(n).normal(1.0, 0.5, size=n)
    mean, lo, hi = interval(x)
    ref = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x)) if n <= 31 else None
    if ref is None:  # beyond the table: the normal quantile
        half = 1.96 * x.std(ddof=1) / math.sqrt(n)
        ref = (x.mean() - half, x.mean() + half)
    assert mean == pytest.approx(x.mean())
    assert (lo, hi) == pytest.approx(ref, rel=1e-3)


def test_interval_single_and_constant_values_are_their_range():
    assert interval([0.3]) == (0.3, 0.3, 0.3)
    assert interval([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)


@pytest.mark.parametrize(
    ("low", "high", "kw", "expected"),
    [
        (0.1, 0.3, {}, "reproduced"),
        (-0.1, 0.3, {}, "not reproduced"),
        (0.0, 0.3, {}, "not reproduced"),  # touching 'no effect' is not an effect
        (-0.3, -0.1, {}, "opposite"),
        (0.1, 0.3, {"direction": "less"}, "opposite"),
        (-0.3, -0.1, {"direction": "less"}, "reproduced"),
        (0.05, 0.1, {"band": (0.2, 0.5)}, "partly"),
        (0.05, 0.25, {"band": (0.2, 0.5)}, "reproduced"),
        (0.7, 0.9, {"band": (0.2, 0.5)}, "reproduced"),  # stronger than the paper's
        (-0.25, -0.05, {"direction": "less", "band": (-0.5, -0.2)}, "reproduced"),
        (-0.1, -0.05, {"direction": "less", "band": (-0.5, -0.2)}, "partly"),
        (1.5, 2.5, {"null": 1.0}, "reproduced"),
        (0.5, 0.9, {"null": 1.0}, "opposite"),
    ],
)
def test_verdict_rule(low, high, kw, expected):
    assert verdict(low, high, **kw) == expected


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=8),
    st.floats(-1, 1),
    st.sampled_from(["greater", "less"]),
)
def test_verdict_is_symmetric_under_negation(values, null, direction):
    """Negating the values, the null and the direction gives the same verdict, and the interval holds
    the mean."""
    a = Claim("01", "P", "s", "x", values, null=null, direction=direction)
    other = "less" if direction == "greater" else "greater"
    b = Claim("01", "P", "s", "x", [-v for v in values], null=-null, direction=other)
    assert a.verdict == b.verdict
    assert a.ci[0] <= a.mean + 1e-9 and a.mean <= a.ci[1] + 1e-9


def test_ratios_use_a_log_scale():
    c = Claim("01", "Qin", "nulling raises the tolerable BER", "2x to 100x", [4.0, 16.0], log=True, band=(2, math.inf))
    assert c.mean == pytest.approx(8.0)  # geometric mean
    lo, hi = c.ci
    _, ref_lo, ref_hi = interval(np.log10([4.0, 16.0]))
    assert (lo, hi) == pytest.approx((10**ref_lo, 10**ref_hi))
    assert c.verdict == ("reproduced" if ref_lo > 0 else "not reproduced")
    tight = Claim("01", "Qin", "s", "2x to 100x", [1.3, 1.35, 1.4], log=True, band=(2, math.inf))
    assert tight.verdict == "partly"  # bigger than 1, but short of the paper's 2x


def test_expect_raises_with_the_numbers():
    c = Claim("04", "SAR", "SAM is more robust", "yes", [0.1, -0.2, 0.05])
    assert c.expect("not reproduced") is c
    with pytest.raises(AssertionError, match="SAM is more robust.*not reproduced"):
        c.expect("reproduced")
    with pytest.raises(ValueError, match="verdicts"):
        c.expect("holds")


def test_table_and_results_file_round_trip(tmp_path):
    claims = [
        Claim("02", "Fuengfusin 2024", "Q2.5 gain at 1e-4", "+54.4 points", [0.3, 0.4, 0.5], unit="points"),
        Claim("02", "Fuengfusin 2024", "FP32 gain", "yes", [0.0, 0.01, -0.01], note="ours"),
    ]
    t = claims_table(claims)
    assert list(t.columns) == ["paper's number", "ours", "verdict", "note"]
    assert t["verdict"].tolist() == ["reproduced", "not reproduced"]
    path = save_claims(claims, tmp_path / "r" / "02_claims.csv")
    back = load_claims(tmp_path / "r")
    full = claims_table(claims, full=True)
    pd.testing.assert_frame_equal(back, full, check_dtype=False)
    assert load_claims([path]).shape == full.shape


def test_bad_input_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="direction"):
        Claim("01", "P", "s", "x", [1.0], direction="up")
    with pytest.raises(ValueError, match="values"):
        Claim("01", "P", "s", "x", [])
    with pytest.raises(ValueError, match="values"):
        Claim("01", "P", "s", "x", [1.0, float("nan")])
    with pytest.raises(ValueError, match="values"):
        Claim("01", "P", "s", "x", [-1.0], log=True)
    with pytest.raises(ValueError, match="band"):
        Claim("01", "P", "s", "x", [1.0], band=(-2.0, -1.0))
    with pytest.raises(ValueError, match="statement"):
        Claim("01", "P", "", "x", [1.0])
    with pytest.raises(TypeError, match="claims"):
        claims_table([])
    with pytest.raises(ValueError, match="path"):
        save_claims([Claim("01", "P", "s", "x", [1.0])], tmp_path / "x.txt")
    (tmp_path / "bad_claims.csv").write_text("notebook,claim,verdict,ours\n01,a,holds,1\n")
    with pytest.raises(ValueError, match="unknown verdicts"):
        load_claims(tmp_path)
    with pytest.raises(FileNotFoundError, match="paths"):
        load_claims(tmp_path / "empty")


def test_rule_names_every_verdict():
    assert all(f"**{v}**" in RULE for v in VERDICTS)


def test_method_colors_are_distinct_and_aliases_agree():
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert method_color("SAM (rho 0.05)") == method_color("sam") == METHOD_COLORS["SAM"]
    assert method_color("baseline") == method_color("none")
    assert method_color("parity (extra bit)") == METHOD_COLORS["parity nulling"]
    assert method_color("something else") is None


def test_results_dir_keeps_scales_apart():
    assert results_dir("small") == Path("results/small")
    assert results_dir("paper", smoke=True, root="r") == Path("r/smoke")
    with pytest.raises(ValueError, match="scale"):
        results_dir("huge")
