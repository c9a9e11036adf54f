"""Campaigns: BER sweeps, summaries, tolerable BER, the naive census."""

import math
import struct

import pandas as pd
import pytest
import torch

import bitlab as bl
from bitlab.campaigns import batch_accuracy, ber_sweep, materialize, naive_bit_census, summarize, tolerable_ber


def test_batch_accuracy_counts_non_finite_logits_as_wrong():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return x

    logits = torch.tensor([[1.0, 0.0], [float("nan"), 5.0], [0.0, float("inf")], [0.0, 1.0]])
    y = torch.tensor([0, 1, 1, 1])
    assert batch_accuracy(Fixed(), [(logits, y)]) == 0.5


def test_materialize_accepts_datasets_and_loaders(tiny_data):
    a = materialize(tiny_data, batch_size=10)
    b = materialize(torch.utils.data.DataLoader(tiny_data, batch_size=10))
    assert len(a) == 7 and all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, b))
    with pytest.raises(TypeError, match="data"):
        materialize(3)


def test_ber_sweep_rows_and_determinism(tiny_model, tiny_data):
    kw = dict(bers=[0.0, 1e-3, 1e-1], trials=4, fmt=bl.FP16, seed=3)
    df = ber_sweep(tiny_model, tiny_data, **kw)
    assert list(df.columns) == ["ber", "trial", "flips", "accuracy", "rad", "format", "codec", "seed"]
    assert len(df) == 12 and (df[df.ber == 0].flips == 0).all()
    assert (df[df.ber == 0].accuracy == df.attrs["clean_accuracy"]).all()
    assert df[df.ber == 0.1].flips.mean() > 10
    pd.testing.assert_frame_equal(df, ber_sweep(tiny_model, tiny_data, **kw))


def test_ber_sweep_bad_input(tiny_model, tiny_data):
    with pytest.raises(ValueError, match="bers.*\\[0, 1\\]"):
        ber_sweep(tiny_model, tiny_data, bers=[2.0])
    with pytest.raises(ValueError, match="trials"):
        ber_sweep(tiny_model, tiny_data, bers=[0.1], trials=0)


def test_summarize_confidence_interval():
    df = pd.DataFrame({"ber": [1e-3] * 4 + [1e-2] * 4, "accuracy": [0.9, 0.8, 0.85, 0.95, 0.5, 0.5, 0.5, 0.5]})
    s = summarize(df)
    row = s.iloc[0]
    half = 3.182446305284263 * df.accuracy[:4].std() / 2  # t(0.975, 3) * sd / sqrt(4)
    assert row["mean"] == pytest.approx(0.875) and row["ci_high"] - row["mean"] == pytest.approx(half)
    assert s.iloc[1]["ci_low"] == pytest.approx(0.5)


def test_tolerable_ber_interpolates_in_log_space():
    df = pd.DataFrame({"ber": [1e-4, 1e-3, 1e-2], "accuracy": [0.95, 0.94, 0.90]})
    # clean 0.95, threshold 0.94: 1e-3 passes exactly, 1e-2 fails
    assert tolerable_ber(df, clean=0.95) == pytest.approx(1e-3)
    df2 = pd.DataFrame({"ber": [1e-4, 1e-3], "accuracy": [0.95, 0.93]})
    assert tolerable_ber(df2, clean=0.95) == pytest.approx(10**-3.5)
    assert math.isnan(tolerable_ber(pd.DataFrame({"ber": [1e-4], "accuracy": [0.5]}), clean=0.95))
    assert tolerable_ber(pd.DataFrame({"ber": [1e-4], "accuracy": [0.95]}), clean=0.95) == 1e-4


def test_naive_census_flips_are_struct_flips(tiny_model, tiny_data):
    df = naive_bit_census(tiny_model, tiny_data, bits=[31, 30, 3], params="2.bias")
    assert len(df) == 3 * 3
    for r in df.itertuples():
        u = struct.unpack("<I", struct.pack("<f", r.value))[0] ^ (1 << r.bit)
        assert struct.pack("<f", r.flipped) == struct.pack("<f", struct.unpack("<f", struct.pack("<I", u))[0])
    clean = df.attrs["clean_accuracy"]
    assert ((clean - df.accuracy) / clean).round(12).equals(df.rad.round(12))


def test_naive_census_sampling(tiny_model, tiny_data):
    df = naive_bit_census(tiny_model, tiny_data, bits="sign", params="0.weight", n_weights=5, seed=1)
    assert len(df) == 5 and df["index"].is_unique


def test_ber_sweep_stops_early_once_at_chance(tiny_model, tiny_data):
    full = ber_sweep(tiny_model, tiny_data, bers=[1e-4, 0.3, 0.4], trials=3, seed=0)
    low, high = (full[full.ber == b].accuracy.mean() for b in (1e-4, 0.3))
    assert high < low  # the model is broken at BER 0.3
    short = ber_sweep(tiny_model, tiny_data, bers=[1e-4, 0.3, 0.4], trials=3, seed=0, stop_at=(low + high) / 2)
    assert sorted(short.ber.unique()) == [1e-4, 0.3]
    pd.testing.assert_frame_equal(short, full[full.ber < 0.35].reset_index(drop=True))
