"""The single-bit census on float16 / bfloat16 models: each parameter flipped in its own stored format
(FP16 bits for float16 weights, BF16 for bfloat16), the fast census equal to the naive loop row for
row, the flipped values equal to numpy float16 / hand-made bfloat16 bit patterns, refusals by name,
and the model handed back bit for bit."""

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from zoo import ZOO, same_as, snapshot

import bitlab as bl
from bitlab.campaigns.census import bit_census, flipped_values, naive_bit_census
from bitlab.campaigns.census.plan import census_format
from bitlab.codecs.base import Identity
from bitlab.zoo.models import small_cnn

OWN = {torch.float16: bl.FP16, torch.bfloat16: bl.BF16}


def _np_flip(value: float, bit: int, dtype: torch.dtype) -> float:
    """The value with one bit of its stored word flipped, from numpy bit patterns: float16 directly,
    bfloat16 as the upper half of a float32 word (a bfloat16 value is exactly such a float32)."""
    if dtype == torch.float16:
        word = np.array([value], dtype=np.float16).view(np.uint16)
        return float((word ^ np.uint16(1 << bit)).view(np.float16)[0])
    word = np.array([value], dtype=np.float32).view(np.uint32)
    assert word[0] & 0xFFFF == 0  # a bfloat16 value: the low half of its float32 word is zero
    return float((word ^ np.uint32(1 << (bit + 16))).view(np.float32)[0])


def _same_floats(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal as floats, NaN where NaN, and zeros with their sign."""
    return bool(np.array_equal(a, b, equal_nan=True) and np.array_equal(np.signbit(a), np.signbit(b)))


def _half_cnn(dtype: torch.dtype, n: int = 24):
    """small_cnn in ``dtype`` on random 8x8 inputs, labelled with its own predictions (a few changed)."""
    torch.manual_seed(3)
    model = small_cnn().eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, 1, 8, 8, generator=g)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[::4] = (y[::4] + 1) % 10
    return model.to(dtype), [(x[: n // 2].to(dtype), y[: n // 2]), (x[n // 2 :].to(dtype), y[n // 2 :])]


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_zoo_half_every_bit_equals_naive(name):
    model, data = ZOO[name]()
    dtype = next(model.parameters()).dtype
    snap = snapshot(model)
    kw = dict(fmt=None, bits="all", n_weights=4, seed=1, progress=False)
    naive = naive_bit_census(model, data, **kw)
    fast = bit_census(model, data, **kw)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert len(fast) == (4 + 4 + 4 + 3) * 16  # 4 weights of each parameter (the last bias has 3), 16 bits each
    assert set(fast.attrs["paths"].values()) == {"packed exact"}
    assert set(fast.attrs["uncertified"]) == {n for n, _ in model.named_parameters()}
    assert all(str(dtype) in why for why in fast.attrs["uncertified"].values())
    assert fast.attrs["stats"]["recomputed"] == len(fast) and fast.attrs["stats"]["certified"] == 0
    assert fast["accuracy"].nunique() > 1  # some flips change predictions: the comparison can fail
    assert same_as(model, snap)


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_zoo_half_all_weights_exponent_bits_equal_naive(name):
    model, data = ZOO[name]()
    with torch.no_grad():  # exponent 0b01111 (FP16) / 0x7f (BF16): the exponent top bit makes a NaN / Inf
        model[0].weight[0, 0] = 1.5
        model[2].weight[1, 3] = -1.0
    fmt = OWN[next(model.parameters()).dtype]
    kw = dict(fmt=fmt, bits="exponent", progress=False)
    naive = naive_bit_census(model, data, **kw)
    fast = bit_census(model, data, **kw)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert len(fast) == sum(p.numel() for p in model.parameters()) * len(fmt.fields["exponent"])
    flipped = fast["flipped"].to_numpy()
    assert np.isnan(flipped).sum() == 1 and np.isinf(flipped).sum() == 1  # 1.5 -> NaN, -1.0 -> -Inf
    assert fast["accuracy"].nunique() > 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_cnn_equals_naive(dtype):
    model, data = _half_cnn(dtype)
    snap = snapshot(model)
    kw = dict(bits=["sign", "exponent", 0], n_weights=3, seed=4, progress=False)
    naive = naive_bit_census(model, data, **kw)
    fast = bit_census(model, data, batch_flips=16, **kw)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert fast["bit"].max() == 15  # FP16 / BF16 words, not FP32 ones
    assert fast.attrs["paths"] == {n: "packed exact" for n, _ in model.named_parameters()}
    assert fast["accuracy"].nunique() > 1
    assert same_as(model, snap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_flipped_values_match_numpy_bit_patterns(dtype):
    model, data = _half_cnn(dtype)
    df = bit_census(model, data, bits="all", n_weights=2, seed=0, progress=False)
    params = dict(model.named_parameters())
    expect = [
        _np_flip(float(params[p].detach().reshape(-1)[i]), b, dtype)
        for p, i, b in zip(df["param"], df["index"], df["bit"])
    ]
    assert _same_floats(df["flipped"].to_numpy(), np.array(expect))
    assert df["value"].to_numpy().tolist() == [
        float(params[p].detach().reshape(-1)[i]) for p, i in zip(df["param"], df["index"])
    ]


@given(
    words=st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=8),
    bit=st.integers(0, 15),
    half=st.sampled_from(["fp16", "bf16"]),
)
def test_flipped_values_property(words, bit, half):
    dtype = torch.float16 if half == "fp16" else torch.bfloat16
    w = torch.tensor(words, dtype=torch.int32).to(torch.int16).view(dtype)
    idx = torch.arange(len(words))
    got = flipped_values(w, idx, (bit,), OWN[dtype], Identity())[:, 0]
    assert got.dtype == dtype
    want = torch.tensor([x ^ (1 << bit) for x in words], dtype=torch.int32).to(torch.int16).view(dtype)
    finite = torch.isfinite(want)
    assert torch.equal(got[finite].view(torch.int16), want[finite].view(torch.int16))  # bit for bit
    assert torch.isnan(got[torch.isnan(want)]).all() and torch.equal(got[torch.isinf(want)], want[torch.isinf(want)])


def test_fmt_none_is_the_own_format():
    model, data = ZOO["fp16"]()
    kw = dict(bits="exponent", n_weights=3, seed=2, progress=False)
    pd.testing.assert_frame_equal(bit_census(model, data, **kw), bit_census(model, data, fmt=bl.FP16, **kw))
    assert census_format(list(model.named_parameters()), None) is bl.FP16
    bf, _ = ZOO["bf16"]()
    assert census_format(list(bf.named_parameters()), None) is bl.BF16


def test_float32_fmt_none_and_fp32_equal_naive_on_the_bounds_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    data = [(x, model(x).argmax(1).detach())]
    kw = dict(bits="all", n_weights=4, seed=0, progress=False)
    naive = naive_bit_census(model, data, fmt=bl.FP32, **kw)
    explicit = bit_census(model, data, fmt=bl.FP32, **kw)
    default = bit_census(model, data, **kw)
    pd.testing.assert_frame_equal(naive, explicit, check_exact=True)
    pd.testing.assert_frame_equal(naive, default, check_exact=True)
    assert len(default) == (4 + 4 + 4 + 3) * 32 and set(default.attrs["paths"].values()) == {"bounds"}
    assert default.attrs["uncertified"] == {} and default.attrs["stats"]["certified"] > 0


@pytest.mark.parametrize("census", [bit_census, naive_bit_census])
@pytest.mark.parametrize(
    ("name", "fmt", "own"), [("fp16", bl.FP32, "FP16"), ("fp16", bl.BF16, "FP16"), ("bf16", bl.FP16, "BF16")]
)
def test_a_float_format_the_dtype_cannot_hold_is_refused(census, name, fmt, own):
    model, data = ZOO[name]()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=rf"fmt: {fmt.name} .*'0\.weight'.*allowed: fmt=None or {own}"):
        census(model, data, fmt=fmt, n_weights=1, progress=False)
    assert same_as(model, snap)


def test_fmt_none_refuses_mixed_and_other_dtypes_by_name():
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2).half())
    with pytest.raises(ValueError, match=r"fmt=None: .*mixed dtypes.*1\.weight \(torch\.float16\)"):
        census_format(list(model.named_parameters()), None)
    wide = nn.Sequential(nn.Linear(4, 2).double())
    with pytest.raises(ValueError, match=r"fmt=None: parameter '0\.weight' is torch\.float64.*allowed dtypes"):
        census_format(list(wide.named_parameters()), None)
    with pytest.raises(TypeError, match="fmt: expected a bitlab number format"):
        census_format(list(wide.named_parameters()), "FP16")  # type: ignore[arg-type]
    assert census_format(list(wide.named_parameters()), bl.FP32) is bl.FP32  # float32 values fit float64


class _Boom(nn.Module):
    """Raises on its ``after``-th call: an evaluation that fails half way through a census."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.calls, self.after = 0, after

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.after:
            raise RuntimeError("boom")
        return x


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_restored_when_the_evaluation_raises(dtype):
    model, data = _half_cnn(dtype)
    model.insert(7, _Boom(after=5))  # before the classifier: the packed exact path's suffix raises
    model[0].train()  # a mixed mode that must come back as it was
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="boom"):
        bit_census(model, data, bits="exponent", n_weights=2, progress=False)
    assert same_as(model, snap)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_on_the_gpu_equals_naive(dtype):
    model, data = _half_cnn(dtype)
    model = model.cuda()
    data = [(x.cuda(), y.cuda()) for x, y in data]
    kw = dict(bits="exponent", n_weights=2, seed=0, progress=False)
    naive = naive_bit_census(model, data, **kw)
    fast = bit_census(model, data, **kw)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert fast.attrs["uncertified"] and all("cuda" in w or str(dtype) in w for w in fast.attrs["uncertified"].values())
    assert all(p.is_cuda for p in model.parameters())
