"""The fast census (bitlab.census) against the naive loop (flip, full forward, restore): same frame,
float for float, NaN/Inf flips included."""

import math

import pandas as pd
import pytest
import torch
from torch import nn

import bitlab as bl
from bitlab.campaigns import naive_bit_census
from bitlab.campaigns.census import bit_census, count_above
from bitlab.campaigns.census.clean import run_clean
from bitlab.campaigns.census.exact import exact_packed
from bitlab.campaigns.census.layers import chain_layers
from bitlab.campaigns.census.screen import screen_bounds
from bitlab.formats import FP16
from bitlab.training import fit
from bitlab.zoo.data import digits
from bitlab.zoo.models import mlp, small_cnn


@pytest.fixture(scope="module")
def split():
    return digits(seed=0)


def _subset(ds, n, flat=False):
    x, y = ds.tensors
    x = x[:n].flatten(1) if flat else x[:n]
    return torch.utils.data.TensorDataset(x, y[:n])


def _sampled(model, n_weights, seed):
    """The weights the census visits (the documented draw: one randperm per sampled tensor)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, p in model.named_parameters():
        idx = torch.arange(p.numel())
        if n_weights < p.numel():
            idx = torch.randperm(p.numel(), generator=g)[:n_weights].sort().values
        out[name] = idx
    return out


def _plant(model, n_weights, seed):
    """Give some visited weights values whose flips read back as Inf/NaN (|w| in [1, 2): flipping
    bit 30 sets the exponent to 255) or as huge numbers, so that logits overflow."""
    idx = _sampled(model, n_weights, seed)
    special = [1.0, -1.5, 1.75, -1.0]
    with torch.no_grad():
        for j, (name, p) in enumerate(model.named_parameters()):
            p.view(-1)[idx[name][0]] = special[j % len(special)]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(model, before):
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.fixture(scope="module")
def trained_mlp(split):
    torch.manual_seed(0)
    model = mlp(64, (16, 12), 10)
    fit(model, _subset(split.train, 400, flat=True), epochs=3, seed=0, progress=False)
    return model


@pytest.fixture(scope="module")
def trained_cnn(split):
    torch.manual_seed(1)
    model = small_cnn()
    fit(model, _subset(split.train, 400), epochs=3, seed=0, progress=False)
    return model


def test_mlp_all_32_bits_equal_naive_including_nan_inf(trained_mlp, split):
    model = trained_mlp
    _plant(model, 5, 3)
    data = _subset(split.test, 48, flat=True)
    before = _state(model)
    naive = naive_bit_census(model, data, bits="all", n_weights=5, seed=3, progress=False)
    fast = bit_census(model, data, bits="all", n_weights=5, seed=3, progress=False)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert fast.attrs["clean_accuracy"] == naive.attrs["clean_accuracy"]
    assert not torch.isfinite(torch.tensor(fast["flipped"].to_numpy())).all()  # Inf/NaN weights
    assert (fast["accuracy"] == 0).any()  # some flips make every logit non-finite or wrong
    assert fast.attrs["stats"]["certified"] > 0  # the fast path was used, not only the exact one
    _assert_same_state(model, before)


def test_cnn_all_32_bits_equal_naive_including_nan_inf(trained_cnn, split):
    model = trained_cnn
    _plant(model, 3, 5)
    data = _subset(split.test, 40)
    before = _state(model)
    naive = naive_bit_census(model, data, bits="all", n_weights=3, seed=5, progress=False)
    fast = bit_census(model, data, bits="all", n_weights=3, seed=5, progress=False, batch_flips=64)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert not torch.isfinite(torch.tensor(fast["flipped"].to_numpy())).all()
    assert fast.attrs["stats"]["certified"] > 0 and fast.attrs["stats"]["recomputed"] > 0
    _assert_same_state(model, before)


def test_sampled_census_equals_naive_for_other_seed_and_bits(trained_cnn, split):
    data = _subset(split.test, 30)
    kw = dict(bits=["sign", 30, 23], params=["3.weight", "7.*"], n_weights=4, seed=11, progress=False)
    pd.testing.assert_frame_equal(
        naive_bit_census(trained_cnn, data, **kw), bit_census(trained_cnn, data, **kw), check_exact=True
    )


def test_lossy_format_equals_naive(trained_mlp, split):
    data = _subset(split.test, 30, flat=True)
    kw = dict(fmt=FP16, bits="exponent", n_weights=3, seed=2, progress=False)
    pd.testing.assert_frame_equal(
        naive_bit_census(trained_mlp, data, **kw), bit_census(trained_mlp, data, **kw), check_exact=True
    )


def test_many_batches_equal_naive(split):
    torch.manual_seed(2)
    model = mlp(64, (8,), 10)
    loader = torch.utils.data.DataLoader(_subset(split.test, 50, flat=True), batch_size=16)  # 16+16+16+2
    kw = dict(bits=[31, 30, 29, 22, 0], n_weights=6, seed=0, progress=False)
    pd.testing.assert_frame_equal(
        naive_bit_census(model, loader, **kw), bit_census(model, loader, **kw), check_exact=True
    )


class _Residual(nn.Module):
    """Not a Sequential: the census takes the exact full-forward path."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)) + x)


def test_non_sequential_model_equals_naive():
    torch.manual_seed(3)
    model = _Residual()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 6, generator=g)
    data = torch.utils.data.TensorDataset(x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long())
    kw = dict(bits="all", n_weights=3, seed=1, progress=False)
    pd.testing.assert_frame_equal(naive_bit_census(model, data, **kw), bit_census(model, data, **kw), check_exact=True)


def test_batchnorm_model_in_train_mode_is_evaluated_in_eval_mode_like_naive():
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 16, 3)
    )
    g = torch.Generator().manual_seed(1)
    x = torch.rand(24, 1, 4, 4, generator=g)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 3, (24,), generator=g))
    model.train()
    model(x)  # non-trivial running statistics
    before = _state(model)
    kw = dict(bits=[31, 30, 26], n_weights=4, seed=0, progress=False)
    naive = naive_bit_census(model, data, **kw)
    fast = bit_census(model, data, **kw)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert model.training  # handed back in the mode it came in
    _assert_same_state(model, before)  # eval mode: running statistics untouched


def test_interrupted_census_resumes_to_the_same_frame(trained_mlp, split, tmp_path):
    data = _subset(split.test, 30, flat=True)
    kw = dict(bits="exponent", n_weights=6, seed=4, progress=False, batch_flips=8)
    straight = bit_census(trained_mlp, data, **kw)
    path = tmp_path / "census.jsonl"
    before = _state(trained_mlp)

    def stop_after_three(n_done):
        if n_done == 3:
            raise KeyboardInterrupt("simulated interruption")

    with pytest.raises(KeyboardInterrupt):
        bit_census(trained_mlp, data, checkpoint=path, on_chunk=stop_after_three, **kw)
    _assert_same_state(trained_mlp, before)
    assert path.exists()
    calls = []
    resumed = bit_census(trained_mlp, data, checkpoint=path, on_chunk=calls.append, **kw)
    pd.testing.assert_frame_equal(straight, resumed, check_exact=True)
    n_chunks = sum(math.ceil(min(6, p.numel()) * 8 / 8) for _, p in trained_mlp.named_parameters())
    assert len(calls) == n_chunks - 3  # the three saved chunks were not recomputed
    again = []
    bit_census(trained_mlp, data, checkpoint=path, on_chunk=again.append, **kw)
    assert again == []  # everything is in the checkpoint


def test_checkpoint_of_another_census_is_refused(trained_mlp, split, tmp_path):
    data = _subset(split.test, 20, flat=True)
    path = tmp_path / "c.jsonl"
    bit_census(trained_mlp, data, bits="sign", n_weights=2, checkpoint=path, progress=False)
    with pytest.raises(ValueError, match="checkpoint"):
        bit_census(trained_mlp, data, bits="sign", n_weights=3, checkpoint=path, progress=False)


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(bits=[]), "bits"),
        (dict(bits="nope"), "bits"),
        (dict(batch_flips=0), "batch_flips"),
        (dict(n_weights=0), "n_weights"),
        (dict(params="missing.*"), "params"),
    ],
)
def test_bad_input_names_the_argument(trained_mlp, split, kwargs, word):
    data = _subset(split.test, 10, flat=True)
    with pytest.raises(ValueError, match=word):
        bit_census(trained_mlp, data, progress=False, **kwargs)


def test_reexported_from_campaign():
    assert bl.campaign.bit_census is bit_census


def test_count_above_on_a_hand_made_frame():
    df = pd.DataFrame(
        {"param": ["a", "a", "a", "b", "b"], "bit": [30, 23, 30, 30, 0], "rad": [0.95, 0.1, 0.5, float("nan"), 1.0]}
    )
    by_param = count_above(df, thresholds=(0.1, 0.9), by="param")
    assert by_param.to_dict("list") == {"param": ["a", "b"], "flips": [3, 2], "rad>0.1": [2, 1], "rad>0.9": [1, 1]}
    by_bit = count_above(df, thresholds=(0.1, 0.9), by="bit")
    assert by_bit.to_dict("list") == {
        "bit": [0, 23, 30],
        "flips": [1, 1, 3],
        "rad>0.1": [1, 0, 2],
        "rad>0.9": [1, 0, 1],
    }
    total = count_above(df, thresholds=(0.5,), by=None)
    assert total.to_dict("list") == {"flips": [5], "rad>0.5": [2]}
    with pytest.raises(ValueError, match="by"):
        count_above(df, by="layer")


def _wide_changes(w: torch.Tensor, k: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """k random elements of w and new values 1e-8x to 1e30x away from theirs, either sign."""
    idx = torch.randint(0, w.numel(), (k,), generator=g)
    scale = 10.0 ** torch.empty(k).uniform_(-8, 30, generator=g) * torch.sign(torch.randn(k, generator=g))
    return idx, (w.detach().reshape(-1)[idx].double() * (1 + scale.double())).float()


def _naive_ok(
    model: nn.Module, w: torch.Tensor, i: int, value: torch.Tensor, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """Per-sample correctness of the model with element i of w set to value (the naive loop's step)."""
    flat = w.data.view(-1)
    old = flat[i].clone()
    flat[i] = value
    try:
        z = model(x)
    finally:
        flat[i] = old
    return torch.isfinite(z).all(1) & (z.argmax(1) == y)


@pytest.mark.parametrize("seed", range(3))
def test_screen_is_sound_on_near_ties_and_wrong_samples(seed):
    """Every (flip, sample) pair the screen settles keeps the clean outcome in the float32 forward,
    also where two logits differ by about one rounding error (where a bound that is too tight goes
    wrong) and for samples the clean model gets wrong (random weights: about 2/3 of them); flips
    from tiny to 1e30-fold changes. The screen must also settle some pairs (not only abstain)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(24, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.3)
        model[2].weight[1] = model[2].weight[0] * (1 + (torch.rand(12, generator=g) - 0.5) * 2.0**-21)
        model[2].bias[1] = model[2].bias[0]
    x = torch.rand(64, 24, generator=g)
    y = torch.randint(0, 3, (64,), generator=g)
    clean = run_clean(chain_layers(model), [(x, y)])
    assert 0 < int(clean.ok.sum()) < 64
    settled_total = 0
    for layer, attr in [(0, "weight"), (0, "bias"), (2, "weight"), (2, "bias")]:
        w = getattr(model[layer], attr)
        idx, new = _wide_changes(w, 96, g)
        with torch.no_grad():
            settled = screen_bounds(clean, layer, attr, idx, new).settled
            for j in range(96):
                ok = _naive_ok(model, w, int(idx[j]), new[j], x, y)
                assert torch.equal(ok[settled[j]], clean.ok[settled[j]]), (layer, attr, j)
        settled_total += int(settled.sum())
    assert settled_total > 0


def _near_tie_chain(kind: str, g: torch.Generator) -> tuple[nn.Sequential, torch.Tensor, torch.Tensor]:
    """A random chain whose classes 0 and 1 differ by about one rounding error in the last layer."""
    if kind == "mlp":
        model = nn.Sequential(nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))
        x = torch.rand(64, 24, generator=g)
    else:
        model = nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(4, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(24, 3),
        )
        x = torch.rand(64, 1, 8, 8, generator=g)
    model.eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand(p.shape, generator=g) - 0.3)
        last = model[-1]
        last.weight.mul_(3.0)  # weights above 1: a unit near float32's largest value overflows the logits
        last.weight[1] = last.weight[0] * (1 + (torch.rand(last.weight.shape[1], generator=g) - 0.5) * 2.0**-21)
        last.bias[1] = last.bias[0]
    return model, x, torch.randint(0, 3, (64,), generator=g)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("seed", [0, 1])
def test_recheck_is_sound_on_near_ties_and_wrong_samples(kind, seed):
    """The recheck (the next mixing layer's exact input, our float32 rerun of the rest and a
    rounding bound) settles flips with the naive loop's count, on near-tie logits, clean-wrong
    samples and changes from 1e-8x to 1e30x or to near float32's largest value (sums that overflow),
    for a flip one layer before the logits (rerun through one more mixing layer) and for one
    feeding the logits' layer directly.
    It must settle some flips, and leave some to the exact path."""
    g = torch.Generator().manual_seed(seed)
    model, x, y = _near_tie_chain(kind, g)
    layers = chain_layers(model)
    clean = run_clean(layers, [(x, y)])
    assert 0 < int(clean.ok.sum()) < 64
    mixing = [u for u, m in enumerate(layers) if isinstance(m, (nn.Linear, nn.Conv2d))]
    settled = exact = 0
    for layer in mixing[:-1]:
        for attr in ("weight", "bias"):
            w = getattr(layers[layer], attr)
            idx, new = _wide_changes(w, 48, g)
            # a third of the flips push their unit to 1e-4 to 0.9 of float32's largest value: sums after it overflow
            near = torch.rand(48, generator=g) < 1 / 3
            top = torch.finfo(torch.float32).max * 10.0 ** torch.empty(48).uniform_(-4, -0.05, generator=g)
            new = torch.where(near, (top / clean.acts[layer].abs().max()).float(), new)
            known = (torch.ones(48, len(y), dtype=torch.bool), torch.full((48,), int(clean.ok.sum())))
            with torch.no_grad():
                counts, redone = exact_packed(clean, layer, attr, idx, new, known)
                for j in range(48):
                    assert counts[j] == int(_naive_ok(model, w, int(idx[j]), new[j], x, y).sum()), (layer, attr, j)
            settled += redone.count(False)
            exact += redone.count(True)
    assert settled > 0 and exact > 0
