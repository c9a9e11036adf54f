"""Tests of the defense registry (bitlab.defenses)."""

import math

import pandas as pd
import pytest
import torch
from torch.utils.data import TensorDataset

import bitlab as bl
from bitlab.defenses import DEFENSES, decode_seconds, defense, overhead_table, training_cost
from bitlab.training.optim import SAM, SAR


def _secded_overhead(k: int) -> int:
    """Hamming check bits r (smallest with 2**r >= k + r + 1) plus the overall parity bit."""
    r = 0
    while 2**r < k + r + 1:
        r += 1
    return r + 1


def test_registry_kinds_and_unknown_name():
    assert {d.kind for d in DEFENSES.values()} == {"none", "storage", "training"}
    for name, d in DEFENSES.items():
        assert defense(name) is d
        if d.kind != "storage":
            assert isinstance(d.codec(), bl.Identity)
        else:
            assert d.fit_kwargs(0) == {}
    with pytest.raises(ValueError, match="name"):
        defense("tin foil")


@pytest.mark.parametrize("fmt", [bl.FP32, bl.FP16, bl.Int(8)])
def test_overheads_match_independent_counts(fmt):
    expected = {
        "none": 0,
        "range nulling": 0,
        "parity nulling": 1,
        "weight scaling": 0,
        "SECDED": _secded_overhead(fmt.width),
        "group checksum": 2 / 16,
        "weight decay": 0,
        "SAM": 0,
        "SAR": 0,
        "Hessian-aware": 0,
    }
    table = overhead_table(fmt)
    assert list(table.index) == list(DEFENSES)
    for name, bits in expected.items():
        assert table.loc[name, "extra bits / weight"] == pytest.approx(bits)
        assert table.loc[name, "stored bits / weight"] == pytest.approx(fmt.width + bits)
    assert _secded_overhead(32) == 7 and _secded_overhead(8) == 5  # 39- and 13-bit words


def test_storage_codecs_read_clean_weights_back():
    w = torch.linspace(-0.7, 0.6, 97)
    for d in DEFENSES.values():
        codec = d.codec()
        state = codec.fit(w, bl.FP32)
        back = codec.decode(codec.encode(w, bl.FP32, state), bl.FP32, state)
        assert torch.allclose(back, w, rtol=1e-6, atol=0), d.name


def test_training_recipes_build_the_named_optimizers_and_train():
    g = torch.Generator().manual_seed(0)
    ds = TensorDataset(torch.rand(64, 1, 8, 8, generator=g), torch.randint(0, 10, (64,), generator=g))
    assert defense("weight decay").fit_kwargs(0) == {"weight_decay": 1e-2}
    p = [torch.nn.Parameter(torch.ones(3))]
    assert isinstance(defense("SAM").fit_kwargs(0)["optimizer"](p), SAM)
    assert isinstance(defense("SAR").fit_kwargs(0)["optimizer"](p), SAR)
    assert not isinstance(defense("SAM").fit_kwargs(0)["optimizer"](p), SAR)
    kw = defense("Hessian-aware").fit_kwargs(3)
    assert kw["optimizer"] == "rmsprop"
    m = bl.models.mlp()
    x, y = ds.tensors
    pen = kw["regularizer"](m, x, y)
    assert pen.ndim == 0 and torch.isfinite(pen)
    for name in ("none", "weight decay", "SAM", "SAR", "Hessian-aware"):
        torch.manual_seed(0)
        m = bl.models.mlp()
        h = bl.train.fit(m, ds, epochs=1, seed=0, progress=False, **defense(name).fit_kwargs(0))
        assert math.isfinite(h["loss"].iloc[0]), name
        assert ("penalty" in h.columns) == (name == "Hessian-aware")


def test_training_cost_means_and_ratios():
    h = {
        "none": [pd.DataFrame({"seconds": [1.0, 3.0]}), pd.DataFrame({"seconds": [2.0]})],
        "SAM": pd.DataFrame({"seconds": [4.0, 4.0]}),
    }
    t = training_cost(h)
    assert t.loc["none", "s / epoch"] == pytest.approx(2.0)
    assert t.loc["SAM", "x baseline"] == pytest.approx(2.0)
    with pytest.raises(ValueError, match="baseline"):
        training_cost(h, baseline="SAR")
    with pytest.raises(ValueError, match="histories"):
        training_cost({"none": pd.DataFrame({"loss": [1.0]})})


def test_decode_seconds_is_a_positive_time_and_checks_arguments():
    s = decode_seconds(bl.RangeNulling(), bl.FP32, n=1024, repeats=2)
    assert s > 0 and math.isfinite(s)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="n"):
            decode_seconds(bl.RangeNulling(), bl.FP32, n=bad)
    with pytest.raises(ValueError, match="repeats"):
        decode_seconds(bl.RangeNulling(), bl.FP32, repeats=0)
