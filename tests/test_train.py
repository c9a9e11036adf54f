import copy
import math
import random

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bitlab import data, models, train


@pytest.fixture(scope="module")
def digits():
    return data.digits()


def _single_batch(ds):
    """One batch holding the whole set, in order: fit then takes exactly one step per epoch."""
    return DataLoader(ds, batch_size=len(ds), shuffle=False)


def test_fit_mlp_on_digits(digits):
    torch.manual_seed(0)
    model = models.mlp()
    df = train.fit(model, digits.train, epochs=30, progress=False)
    assert isinstance(df, pd.DataFrame)
    assert list(df.columns) == ["epoch", "loss", "train_acc", "seconds"]
    assert df["epoch"].tolist() == list(range(1, 31))
    assert df["loss"].iloc[-1] < df["loss"].iloc[0]
    assert (df["seconds"] > 0).all()
    assert train.accuracy(model, digits.test) > 0.90
    ev = train.evaluate(model, digits.test)
    assert ev["accuracy"] == pytest.approx(train.accuracy(model, digits.test))
    assert 0 < ev["loss"] < 1


def test_fit_is_deterministic(digits):
    def run():
        torch.manual_seed(1)
        m = models.mlp()
        return train.fit(m, digits.train, epochs=2, seed=3, progress=False), m

    (a, ma), (b, mb) = run(), run()
    assert a["loss"].tolist() == b["loss"].tolist()
    assert all(torch.equal(p, q) for p, q in zip(ma.parameters(), mb.parameters()))


def test_fit_loss_and_acc_are_epoch_means(tiny_model, tiny_data):
    x, y = tiny_data.tensors
    m0 = copy.deepcopy(tiny_model)
    df = train.fit(tiny_model, _single_batch(tiny_data), epochs=1, optimizer="sgd", lr=0.1, progress=False)
    with torch.no_grad():
        out = m0(x)
    assert df["loss"].iloc[0] == pytest.approx(float(F.cross_entropy(out, y)), rel=1e-6)
    assert df["train_acc"].iloc[0] == pytest.approx(float((out.argmax(1) == y).float().mean()))


def test_sgd_step_matches_hand_computed(tiny_model, tiny_data):
    x, y = tiny_data.tensors
    ref = copy.deepcopy(tiny_model)
    loss = F.cross_entropy(ref(x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    expected = [p.detach() - 0.1 * g for p, g in zip(ref.parameters(), grads)]
    train.fit(tiny_model, _single_batch(tiny_data), epochs=1, optimizer="sgd", lr=0.1, progress=False)
    for p, e in zip(tiny_model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)


def test_regularizer_is_added_to_the_loss(tiny_model, tiny_data):
    # an L2 penalty 0.5 * wd * ||w||^2 as regularizer gives the same SGD steps as weight_decay=wd
    wd, calls = 0.3, []
    m_reg, m_wd = copy.deepcopy(tiny_model), copy.deepcopy(tiny_model)

    def l2(model, x, y):
        calls.append(len(y))
        return 0.5 * wd * sum((p**2).sum() for p in model.parameters())

    df = train.fit(m_reg, _single_batch(tiny_data), epochs=3, optimizer="sgd", lr=0.1, regularizer=l2, progress=False)
    train.fit(m_wd, _single_batch(tiny_data), epochs=3, optimizer="sgd", lr=0.1, weight_decay=wd, progress=False)
    assert calls == [64, 64, 64]
    assert "penalty" in df.columns and (df["penalty"] > 0).all()
    for p, q in zip(m_reg.parameters(), m_wd.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_adversary_replaces_inputs(tiny_model, tiny_data):
    x, y = tiny_data.tensors
    calls = []

    def flip_sign(model, xb, yb):
        calls.append(model.training)
        model.eval()  # an adversary may switch modes; fit switches back to training
        return -xb

    ref = copy.deepcopy(tiny_model)
    loss = F.cross_entropy(ref(-x), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    expected = [p.detach() - 0.05 * g for p, g in zip(ref.parameters(), grads)]
    df = train.fit(
        tiny_model, _single_batch(tiny_data), epochs=1, optimizer="sgd", lr=0.05, adversary=flip_sign, progress=False
    )
    assert calls == [True]
    assert df["loss"].iloc[0] == pytest.approx(float(loss.detach()), rel=1e-6)
    for p, e in zip(tiny_model.parameters(), expected):
        torch.testing.assert_close(p.detach(), e, rtol=1e-6, atol=1e-7)


class RecordingSGD(torch.optim.SGD):
    """SGD that records what step() receives and, like SAM, evaluates the closure twice."""

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self.closures, self.losses = [], []

    def step(self, closure=None):
        self.closures.append(closure)
        self.losses.append(float(closure().detach()))
        with torch.enable_grad():
            closure()
        return super().step()


def test_step_receives_a_closure(tiny_model, tiny_data):
    opts = []

    def make(params):
        opts.append(RecordingSGD(params, lr=0.1))
        return opts[0]

    df = train.fit(tiny_model, tiny_data, epochs=2, batch_size=16, optimizer=make, progress=False)
    (opt,) = opts
    assert len(opt.closures) == 2 * 4 and all(callable(c) for c in opt.closures)
    # the logged loss is the first closure evaluation of each step, averaged over the epoch
    assert df["loss"].iloc[0] == pytest.approx(sum(opt.losses[:4]) / 4, rel=1e-6)


def test_optimizer_that_ignores_the_closure_is_an_error(tiny_model, tiny_data):
    class NoClosure(torch.optim.SGD):
        def step(self, closure=None):
            return None

    with pytest.raises(RuntimeError, match="closure"):
        train.fit(tiny_model, tiny_data, epochs=1, optimizer=lambda p: NoClosure(p, lr=0.1), progress=False)


@pytest.mark.parametrize(
    "name,cls,extra",
    [
        ("sgd", torch.optim.SGD, {"momentum": 0.9}),
        ("adam", torch.optim.Adam, {"betas": (0.8, 0.9)}),
        ("RMSprop", torch.optim.RMSprop, {"alpha": 0.9}),
    ],
)
def test_named_optimizers(tiny_model, name, cls, extra):
    opt = train.make_optimizer(tiny_model.parameters(), name, lr=0.01, weight_decay=0.1, **extra)
    assert type(opt) is cls
    group = opt.param_groups[0]
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.1
    assert all(group[k] == v for k, v in extra.items())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(optimizer="adagrad"), "optimizer must be one of \\['adam', 'rmsprop', 'sgd'\\]"),
        (dict(optimizer=3), "optimizer"),
        (dict(optimizer=lambda p: torch.optim.SGD(p, lr=0.1), momentum=0.9), "momentum"),
        (dict(optimizer=lambda p: "not an optimizer"), "torch.optim.Optimizer"),
        (dict(epochs=0), "epochs"),
        (dict(epochs=1.5), "epochs"),
        (dict(lr=0.0), "lr"),
        (dict(lr=-1e-3), "lr"),
        (dict(lr=math.nan), "lr"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(batch_size=0), "batch_size"),
        (dict(regularizer="l2"), "regularizer"),
        (dict(adversary=1), "adversary"),
    ],
)
def test_bad_arguments_raise(tiny_model, tiny_data, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        train.fit(tiny_model, tiny_data, progress=False, **kwargs)


def test_bad_data_raises(tiny_model):
    with pytest.raises(TypeError, match="data"):
        train.fit(tiny_model, [(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))], epochs=1, progress=False)


class Lookup(nn.Module):
    """Returns fixed logits, row i for input i."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", table)
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, idx):
        return self.table[idx.long()]


def test_accuracy_counts_non_finite_logits_as_wrong():
    nan, inf = math.nan, math.inf
    table = torch.tensor(
        [
            [5.0, 0.0, 0.0],  # correct
            [0.0, 5.0, nan],  # argmax right but a NaN: wrong
            [inf, 0.0, 0.0],  # +inf on the true class: wrong
            [0.0, -inf, 1.0],  # correct class 2 but -inf elsewhere: wrong
            [0.0, 1.0, 0.0],  # wrong class
            [0.0, 0.0, 3.0],
        ]
    )  # correct
    y = torch.tensor([0, 1, 0, 2, 0, 2])
    ds = TensorDataset(torch.arange(6), y)
    model = Lookup(table)
    assert train.accuracy(model, ds, batch_size=4) == pytest.approx(2 / 6)
    assert train.evaluate(model, ds)["accuracy"] == pytest.approx(2 / 6)
    assert train.predict(model, ds).tolist() == [0, -1, -1, -1, 1, 2]
    assert train.accuracy(model, DataLoader(ds, batch_size=2)) == pytest.approx(2 / 6)


def test_accuracy_uses_eval_mode_and_restores_it(tiny_data):
    modes = []

    class Spy(nn.Linear):
        def forward(self, x):
            modes.append(self.training)
            return super().forward(x)

    m = Spy(4, 3)
    m.train()
    train.accuracy(m, tiny_data)
    assert modes and not any(modes) and m.training
    m.eval()
    train.evaluate(m, tiny_data)
    assert not m.training


def test_set_seed_reproduces_random_draws():
    train.set_seed(7)
    a = (torch.rand(3), np.random.rand(2), random.random())
    train.set_seed(7)
    b = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
