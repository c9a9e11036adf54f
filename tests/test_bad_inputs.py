"""Nothing silent, as tests that would catch planted bugs: a matrix of bad inputs over the public entry
points (each must raise the stated exception and name the argument), every codec parameter changes
what the store reads back, and the trials of a sweep draw different faults."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

import bitlab as bl
from bitlab.campaigns import activation_sweep, ber_sweep, summarize, sweep_t, tolerable_ber
from bitlab.campaigns.attack import bit_flip_attack
from bitlab.campaigns.census import bit_census, naive_bit_census
from bitlab.campaigns.seeds import trial_generator
from bitlab.curvature.landscape import loss_slice
from bitlab.evaluate import pick, score
from bitlab.inject import Store
from bitlab.training.quant import quantize_model


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()


def _data():
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(16, 4, generator=g), torch.randint(0, 3, (16,), generator=g))]


M, D = _model(), _data()
F1 = bl.BitErrorRate(1e-3)

#: (label, call, exception type, text the message must contain: the argument's name)
BAD = [
    ("ber_sweep trials=0", lambda: ber_sweep(M, D, [1e-3], trials=0), ValueError, "trials"),
    ("ber_sweep trials=2.5", lambda: ber_sweep(M, D, [1e-3], trials=2.5), ValueError, "trials"),
    ("ber_sweep bers=[]", lambda: ber_sweep(M, D, []), ValueError, "bers"),
    ("ber_sweep bers=[2]", lambda: ber_sweep(M, D, [2.0]), ValueError, "bers"),
    ("ber_sweep metric=f1", lambda: ber_sweep(M, D, [1e-3], metric="f1"), ValueError, "metric"),
    ("ber_sweep metric=3", lambda: ber_sweep(M, D, [1e-3], metric=3), TypeError, "metric"),
    ("ber_sweep output=1.5", lambda: ber_sweep(M, D, [1e-3], output=1.5), TypeError, "output"),
    ("ber_sweep output=key", lambda: ber_sweep(M, D, [1e-3], output="logits"), KeyError, "output"),
    ("ber_sweep fmt=str", lambda: ber_sweep(M, D, [1e-3], fmt="FP32"), TypeError, "fmt"),
    ("ber_sweep data=3", lambda: ber_sweep(M, 3, [1e-3]), TypeError, "data"),
    ("ber_sweep data=[]", lambda: ber_sweep(M, [], [1e-3]), (TypeError, ValueError), "data"),
    ("ber_sweep params=none", lambda: ber_sweep(M, D, [1e-3], params="nothing*"), ValueError, "params"),
    ("sweep_t ts=[]", lambda: sweep_t(M, D, [], None, 1e-3), ValueError, "ts"),
    ("summarize level=2", lambda: summarize(ber_sweep(M, D, [1e-3], trials=1), level=2.0), ValueError, "level"),
    ("summarize value=x", lambda: summarize(ber_sweep(M, D, [1e-3], trials=1), value="x"), ValueError, "value"),
    (
        "tolerable_ber no clean",
        lambda: tolerable_ber(__import__("pandas").DataFrame({"ber": [1e-3]})),
        ValueError,
        "clean",
    ),
    ("census n_weights=0", lambda: bit_census(M, D, n_weights=0), ValueError, "n_weights"),
    ("census bits=exp", lambda: bit_census(M, D, bits="exp"), ValueError, "bit"),
    ("census batch_flips=0", lambda: bit_census(M, D, batch_flips=0), ValueError, "batch_flips"),
    ("census metric=f1", lambda: bit_census(M, D, metric="f1"), ValueError, "metric"),
    ("naive census chunk=0", lambda: naive_bit_census(M, D, chunk=0), ValueError, "chunk"),
    ("naive census on_chunk=3", lambda: naive_bit_census(M, D, on_chunk=3), TypeError, "on_chunk"),
    ("attack budget=0", lambda: bit_flip_attack(M, D, budget=0), ValueError, "budget"),
    ("attack target=2", lambda: bit_flip_attack(M, D, target_accuracy=2.0), ValueError, "target_accuracy"),
    ("attack loss=3", lambda: bit_flip_attack(M, D, loss=3), TypeError, "loss"),
    ("attack fmt=str", lambda: bit_flip_attack(M, D, fmt="int8"), TypeError, "fmt"),
    ("corrupted fault=None", lambda: bl.corrupted(M, None).__enter__(), TypeError, "fault"),
    ("corrupted fmt=str", lambda: bl.corrupted(M, F1, fmt="FP32").__enter__(), TypeError, "fmt"),
    ("corrupted codec=str", lambda: bl.corrupted(M, F1, codec="ecc").__enter__(), TypeError, "codec"),
    ("corrupted generator=42", lambda: bl.corrupted(M, F1, generator=42).__enter__(), TypeError, "generator"),
    ("BitErrorRate(-1)", lambda: bl.BitErrorRate(-1.0), ValueError, "p:"),
    ("BitFlips(-1)", lambda: bl.BitFlips(-1), ValueError, "k:"),
    ("SingleBitFlip bit", lambda: bl.corrupted(M, bl.SingleBitFlip("0.weight", 0, 40)).__enter__(), ValueError, "bit"),
    ("SingleBitFlip param", lambda: bl.corrupted(M, bl.SingleBitFlip("zz", 0, 1)).__enter__(), ValueError, "zz"),
    ("activations modules", lambda: bl.corrupted_activations(M, F1, modules="nope").__enter__(), ValueError, "modules"),
    ("score metric", lambda: score(M, D, metric="auc"), ValueError, "metric"),
    ("score float targets", lambda: score(M, [(D[0][0], D[0][1].float())]), ValueError, "metric"),
    ("pick index", lambda: pick((torch.ones(1),), 3), IndexError, "output"),
    ("loss_slice alphas", lambda: loss_slice(M, None, D, {"0.bias": torch.ones(6)}, []), ValueError, "alphas"),
    ("loss_slice direction", lambda: loss_slice(M, None, D, {"x": torch.ones(6)}, [0.0]), ValueError, "direction"),
    ("quantize bits=1", lambda: quantize_model(M, D[0][0], bits=1), ValueError, "bits"),
    ("activation_sweep qm", lambda: activation_sweep(M, D, [0.1]), TypeError, "qm"),
    ("Int(bits=0)", lambda: bl.Int(0), ValueError, "bits"),
    ("Q(-1, 2)", lambda: bl.Q(-1, 2), ValueError, "m:"),
    ("RangeNulling(nan)", lambda: bl.RangeNulling(float("nan")), ValueError, "margin"),
    ("GroupChecksum(0)", lambda: bl.GroupChecksum(0), ValueError, "group"),
    ("SECDED(on_detect)", lambda: bl.SECDED("drop"), ValueError, "on_detect"),
    ("Unary(0)", lambda: bl.Unary(0), ValueError, "n"),
    ("ParityNulling(where)", lambda: bl.ParityNulling("top"), ValueError, "where"),
]


@pytest.mark.parametrize("label,call,exc,named", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_refused_naming_the_argument(label, call, exc, named):
    before = {k: v.clone() for k, v in M.state_dict().items()}
    with pytest.raises(exc) as info:
        call()
    assert named.lower() in str(info.value).lower(), f"{label}: {info.value}"
    assert all(torch.equal(before[k], v) for k, v in M.state_dict().items()), f"{label} left the model changed"


# --- every codec parameter changes what the store reads back ------------------------------------------

PAIRS = [
    (bl.RangeNulling(0.0), bl.RangeNulling(4.0)),
    (bl.ParityNulling("extra"), bl.ParityNulling("spare")),
    (bl.WeightScaling(1.0), bl.WeightScaling(2.0)),
    (bl.WeightScaling(3.0, pow2=False), bl.WeightScaling(3.0, pow2=True)),
    (bl.SECDED("zero"), bl.SECDED("raw")),
    (bl.Unary(8), bl.Unary(16)),
    (bl.GroupChecksum(2), bl.GroupChecksum(4)),
    (bl.GroupChecksum(4, bits=1), bl.GroupChecksum(4, bits=3)),
    (bl.GroupChecksum(2, interleave=False), bl.GroupChecksum(2, interleave=True)),
]


def _reads(codec, flips) -> torch.Tensor:
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.3, -0.7, 0.1, 0.9], [-0.2, 0.5, -0.4, 0.05]]))
    store = Store(lin, bl.FP32, codec, params="weight")
    with store.corrupted(bl.FlipList(tuple(("weight", i, b) for i, b in flips))):
        return lin.weight.detach().clone()


@pytest.mark.parametrize("a,b", PAIRS, ids=[f"{a.name}|{b.name}" for a, b in PAIRS])
def test_every_codec_parameter_changes_the_read_back(a, b):
    """Some single or double flip among the first words reads back differently under the two settings."""
    width = min(a.width(bl.FP32), b.width(bl.FP32))
    singles = [((i, k),) for i in range(4) for k in range(width)]
    doubles = [((0, k1), (0, k2)) for k1, k2 in itertools.combinations(range(0, width, 3), 2)]
    doubles += [((0, 29), (i, 29)) for i in range(1, 8)]
    assert any(not torch.equal(_reads(a, f), _reads(b, f)) for f in singles + doubles), f"{a.name} == {b.name}"


# --- the trials of a sweep draw different faults -------------------------------------------------------


def test_trials_of_a_ber_sweep_draw_different_faults():
    df = ber_sweep(M, D, [0.02], trials=6, seed=0, progress=False)
    store = Store(M)
    drawn = []
    for t in range(6):
        with store.corrupted(bl.BitErrorRate(0.02), generator=trial_generator(0, "ber", 0.02, t)) as r:
            drawn.append(tuple(zip(r.sites.word.tolist(), r.sites.bit.tolist())))
    assert len(set(drawn)) == 6
    assert df["flips"].tolist() == [len(d) for d in drawn]
    assert df["accuracy"].nunique() > 1
