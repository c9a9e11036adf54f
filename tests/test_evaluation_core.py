"""The evaluation core: metrics against hand computations, output pickers, tuple/dict inputs, devices,
and every campaign scoring a metric other than accuracy (checked against a naive loop)."""

from __future__ import annotations

import math
from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn
from zoo import ZOO, forward, same_as, snapshot

import bitlab as bl
from bitlab.campaigns import ber_sweep, tolerable_ber
from bitlab.campaigns.attack import bit_flip_attack
from bitlab.campaigns.census import bit_census, naive_bit_census
from bitlab.campaigns.seeds import trial_generator
from bitlab.curvature.landscape import loss_slice
from bitlab.evaluate import call, concat, gather, materialize, model_device, per_sample, pick, score, take
from bitlab.metrics import METRICS, Metric, relative_drop, resolve_metric

# --- metrics against hand computations ------------------------------------------------------------


@given(
    st.lists(st.lists(st.floats(-5, 5), min_size=6, max_size=6), min_size=1, max_size=8),
    st.data(),
)
def test_builtin_metrics_match_a_per_sample_hand_computation(rows, data):
    out = torch.tensor(rows, dtype=torch.float32)
    y = torch.tensor(data.draw(st.lists(st.integers(0, 5), min_size=len(rows), max_size=len(rows))))
    for i, (r, t) in enumerate(zip(out.tolist(), y.tolist())):  # the float32 values the metrics see
        best = max(range(6), key=lambda k: (r[k], -k))  # torch.argmax: the first maximum
        assert METRICS["accuracy"].scores(out[i : i + 1], y[i : i + 1]).item() == float(best == t)
        top = sorted(range(6), key=lambda k: -r[k])[:5]
        if len(set(r)) == 6:  # no ties: the top five are unambiguous
            assert METRICS["top5"].scores(out[i : i + 1], y[i : i + 1]).item() == float(t in top)
        lse = math.log(sum(math.exp(v) for v in r))
        assert METRICS["loss"].scores(out[i : i + 1], y[i : i + 1]).item() == pytest.approx(lse - r[t], abs=1e-5)


def test_mse_is_the_mean_square_over_non_batch_dimensions():
    out = torch.tensor([[1.0, 2.0], [0.0, 4.0]])
    y = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    assert METRICS["mse"].scores(out, y).tolist() == [2.5, 4.5]
    assert METRICS["mse"].scores(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])).tolist() == [1.0, 4.0]


def test_non_finite_outputs_count_as_wrong_for_accuracy_and_top5():
    out = torch.tensor([[float("nan"), 0.0, 0, 0, 0, 9.0], [0.0, 9.0, 0, 0, 0, 0]])
    y = torch.tensor([5, 1])
    assert METRICS["accuracy"].scores(out, y).tolist() == [0.0, 1.0]
    assert METRICS["top5"].scores(out, y).tolist() == [0.0, 1.0]


def test_classification_metrics_refuse_regression_targets_by_name():
    with pytest.raises(ValueError, match="integer class labels.*metric='mse'"):
        METRICS["accuracy"].scores(torch.randn(4, 3), torch.randn(4))
    with pytest.raises(ValueError, match=r"shape \(batch, classes\)"):
        METRICS["accuracy"].scores(torch.randn(4), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="at least 5 classes"):
        METRICS["top5"].scores(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="same shape"):
        METRICS["mse"].scores(torch.randn(4, 1), torch.randn(4))


def test_resolve_metric_and_bad_metrics():
    assert resolve_metric("mse") is METRICS["mse"]

    def abs_error(out, y):
        return -(out - y).abs()

    m = resolve_metric(abs_error)
    assert m.name == "abs_error" and m.higher_is_better
    with pytest.raises(ValueError, match="allowed names are"):
        resolve_metric("f1")
    with pytest.raises(TypeError, match="metric: expected"):
        resolve_metric(3)
    bad = Metric("total", lambda out, y: (out - y).sum())
    with pytest.raises(ValueError, match=r"metric 'total'.*one score per sample"):
        bad.scores(torch.randn(4), torch.randn(4))


def test_relative_drop_is_positive_when_worse_in_either_direction():
    acc, mse = METRICS["accuracy"], METRICS["mse"]
    assert relative_drop(0.8, 0.6, acc) == pytest.approx(0.25)
    assert relative_drop(0.5, 0.75, mse) == pytest.approx(0.5)
    assert relative_drop(0.5, 0.25, mse) == pytest.approx(-0.5)
    assert math.isnan(relative_drop(0.0, 0.3, acc))


# --- outputs, inputs, devices -----------------------------------------------------------------------


@dataclass
class Out:
    logits: Tensor
    aux: Tensor


Pair = namedtuple("Pair", ["logits", "aux"])


def test_pick_takes_keys_fields_indices_and_callables():
    t, a = torch.randn(3, 2), torch.randn(3)
    assert pick({"logits": t, "aux": a}, "logits") is t
    assert pick(Out(t, a), "logits") is t
    assert pick(Pair(t, a), "aux") is a
    assert pick((t, a), 0) is t and pick((t, a), -1) is a
    assert pick((t, a), lambda o: o[1]) is a
    assert pick(t) is t


def test_pick_errors_name_what_is_there():
    t = torch.randn(3, 2)
    with pytest.raises(TypeError, match=r"dict with keys \['logits'\].*output="):
        pick({"logits": t})
    with pytest.raises(KeyError, match=r"'scores' is not in.*\['logits'\]"):
        pick({"logits": t}, "scores")
    with pytest.raises(IndexError, match="index 2 is out of range"):
        pick((t, t), 2)
    with pytest.raises(TypeError, match="needs a tuple or list"):
        pick(t, 0)
    with pytest.raises(TypeError, match="output: expected None, a key"):
        pick(t, 1.5)  # type: ignore[arg-type]


def test_inputs_as_tensor_tuple_and_dict():
    x, z = torch.arange(6.0).reshape(3, 2), torch.arange(3.0)
    seen = []

    class Two(nn.Module):
        def forward(self, a, b):
            seen.append((a, b))
            return a.sum(1) + b

    m = Two()
    assert torch.equal(call(m, (x, z)), call(m, {"a": x, "b": z}))
    assert torch.equal(take({"a": x, "b": z}, 2)["a"], x[:2])
    assert torch.equal(gather((x, z), torch.tensor([2, 0]))[1], torch.tensor([2.0, 0.0]))
    joined = concat([{"a": x, "b": z}, {"a": x, "b": z}])
    assert joined["a"].shape == (6, 2)
    ds = torch.utils.data.TensorDataset(x, z, torch.tensor([0, 1, 0]))
    ((inputs, y),) = materialize(ds)
    assert isinstance(inputs, tuple) and torch.equal(inputs[1], z) and y.tolist() == [0, 1, 0]


def test_materialize_moves_batches_to_an_explicit_device_and_keeps_them_when_there():
    data = [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))]
    assert materialize(data, device=torch.device("cpu")) is data
    assert materialize(data, device="cpu") is data
    meta = [(torch.empty(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta"))]
    moved = materialize(meta, device=torch.device("meta"))
    assert moved[0][0].device.type == "meta"
    with pytest.raises(TypeError, match=r"\(inputs, targets\)"):
        materialize([torch.randn(3)])


def test_a_model_on_the_meta_device_is_refused_by_name():
    with torch.device("meta"):
        m = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="meta device"):
        model_device(m)
    with pytest.raises(ValueError, match="meta device"):
        ber_sweep(m, [(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))], [1e-3], trials=1)


def test_score_is_the_count_over_the_total_for_accuracy():
    model, data = ZOO["dict_out"]()
    hits = total = 0
    with torch.no_grad():
        for x, y in data:
            hits += int((forward(model, x)["logits"].argmax(1) == y).sum())
            total += len(y)
    assert score(model, data, "accuracy", "logits") == hits / total
    assert bl.accuracy(model, data, output="logits") == hits / total


def test_evaluate_reports_each_metric_by_name():
    model, data = ZOO["encoder"]()
    res = bl.evaluate.evaluate(model, data, metrics=("loss", "accuracy"))
    out = torch.cat([forward(model, x) for x, _ in data]).detach()
    y = torch.cat([y for _, y in data])
    assert res["loss"] == pytest.approx(float(F.cross_entropy(out, y)))
    assert res["accuracy"] == int((out.argmax(1) == y).sum()) / len(y)
    reg, rdata = ZOO["regressor"]()
    with pytest.raises(ValueError, match=r"metric 'loss': needs outputs of shape \(batch, classes\)"):
        bl.evaluate.evaluate(reg, rdata)
    assert set(bl.evaluate.evaluate(reg, rdata, metrics=["mse"])) == {"mse"}


# --- campaigns with other metrics, against naive loops -----------------------------------------------


def _mse(model, data) -> float:
    with torch.no_grad():
        err = torch.cat([(forward(model, x) - y).double() ** 2 for x, y in data])
    return float(err.mean())


def test_ber_sweep_with_mse_on_a_transformer_regressor_matches_a_naive_loop():
    model, data = ZOO["regressor"]()
    snap = snapshot(model)
    df = ber_sweep(model, data, [1e-4, 1e-2], trials=3, metric="mse", seed=5, progress=False)
    assert same_as(model, snap)
    assert "mse" in df.columns and "accuracy" not in df.columns
    assert df.attrs["metric"] == "mse" and df.attrs["clean"] == pytest.approx(_mse(model, data))
    store = bl.inject.Store(model)
    for _, row in df.iterrows():
        g = trial_generator(5, "ber", row["ber"], int(row["trial"]))
        with store.corrupted(bl.BitErrorRate(row["ber"]), generator=g):
            want = _mse(model, data)
        # float32 attention kernels: the two runs agree to float32 rounding, not always to the bit
        assert row["mse"] == pytest.approx(want, rel=1e-6, nan_ok=True)
        assert row["rad"] == pytest.approx((want - df.attrs["clean"]) / df.attrs["clean"], rel=1e-5, nan_ok=True)
    assert df["mse"].max() > df.attrs["clean"]  # 1e-2 breaks the regressor


def test_ber_sweep_on_a_dict_output_model_with_keyword_inputs():
    model, data = ZOO["dict_out"]()
    with pytest.raises(TypeError, match="output="):
        ber_sweep(model, data, [1e-3], trials=1, progress=False)
    df = ber_sweep(model, data, [0.0, 1e-2], trials=2, output="logits", progress=False)
    assert df.attrs["clean_accuracy"] == score(model, data, "accuracy", "logits")
    assert (df[df.ber == 0]["accuracy"] == df.attrs["clean_accuracy"]).all()


def test_tolerable_ber_follows_the_direction_of_the_metric():
    rows = [{"ber": b, "mse": v} for b, v in [(1e-5, 1.0), (1e-4, 1.005), (1e-3, 1.5), (1e-2, 9.0)]]
    df = pd.DataFrame(rows)
    df.attrs.update(metric="mse", higher_is_better=False, clean=1.0)
    assert 1e-4 < tolerable_ber(df, drop=0.01) < 1e-3
    acc = pd.DataFrame([{"ber": b, "accuracy": v} for b, v in [(1e-5, 0.9), (1e-4, 0.895), (1e-3, 0.5)]])
    acc.attrs["clean_accuracy"] = 0.9  # a frame of bitlab 0.1: no metric attrs
    assert 1e-4 < tolerable_ber(acc, drop=0.01) < 1e-3


def test_census_with_mse_recomputes_exactly_and_says_so():
    model, data = ZOO["regressor"]()
    kw = dict(bits=[30, 22], params="head.*", progress=False)
    fast = bit_census(model, data, metric="mse", **kw)
    naive = naive_bit_census(model, data, metric="mse", **kw)
    assert "naive loop" in fast.attrs["note"] and "metric 'mse'" in fast.attrs["note"]
    pd.testing.assert_frame_equal(fast, naive)
    one = naive.iloc[0]
    with bl.corrupted(model, bl.SingleBitFlip(one["param"], int(one["index"]), int(one["bit"]))):
        assert one["mse"] == pytest.approx(_mse(model, data), rel=1e-12)


def test_census_on_a_dict_output_model_matches_the_naive_loop():
    model, data = ZOO["dict_out"]()
    kw = dict(bits="exponent", params="head.bias", progress=False, output="logits")
    fast = bit_census(model, data, **kw)
    naive = naive_bit_census(model, data, **kw)
    assert "output=" in fast.attrs["note"]
    pd.testing.assert_frame_equal(fast, naive)
    assert fast.attrs["stats"]["recomputed"] == len(fast)


def test_attack_on_a_regressor_with_an_mse_objective_raises_the_error():
    model, data = ZOO["regressor"]()
    snap = snapshot(model)
    res = bit_flip_attack(model, data, budget=2, attack_batch=8, metric="mse", loss=F.mse_loss, progress=False)
    assert same_as(model, snap)
    assert list(res.flips.columns)[-1] == "mse" and res.metric == "mse" and not res.higher_is_better
    assert res.flips["mse"].iloc[-1] > res.clean_accuracy
    with res.applied(model):  # float32 rounding: the attention kernel may differ between the two runs
        assert _mse(model, data) == pytest.approx(res.flips["mse"].iloc[-1], rel=1e-6)
    with pytest.raises(ValueError, match="'chance' needs metric='accuracy'"):
        bit_flip_attack(model, data, metric="mse", loss=F.mse_loss, target_accuracy="chance")


def test_attack_on_a_dict_output_model():
    model, data = ZOO["dict_out"]()
    res = bit_flip_attack(model, data, budget=2, attack_batch=16, output="logits", progress=False)
    with res.applied(model):
        assert score(model, data, "accuracy", "logits") == res.flips["accuracy"].iloc[-1]


def test_loss_slice_with_a_metric_and_an_output_picker():
    model, data = ZOO["dict_out"]()
    d = {"head.weight": torch.ones_like(model.head.weight)}
    df = loss_slice(model, None, data, d, [0.0, 1.0], output="logits")
    assert list(df.columns) == ["alpha", "loss", "accuracy"]
    assert df["accuracy"].iloc[0] == score(model, data, "accuracy", "logits")
    reg, rdata = ZOO["regressor"]()
    dr = {"head.bias": torch.ones_like(reg.head.bias)}
    df = loss_slice(reg, F.mse_loss, rdata, dr, [0.0, 0.5], metric="mse")
    assert df["mse"].iloc[0] == pytest.approx(_mse(reg, rdata), rel=1e-6)
    with torch.no_grad():
        reg.head.bias += 0.5
    assert df["mse"].iloc[1] == pytest.approx(_mse(reg, rdata), rel=1e-6)


def test_activation_sweep_with_the_loss_metric():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)).eval()
    x = torch.randn(32, 6)
    y = model(x).argmax(1).detach()
    data = [(x, y)]
    qm = bl.quant.quantize_model(model, x)
    df = bl.campaigns.activation_sweep(qm, data, [0.0, 0.05], trials=2, metric="loss", progress=False)
    with torch.no_grad():
        clean = float(F.cross_entropy(qm(x).double(), y))
    assert df.attrs["clean_loss"] == pytest.approx(clean, rel=1e-9)
    assert (df[df.rate == 0]["loss"] == df.attrs["clean"]).all()
    assert "rad" in df.columns and np.isfinite(df["rad"]).all()


def test_per_sample_scores_are_on_the_cpu_in_float64():
    model, data = ZOO["fp16"]()
    s = per_sample(model, data, "loss")
    assert s.dtype == torch.float64 and s.device.type == "cpu" and len(s) == sum(len(y) for _, y in data)


class _Stop(Exception):
    pass


def test_census_on_the_naive_loop_checkpoints_and_resumes(tmp_path):
    """Another metric (and a multi-word codec) takes the naive loop: it saves chunks too, a resumed run
    equals one straight through, and a resume with another metric is refused."""
    model, data = ZOO["regressor"]()
    kw = dict(metric="mse", params="head.weight", bits=[30, 29, 3], n_weights=6, progress=False)
    straight = bit_census(model, data, **kw)
    path = tmp_path / "mse.jsonl"
    calls = []

    def stop_after_one(n):
        calls.append(n)
        raise _Stop

    with pytest.raises(_Stop):
        bit_census(model, data, checkpoint=path, on_chunk=stop_after_one, **kw)
    assert calls == [1] and len(path.read_text().splitlines()) == 2  # the header and one chunk
    resumed = bit_census(model, data, checkpoint=path, **kw)
    pd.testing.assert_frame_equal(resumed, straight)
    with pytest.raises(ValueError, match="written by a different census"):
        bit_census(model, data, checkpoint=path, **{**kw, "metric": bl.Metric("mse2", METRICS["mse"].fn, False)})


def test_group_checksum_census_checkpoints_too(tmp_path):
    model, data = ZOO["conv1d"]()
    kw = dict(params="head.bias", bits="exponent", codec=bl.GroupChecksum(4), progress=False)
    seen = []
    first = bit_census(model, data, checkpoint=tmp_path / "g.jsonl", on_chunk=seen.append, **kw)
    assert seen and "naive loop" in first.attrs["note"]
    again = bit_census(model, data, checkpoint=tmp_path / "g.jsonl", on_chunk=seen.append, **kw)
    pd.testing.assert_frame_equal(first, again)
    assert len(seen) == len(set(seen)) == seen[-1]  # the rerun computed nothing new


def test_checkpoint_values_that_are_not_finite_round_trip(tmp_path):
    from bitlab.campaigns.census.checkpoint import CheckpointFile

    f = CheckpointFile(tmp_path / "c.jsonl", "k")
    f.append(("w", 0, 4), [float("nan"), float("inf"), -float("inf"), 0.25])
    (got,) = CheckpointFile(tmp_path / "c.jsonl", "k").load().values()
    assert math.isnan(got[0]) and got[1:] == [float("inf"), -float("inf"), 0.25]
    assert '"nan"' in (tmp_path / "c.jsonl").read_text()


def test_fast_census_gives_the_metric_errors_of_the_core():
    reg = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    data = [(torch.randn(6, 4), torch.randn(6, 3))]
    with pytest.raises(ValueError, match="integer class labels.*metric='mse'"):
        bit_census(reg, data, params="2.bias", bits="sign", progress=False)
    model, ddata = ZOO["dict_out"]()
    with pytest.raises(TypeError, match=r"output: .*keys \['logits', 'features'\]"):
        bit_census(model, ddata, params="head.bias", bits="sign", progress=False)


def test_attack_refuses_regression_targets_without_a_loss_and_formats_wider_than_storage():
    model, data = ZOO["regressor"]()
    with pytest.raises(ValueError, match="loss: the default objective.*mse_loss"):
        bit_flip_attack(model, data, budget=1, metric="mse", progress=False)
    half, hdata = ZOO["bf16"]()
    with pytest.raises(ValueError, match="fmt: FP32 has 32 bits but"):
        bit_flip_attack(half, hdata, fmt=bl.FP32, budget=1, progress=False)
    cnn, cdata = ZOO["resnet_bn"]()
    cnn = cnn.to(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="contiguous_format"):
        bit_flip_attack(cnn, cdata, budget=1, progress=False)


def test_hessian_pair_loss_on_a_tuple_output_names_batch_loss():
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 2)

        def forward(self, x):
            return self.lin(x), x

    m = TupleOut()
    batch = (torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(TypeError, match="batch_loss"):
        bl.hessian.hvp(m, F.cross_entropy, batch, [torch.ones_like(p) for p in m.parameters()])


def test_stop_at_follows_the_direction_and_stops_on_a_nan_mean():
    model, data = ZOO["regressor"]()
    full = ber_sweep(model, data, [1e-6, 1e-2, 5e-2], trials=2, metric="mse", progress=False)
    broken = full.groupby("ber")["mse"].mean()
    assert np.isnan(broken.iloc[-1]) or broken.iloc[-1] > 10 * full.attrs["clean"]
    short = ber_sweep(
        model, data, [1e-6, 1e-2, 5e-2], trials=2, metric="mse", stop_at=10 * full.attrs["clean"], progress=False
    )
    assert short["ber"].max() < 5e-2  # stopped once the mean MSE was past the threshold (or NaN)
    pd.testing.assert_frame_equal(short, full[full.ber <= short["ber"].max()].reset_index(drop=True))


def test_nan_trials_fail_their_rate_and_their_t():
    df = pd.DataFrame({"ber": [1e-6, 1e-6, 1e-5, 1e-5, 1e-4], "mse": [0.1, 0.1, float("nan"), 0.1, 0.9]})
    df.attrs.update(metric="mse", higher_is_better=False, clean=0.1)
    assert tolerable_ber(df, drop=0.01) == pytest.approx(1e-6)  # 1e-5 holds a NaN trial: it fails
    table = bl.summarize(df)
    assert table.set_index("ber").loc[1e-5, "nan"] == 1 and table.set_index("ber").loc[1e-5, "n"] == 1
    from bitlab.campaigns.scaling import best_t

    t = pd.DataFrame({"t": [1.0, 1.0, 2.0, 2.0], "mse": [0.05, float("nan"), 0.2, 0.2], "clean_mse": [0.1] * 4})
    t.attrs.update(metric="mse", higher_is_better=False)
    assert best_t(t) == 2.0


def test_attack_with_the_loss_metric_keeps_both_columns():
    model, data = ZOO["encoder"]()
    res = bit_flip_attack(model, data, budget=2, metric="loss", progress=False)
    assert list(res.flips.columns)[-2:] == ["loss", "eval_loss"] and res.metric == "eval_loss"
    assert list(res.curve().columns) == ["step", "loss", "eval_loss"]
    flips = res.flips.copy()
    flips.loc[flips.index[-1], "eval_loss"] = float("nan")
    res.flips = flips
    assert res.flips_to(1e9) == len(flips)  # a NaN value is past any level


def test_a_metric_closing_over_another_value_is_another_census(tmp_path):
    model, data = ZOO["dict_out"]()

    def scaled(scale):
        return bl.Metric("scaled", lambda o, t: METRICS["accuracy"].fn(o, t) * scale)

    kw = dict(params="head.bias", bits=[30], output="logits", checkpoint=tmp_path / "c.jsonl", progress=False)
    first = bit_census(model, data, metric=scaled(1.0), **kw)
    assert first.attrs["stats"]["recomputed"] == len(first)
    again = bit_census(model, data, metric=scaled(1.0), **kw)
    assert again.attrs["stats"]["from_checkpoint"] == len(again) and again.attrs["stats"]["recomputed"] == 0
    with pytest.raises(ValueError, match="different census"):
        bit_census(model, data, metric=scaled(100.0), **kw)
