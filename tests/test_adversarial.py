"""Tests for bitlab.adversarial (FGSM, PGD, robust accuracy, adversarial-training hook)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitlab.training.adversarial import fgsm, fgsm_adversary, pgd, pgd_adversary, robust_accuracy


@pytest.fixture(scope="module")
def trained():
    """A small BN model trained briefly on separable data in [0, 1]^8."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(256, 8, generator=g)
    y = (x[:, :4].sum(1) > x[:, 4:].sum(1)).long()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.Adam(model.parameters(), lr=0.03)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    return model, x, y


def _loss(model, x, y):
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_fgsm_raises_loss_and_stays_in_ball(trained):
    model, x, y = trained
    eps = 0.1
    x_adv = fgsm(model, x, y, eps)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    assert _loss(model, x_adv, y) > _loss(model, x, y) + 0.05


def test_fgsm_equals_hand_computed_step():
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [-1.0, 1.0, 0.0]]))
        lin.bias.zero_()
    x = torch.tensor([[0.5, 0.5, 0.5]])
    y = torch.tensor([0])
    # d CE / d logits = softmax - onehot; grad_x = W^T (p - e_y); class 0 loses: sign(W0 - W1) negated
    p = torch.softmax(lin(x), 1).detach()
    grad = (p - F.one_hot(y, 2).float()) @ lin.weight.detach()
    expected = (x + 0.1 * grad.sign()).clamp(0, 1)
    assert torch.allclose(fgsm(lin, x, y, 0.1), expected)
    assert torch.equal(grad.sign(), torch.tensor([[-1.0, 1.0, -1.0]]))


def test_pgd_raises_loss_more_than_fgsm_and_respects_constraints(trained):
    model, x, y = trained
    eps = 0.1
    g = torch.Generator().manual_seed(0)
    x_adv = pgd(model, x, y, eps, steps=10, generator=g)
    assert float((x_adv - x).abs().max()) <= eps + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    clean, l_fgsm, l_pgd = _loss(model, x, y), _loss(model, fgsm(model, x, y, eps), y), _loss(model, x_adv, y)
    assert l_pgd > clean + 0.05
    assert l_pgd >= l_fgsm - 1e-3
    # a custom clamp range and no clamp
    x_c = pgd(model, x, y, 0.5, steps=3, clamp=(0.2, 0.8), generator=g)
    assert float(x_c.min()) >= 0.2 - 1e-6 and float(x_c.max()) <= 0.8 + 1e-6
    x_n = pgd(model, x, y, 0.5, steps=3, clamp=None, generator=g)
    assert float(x_n.min()) < 0 and float((x_n - x).abs().max()) <= 0.5 + 1e-6


def test_pgd_deterministic_with_seed_and_eps_zero(trained):
    model, x, y = trained
    # small steps, so that the iterate does not reach a corner of the ball whatever the start
    kw = dict(steps=2, step_size=0.01)
    a = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(5), **kw)
    b = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(5), **kw)
    c = pgd(model, x, y, 0.1, generator=torch.Generator().manual_seed(6), **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(pgd(model, x, y, 0.0), x)
    assert torch.equal(fgsm(model, x, y, 0.0), x)
    # without random start PGD is deterministic without a generator
    assert torch.equal(pgd(model, x, y, 0.1, random_start=False), pgd(model, x, y, 0.1, random_start=False))


def test_model_mode_restored_and_bn_untouched(trained):
    model, x, y = trained
    stats = model[1].running_mean.clone()
    model.train()
    try:
        pgd(model, x, y, 0.1, steps=2)
        assert model.training
        fgsm(model, x, y, 0.1)
        assert model.training
        robust_accuracy(model, torch.utils.data.TensorDataset(x, y), 0.1, steps=2)
        assert model.training
        assert torch.equal(model[1].running_mean, stats)  # the attack ran in eval mode
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    pgd(model, x, y, 0.1, steps=2)
    assert not model.training


def test_robust_accuracy_below_clean(trained):
    model, x, y = trained
    ds = torch.utils.data.TensorDataset(x, y)
    with torch.no_grad():
        clean = float((model(x).argmax(1) == y).float().mean())
    r_fgsm = robust_accuracy(model, ds, 0.1, attack="fgsm")
    r_pgd = robust_accuracy(model, ds, 0.1, steps=10)
    assert clean > 0.9
    assert r_pgd <= clean and r_fgsm <= clean
    assert r_pgd < clean - 0.05
    assert robust_accuracy(model, ds, 0.0) == pytest.approx(clean)
    assert robust_accuracy(model, ds, 0.1, seed=3) == robust_accuracy(model, ds, 0.1, seed=3)


def test_bad_arguments(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="eps"):
        pgd(model, x, y, -0.1)
    with pytest.raises(ValueError, match="eps"):
        fgsm(model, x, y, -1)
    with pytest.raises(ValueError, match="steps"):
        pgd(model, x, y, 0.1, steps=0)
    with pytest.raises(ValueError, match="step_size"):
        pgd(model, x, y, 0.1, step_size=-1.0)
    with pytest.raises(ValueError, match="clamp"):
        pgd(model, x, y, 0.1, clamp=(1.0, 0.0))
    with pytest.raises(ValueError, match="eps"):
        pgd_adversary(-0.1, 5)
    with pytest.raises(ValueError, match="steps"):
        pgd_adversary(0.1, 0)
    with pytest.raises(ValueError, match="attack"):
        robust_accuracy(model, torch.utils.data.TensorDataset(x, y), 0.1, attack="cw")


def test_pgd_adversary_in_fit_is_reproducible():
    from bitlab import train

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 8, generator=g)
    y = (x[:, 0] > 0.5).long()
    ds = torch.utils.data.TensorDataset(x, y)
    finals = []
    for _ in range(2):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
        hist = train.fit(
            model, ds, epochs=2, batch_size=32, adversary=pgd_adversary(0.05, steps=3, seed=1), progress=False
        )
        finals.append((hist["loss"].tolist(), [p.detach().clone() for p in model.parameters()]))
    assert finals[0][0] == finals[1][0]
    assert all(torch.equal(a, b) for a, b in zip(finals[0][1], finals[1][1]))
    # the FGSM hook returns in-range inputs
    adv = fgsm_adversary(0.05)(model, x, y)
    assert float((adv - x).abs().max()) <= 0.05 + 1e-6
