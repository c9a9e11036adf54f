"""Bit-flip attack (progressive bit search): it breaks the model, the flips it reports are real,
and the model handed in is restored bit for bit."""

import itertools
import struct

import pandas as pd
import pytest
import torch
from torch import nn

import bitlab as bl
from bitlab.campaigns import batch_accuracy, materialize
from bitlab.campaigns.attack import AttackResult, attack_loss, bit_flip_attack


def snapshot(model):
    return {
        k: v.detach().clone().view(torch.int32) if v.dtype == torch.float32 else v.clone()
        for k, v in model.state_dict().items()
    }


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def digits():
    return bl.data.digits(seed=0)


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = bl.models.mlp(hidden=(16,))
    bl.train.fit(model, digits.train, epochs=12, lr=3e-3, seed=0, progress=False)
    assert bl.accuracy(model, digits.test) > 0.85
    return model


@pytest.fixture(scope="module")
def int8_attack(trained, digits):
    before = snapshot(trained)
    r = bit_flip_attack(
        trained,
        digits.test,
        fmt=bl.Int(8),
        budget=60,
        target_accuracy="chance",
        candidates_per_layer=6,
        seed=0,
        progress=False,
    )
    assert same(before, snapshot(trained))
    return r


def int8_flip(value, scale, bit):
    """Independent reference: the int8 two's complement word of ``value``, bit flipped, decoded."""
    q = round(value / scale)
    assert abs(q * scale - value) <= 1e-6 * max(1.0, abs(value)) and -127 <= q <= 127
    u = (q & 0xFF) ^ (1 << bit)
    return (u - 256 if u >= 128 else u) * scale


def f32_flip(v, bit):
    u = struct.unpack("<I", struct.pack("<f", v))[0] ^ (1 << bit)
    return struct.unpack("<f", struct.pack("<I", u))[0]


def test_int8_attack_reaches_chance_with_rising_loss(int8_attack, trained, digits):
    r = int8_attack
    assert r.clean_accuracy == pytest.approx(batch_accuracy(trained, materialize(digits.test)), abs=0.03)
    assert r.stopped == "target" and r.num_classes == 10
    k = r.flips_to()
    assert k is not None and k == len(r) and r.flips["accuracy"].iloc[-1] <= 0.1 + 0.02
    assert (r.flips["accuracy"].iloc[:-1] > 0.12).all()
    # the search only keeps flips that raise the attack loss
    losses = [r.clean_loss] + r.flips["loss"].tolist()
    assert all(b > a for a, b in itertools.pairwise(losses))
    # observed on this model (not guaranteed by the algorithm: it maximizes the attack-batch loss)
    accs = [r.clean_accuracy] + r.flips["accuracy"].tolist()
    assert all(b <= a for a, b in itertools.pairwise(accs))
    assert r.flips["estimate"].gt(0).all()
    assert list(r.curve()["step"]) == list(range(len(r) + 1))


def test_int8_flips_match_an_independent_reference(int8_attack, trained):
    r = int8_attack
    params = dict(trained.named_parameters())
    assert set(r.names) == {"1.weight", "3.weight"}
    current = {}
    for row in r.flips.itertuples():
        w = params[row.param].detach().reshape(-1)
        scale = w.abs().max().item() / 127  # per-tensor scale of the clean weights
        old = current.get((row.param, row.index), round(w[row.index].item() / scale) * scale)
        assert row.old == pytest.approx(old, abs=1e-6)
        assert row.new == pytest.approx(int8_flip(row.old, scale, row.bit), abs=1e-6)
        current[(row.param, row.index)] = row.new
    sites = list(zip(r.flips["param"], r.flips["index"], r.flips["bit"]))
    assert len(set(sites)) == len(sites)  # no bit flipped twice


def test_reported_flips_are_real(int8_attack, trained, digits):
    r = int8_attack
    batches = materialize(digits.test)
    before = snapshot(trained)
    for n in range(1, len(r) + 1):
        with r.applied(trained, n) as report:
            assert report.flips == n
            acc = batch_accuracy(trained, batches)
            row = r.flips.iloc[n - 1]
            assert trained.get_parameter(row["param"]).reshape(-1)[row["index"]].item() == row["new"]
        assert acc == r.flips["accuracy"].iloc[n - 1]
    assert same(before, snapshot(trained))


def test_fp32_attack(trained, digits):
    before = snapshot(trained)
    r = bit_flip_attack(
        trained, digits.test, fmt=bl.FP32, budget=10, target_accuracy="chance", candidates_per_layer=4, progress=False
    )
    assert same(before, snapshot(trained))
    assert r.clean_accuracy == bl.accuracy(trained, digits.test)  # FP32 stores the weights exactly
    assert r.flips_to() is not None and r.flips_to() <= 3  # one exponent flip is catastrophic (Hong et al.)
    for row in r.flips.itertuples():
        assert struct.pack("<f", row.new) == struct.pack("<f", f32_flip(row.old, row.bit))
    with r.applied(trained):
        assert batch_accuracy(trained, materialize(digits.test)) == r.flips["accuracy"].iloc[-1]
    assert same(before, snapshot(trained))


def test_restored_and_modes_kept_when_evaluation_raises(trained, digits):
    before = snapshot(trained)
    flags = [p.requires_grad for p in trained.parameters()]
    for p in list(trained.parameters())[:2]:
        p.requires_grad_(False)
    trained.train()
    calls = {"n": 0}

    def boom(module, inputs, output):
        calls["n"] += 1
        if calls["n"] == 7:
            raise RuntimeError("boom")

    handle = trained.register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            bit_flip_attack(trained, digits.test, budget=5, progress=False)
    finally:
        handle.remove()
    assert same(before, snapshot(trained)) and trained.training
    assert [p.requires_grad for p in trained.parameters()] == [False, False] + flags[2:]
    for p, f in zip(trained.parameters(), flags):
        p.requires_grad_(f)
    trained.eval()


def test_budget_stops_the_search(trained, digits):
    r = bit_flip_attack(trained, digits.test, budget=3, progress=False)
    assert len(r) == 3 and r.stopped == "budget"


def test_attack_loss_caps_and_skips_non_finite_samples():
    logits = torch.tensor([[0.0, 0.0], [float("nan"), 1.0], [0.0, 5000.0]], requires_grad=True)
    y = torch.tensor([0, 0, 0])
    loss = attack_loss(logits, y, cap=100.0)
    assert loss.item() == pytest.approx((torch.log(torch.tensor(2.0)).item() + 100.0 + 100.0) / 3)
    (g,) = torch.autograd.grad(loss, logits)
    assert torch.isfinite(g).all() and g[1:].abs().sum() == 0


def test_flips_to_definition():
    df = pd.DataFrame({"step": [1, 2, 3, 4], "accuracy": [0.5, 0.3, 0.11, 0.05]})
    r = AttackResult(df, bl.Int(8), ["w"], 0.1, 0.9, 10, "budget", 0.0)
    assert r.chance_level() == pytest.approx(0.12)
    assert r.flips_to() == 3 and r.flips_to(0.4) == 2 and r.flips_to(0.01) is None
    assert AttackResult(df, bl.Int(8), ["w"], 0.1, 0.1, 10, "budget", 0.0).flips_to() == 0


@pytest.mark.parametrize("budget", [0, -3])
def test_bad_budget(trained, digits, budget):
    with pytest.raises(ValueError, match="budget"):
        bit_flip_attack(trained, digits.test, budget=budget)


def test_bad_inputs(trained, digits):
    with pytest.raises(ValueError, match="Linear or Conv"):
        bit_flip_attack(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.BatchNorm1d(64)), digits.test)
    with pytest.raises(ValueError, match="Linear or Conv"):
        bit_flip_attack(trained, digits.test, params="*.bias")
    with pytest.raises(ValueError, match="target_accuracy"):
        bit_flip_attack(trained, digits.test, target_accuracy=2.0)
    with pytest.raises(TypeError, match="fmt"):
        bit_flip_attack(trained, digits.test, fmt="int8")
    with pytest.raises(ValueError, match="candidates_per_layer"):
        bit_flip_attack(trained, digits.test, candidates_per_layer=0)


def test_flip_list_cancels_pairs_and_matches_single_flips():
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 4)
    with bl.corrupted(
        model, bl.FlipList([("weight", 5, 3), ("weight", 5, 3), ("weight", 9, 30)]), params="weight"
    ) as r:
        got = model.weight.detach().clone()
    with bl.corrupted(model, bl.SingleBitFlip("weight", 9, 30), params="weight"):
        want = model.weight.detach().clone()
    assert r.flips == 1 and torch.equal(got.view(torch.int32), want.view(torch.int32))
    with pytest.raises(ValueError, match="param"):
        with bl.corrupted(model, bl.FlipList([("nope", 0, 0)])):
            pass


@pytest.mark.parametrize("name", ["resnet_bn", "encoder"])
def test_tried_flips_from_the_graph_equal_full_forward_trials(name, monkeypatch):
    """Each tried flip recomputes only what follows its layer (the traced graph); with the trace
    switched off every trial runs the whole forward: the same flips, losses and scores, float for float."""
    from zoo import ZOO, same_as, snapshot

    import bitlab.campaigns.attack as attack_module

    model, data = ZOO[name](0)
    snap = snapshot(model)
    kw = dict(budget=4, attack_batch=16, candidates_per_layer=3, seed=0, progress=False)
    graph = bit_flip_attack(model, data, **kw)
    assert same_as(model, snap)
    monkeypatch.setattr(attack_module, "trial_run", lambda model, x: None)
    full = bit_flip_attack(model, data, **kw)
    assert len(graph.flips) == 4
    pd.testing.assert_frame_equal(graph.flips, full.flips, check_exact=True)
    assert same_as(model, snap)


def test_trials_on_a_fused_transformer_layer_equal_full_forward_trials(monkeypatch):
    """nn.TransformerEncoderLayer takes its fused fast path only without autograd (in eval mode): the
    clean values the graph's trials start from come from a pass without it, as the full-forward trials
    (the gradient's forward would differ in the last bits)."""
    from zoo import ZOO, same_as, snapshot

    import bitlab.campaigns.attack as attack_module

    model, data = ZOO["encoder"](1)
    snap = snapshot(model)
    kw = dict(budget=5, attack_batch=24, candidates_per_layer=4, seed=0, params="head.weight", progress=False)
    graph = bit_flip_attack(model, data, **kw)
    monkeypatch.setattr(attack_module, "trial_run", lambda model, x: None)
    full = bit_flip_attack(model, data, **kw)
    assert len(full.flips) > 0
    pd.testing.assert_frame_equal(graph.flips, full.flips, check_exact=True)
    assert same_as(model, snap)


def _inplace_chain(seed: int = 0):
    """A Sequential whose layers write into their inputs (in-place ReLU after each linear, a Dropout in eval)."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Linear(6, 12),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(12, 12),
        nn.ReLU(inplace=True),
        nn.Linear(12, 3),
    ).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 6, generator=g)
    with torch.no_grad():
        y = m(x).argmax(1)
    y[::4] = (y[::4] + 1) % 3
    return m, [(x[:20], y[:20]), (x[20:], y[20:])]


@pytest.mark.parametrize("name", ["inplace", "fp16", "bf16", "digits_cnn"])
def test_tried_flips_through_a_chains_layers_equal_full_forward_trials(name, monkeypatch):
    """On an nn.Sequential each tried flip runs only the layers from the flipped one on, from their kept
    inputs (copied, as a layer may write into its input); with that switched off every trial runs the
    whole forward: the same flips, losses and scores, float for float."""
    from zoo import ZOO, same_as, snapshot

    import bitlab.campaigns.attack as attack_module
    from bitlab.campaigns.trial_runs import ChainRun, trial_run

    if name == "inplace":
        model, data = _inplace_chain()
    elif name == "digits_cnn":
        split = bl.data.digits(seed=0)
        torch.manual_seed(0)
        model = bl.models.small_cnn()
        bl.train.fit(model, split.train, epochs=2, progress=False)
        data = split.test
    else:
        model, data = ZOO[name](0)
    first = next(iter(bl.data.as_loader(data) if not isinstance(data, list) else data))[0]
    assert isinstance(trial_run(model, first), ChainRun)
    snap = snapshot(model)
    kw = dict(budget=5, attack_batch=16, candidates_per_layer=3, seed=0, progress=False)
    chain = bit_flip_attack(model, data, **kw)
    assert same_as(model, snap)
    monkeypatch.setattr(attack_module, "trial_run", lambda model, x: None)
    full = bit_flip_attack(model, data, **kw)
    assert len(full.flips) > 0
    pd.testing.assert_frame_equal(chain.flips, full.flips, check_exact=True)
    assert same_as(model, snap)


def test_chains_the_trial_runner_does_not_take():
    """A Sequential subclass, hooks on the chain, or one parameter in two layers go to the traced graph."""
    from bitlab.campaigns.census.graph import GraphRun
    from bitlab.campaigns.trial_runs import trial_run

    x = torch.randn(4, 6)
    a, b = nn.Linear(6, 6), nn.Linear(6, 6)
    b.weight = a.weight
    hooked = nn.Sequential(nn.Linear(6, 6))
    hooked.register_forward_hook(lambda m, i, o: o)

    class Chain(nn.Sequential):
        pass

    for model in (nn.Sequential(a, nn.ReLU(), b), hooked, Chain(nn.Linear(6, 6))):
        assert isinstance(trial_run(model.eval(), x), GraphRun), model


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("transposed", [False, True])
def test_tried_flips_equal_the_weight_written_by_hand_and_leave_it_bit_for_bit(dtype, transposed):
    """The attack's tried flips (written through a NumPy view on the CPU for float32/64, as tensor writes
    otherwise) score what the layer scores with the weight changed by hand, and put the weight back."""
    import copy

    from bitlab.campaigns.pbs import attack_loss, finite_or_inf, flipped_values

    torch.manual_seed(0)
    lin = torch.nn.Linear(6, 4).to(dtype)
    if transposed:  # non-contiguous: logical order is not memory order
        lin.weight = torch.nn.Parameter(lin.weight.detach().t().contiguous().t())
    x, y = torch.randn(5, 6, dtype=dtype), torch.tensor([0, 1, 2, 3, 0])
    ints = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}[dtype]
    before = lin.weight.detach().clone()
    flips = [(0, 1e30), (7, float("nan")), (23, -0.5), (13, float("-inf"))]
    with torch.no_grad():
        got = flipped_values(lin.weight, flips, lambda: lin(x), y, None, attack_loss)
        want = []
        for i, new in flips:
            m = copy.deepcopy(lin)
            m.weight.data[divmod(i, 6)] = new
            want.append(finite_or_inf(attack_loss(m(x), y)))
    assert got == want
    assert lin.weight.stride() == before.stride()
    assert torch.equal(lin.weight.detach().view(ints), before.view(ints))
