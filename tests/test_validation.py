"""Bad input found by the adversarial review of issue 15 gets a clear error at the boundary, naming the
argument; integers from numpy (a census row's index) are accepted where integers are."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

import bitlab as bl
from bitlab.campaigns import naive_bit_census, summarize
from bitlab.evaluate import materialize
from bitlab.validate import check_generator, check_int, check_number


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3))


DATA = torch.utils.data.TensorDataset(torch.rand(6, 4), torch.randint(0, 3, (6,)))


def test_check_int_and_number():
    assert check_int("k", np.int64(5), 1) == 5 and type(check_int("k", np.int64(5), 1)) is int
    for bad, kind in [(True, TypeError), (3.7, TypeError), ("3", TypeError), (0, ValueError), (9, ValueError)]:
        with pytest.raises(kind, match="k"):
            check_int("k", bad, 1, 8)
    assert check_number("x", np.float32(0.5), 0, 1) == 0.5
    for bad in [float("nan"), 0.0, 1.0, 2.0]:
        with pytest.raises(ValueError, match=r"x: .*allowed numbers in \(0, 1\)"):
            check_number("x", bad, 0.0, 1.0, open_lo=True, open_hi=True)
    with pytest.raises(TypeError, match="g"):
        check_generator("g", 42)


def test_single_bit_flip_takes_a_census_rows_numpy_index():
    m = _model()
    census = naive_bit_census(m, DATA, bits=[30], params="0.weight", n_weights=2)
    row = census.iloc[0]
    with bl.corrupted(m, bl.SingleBitFlip(row["param"], row["index"], row["bit"]), params="0.weight") as r:
        assert r.flips == 1
        assert m[0].weight.detach().reshape(-1)[int(row["index"])].item() == row["flipped"]


@pytest.mark.parametrize("n", [0, -3, 2.5])
def test_naive_census_refuses_bad_n_weights_like_the_fast_one(n):
    with pytest.raises((ValueError, TypeError), match="n_weights"):
        naive_bit_census(_model(), DATA, bits=[30], n_weights=n)
    with pytest.raises((ValueError, TypeError), match="n_weights"):
        bl.bit_census(_model(), DATA, bits=[30], n_weights=n)


def test_stuck_at_value_must_be_the_int_0_or_1():
    assert bl.StuckAt(0.5, np.int64(1)).mode == "stuck1"
    for bad in (1.0, 2, True):
        with pytest.raises((ValueError, TypeError), match="value"):
            bl.StuckAt(0.5, bad)


def test_flip_list_refuses_fractional_bits_and_indices():
    assert bl.FlipList([("0.weight", np.int64(1), np.int64(3))]).flips == (("0.weight", 1, 3),)
    with pytest.raises(TypeError, match="bit"):
        bl.FlipList([("0.weight", 1, 3.7)])
    with pytest.raises(TypeError, match="index"):
        bl.FlipList([("0.weight", 1.5, 3)])


def test_a_seed_is_not_a_generator():
    with (
        pytest.raises(TypeError, match=r"generator.*manual_seed"),
        bl.corrupted(_model(), bl.BitErrorRate(0.1), generator=42),
    ):
        pass


@pytest.mark.parametrize("level", [-0.5, 0.0, 1.0, 2.0, float("nan")])
def test_summarize_level_is_a_probability(level):
    df = pd.DataFrame({"ber": [1e-3] * 3, "accuracy": [0.5, 0.6, 0.7]})
    with pytest.raises(ValueError, match="level"):
        summarize(df, level=level)


def test_int_axis_outside_the_tensor_is_refused():
    w = torch.rand(3, 4)
    assert bl.Int(8, True, axis=-1).calibrate(w).shape == (1, 4)
    with pytest.raises(ValueError, match="axis: 7"):
        bl.Int(8, True, axis=7).calibrate(w)


@pytest.mark.parametrize("margin", [float("nan"), float("inf"), -1.0])
def test_range_nulling_margin_is_finite_and_non_negative(margin):
    with pytest.raises(ValueError, match="margin"):
        bl.RangeNulling(margin)


def test_empty_data_is_refused_by_name():
    empty = torch.utils.data.TensorDataset(torch.rand(0, 4), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="data"):
        materialize(empty)
    with pytest.raises(ValueError, match="data"):
        bl.ber_sweep(_model(), empty, [1e-3], trials=1, progress=False)
    with pytest.raises(ValueError, match="data"):
        naive_bit_census(_model(), empty, bits=[30])
    from bitlab.campaigns import activation_sweep, bit_flip_attack
    from bitlab.curvature.landscape import loss_slice, random_direction
    from bitlab.training.quant import quantize_model

    m = _model()
    calls = [
        lambda: bl.bit_census(m, empty, bits=[30]),
        lambda: bit_flip_attack(m, empty, budget=1, progress=False),
        lambda: loss_slice(m, nn.CrossEntropyLoss(), empty, random_direction(m), [0.0]),
        lambda: activation_sweep(quantize_model(m, torch.rand(4, 4)), empty, [1e-3], trials=1, progress=False),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="data"):
            call()


# -- non-finite weights are handled per element -------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("per_channel", [False, True])
def test_one_non_finite_weight_does_not_poison_int8(bad, per_channel):
    w = torch.tensor([[0.5, -0.25, 0.125], [1.0, 0.75, -0.5]])
    poisoned = w.clone()
    poisoned[0, 2] = bad
    fmt = bl.Int(8, per_channel=per_channel)
    s = fmt.calibrate(poisoned)
    back = fmt.decode(fmt.encode(poisoned, s), s)
    clean_s = fmt.calibrate(w)
    ref = fmt.decode(fmt.encode(w, clean_s), clean_s)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[0, 2] = False
    assert torch.equal(back[keep], ref[keep])  # every other weight reads back as without the bad one
    expected = 0.0 if bad != bad else float(torch.sign(torch.tensor(bad))) * float(s.reshape(-1)[0]) * fmt.qmax
    assert back[0, 2].item() == pytest.approx(expected)  # NaN -> 0, +-Inf saturates
    from bitlab.training.quant import weight_scale

    assert torch.equal(weight_scale(poisoned, per_channel=per_channel), weight_scale(w, per_channel=per_channel))


def test_one_nan_weight_leaves_range_nulling_on():
    m = _model()
    with torch.no_grad():
        m[0].weight[0, 0] = float("nan")
    flip = bl.SingleBitFlip("0.weight", 5, 30)  # an exponent-MSB flip: a huge value, outside the range
    with bl.corrupted(m, flip, codec=bl.RangeNulling(), params="0.weight"):
        assert m[0].weight.detach().reshape(-1)[5].item() == 0.0


# -- state: one fault context per model, buffers restored --------------------------------------------------


def test_a_second_context_on_the_same_model_is_refused_and_the_first_restores():
    m = _model()
    before = m[0].weight.detach().clone()
    fault = bl.BitFlips(3, bits="exponent_msb")
    with bl.corrupted(m, fault, generator=torch.Generator().manual_seed(0)):
        with pytest.raises(RuntimeError, match="already inside a corrupted"), bl.corrupted(m, fault):
            pass
        assert not torch.equal(m[0].weight, before)
    assert torch.equal(m[0].weight, before)
    with bl.corrupted(m, fault):  # free again after exit
        pass
    other = _model()
    with bl.corrupted(m, fault), bl.corrupted(other, fault):  # different models may overlap
        pass


def test_another_thread_cannot_corrupt_the_same_model_meanwhile():
    import threading

    m = _model()
    inside, done, errors = threading.Event(), threading.Event(), []

    def first():
        with bl.corrupted(m, bl.BitFlips(2)):
            inside.set()
            done.wait(5)

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    try:
        with bl.corrupted(m, bl.BitFlips(2)):
            pass
    except RuntimeError as e:
        errors.append(str(e))
    done.set()
    t.join(5)
    assert errors and "another thread" in errors[0]


def test_batchnorm_statistics_updated_inside_are_restored():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with bl.corrupted(m, bl.BitFlips(2, bits="exponent_msb"), generator=torch.Generator().manual_seed(1)):
        m(torch.rand(8, 4))  # a train-mode forward updates running_mean / running_var / num_batches_tracked
        assert not torch.equal(m[1].running_mean, before["1.running_mean"])
    after = m.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_evaluate_accuracy_equals_accuracy_exactly():
    from bitlab.evaluate import accuracy, evaluate

    g = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(torch.rand(997, 4, generator=g), torch.randint(0, 3, (997,), generator=g))
    m = _model()
    assert evaluate(m, data)["accuracy"] == accuracy(m, data)


def test_evaluate_on_an_empty_loader_names_the_data():
    from bitlab.evaluate import evaluate

    empty = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(0, 4), torch.zeros(0)))
    with pytest.raises(ValueError, match="data"):
        evaluate(_model(), empty)
