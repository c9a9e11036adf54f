"""bitlab.curvature.products: the one double-backprop product serves single vectors and vmapped blocks of
columns alike (same values), on one batch and over a DataLoader; the size-weighted batch mean."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from bitlab.curvature.products import HessianOperator, batch_mean, flatten, hvp


class Residual(nn.Module):
    """A residual block (not a Sequential): x + W2 tanh(W1 x), a linear head, and a parameter the loss
    does not use (its Hessian rows are exactly zero)."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(5, 7)
        self.outer = nn.Linear(7, 5)
        self.head = nn.Linear(5, 3)
        self.unused = nn.Parameter(torch.zeros(2, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x + self.outer(torch.tanh(self.inner(x))))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def residual():
    torch.manual_seed(0)
    model = Residual().double().eval()
    x = torch.randn(30, 5, dtype=torch.float64, generator=gen(0))
    y = torch.randint(0, 3, (30,), generator=gen(1))
    return model, x, y


@pytest.mark.parametrize("loader", [False, True])
def test_single_and_batched_products_agree_on_a_residual_block(residual, loader):
    model, x, y = residual
    data = DataLoader(TensorDataset(x, y), batch_size=8) if loader else (x, y)
    op = HessianOperator(model, F.cross_entropy, data)
    V = torch.randn(op.n, 5, dtype=torch.float64, generator=gen(2))
    batched = op.matmat_vmap(V, block=2)  # blocks of 2, 2, 1 columns
    assert op.n_hvp == 5
    single = op.matmat_columns(V)
    assert op.n_hvp == 10
    torch.testing.assert_close(batched, single, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(op.matmat(V), single, rtol=1e-10, atol=1e-12)
    # the unused parameter's rows are exactly zero, in both paths (it is registered first, so rows 0..3)
    assert op.named[0][0] == "unused"
    assert not batched[:4].any() and not single[:4].any() and batched[4:].any()
    # and the public hvp gives the same column
    flat = hvp(model, F.cross_entropy, data, V[:, 0])
    torch.testing.assert_close(flat, single[:, 0], rtol=1e-10, atol=1e-12)


def test_loader_products_are_the_full_batch_products(residual):
    model, x, y = residual
    V = torch.randn(sum(p.numel() for p in model.parameters()), 3, dtype=torch.float64, generator=gen(3))
    full = HessianOperator(model, F.cross_entropy, (x, y)).matmat(V)
    uneven = HessianOperator(model, F.cross_entropy, DataLoader(TensorDataset(x, y), batch_size=7)).matmat(V)
    torch.testing.assert_close(uneven, full, rtol=1e-10, atol=1e-12)


def test_batch_mean_weights_by_batch_size():
    data = [(torch.zeros(2), torch.zeros(2)), (torch.zeros(6), torch.ones(6))]
    out = batch_mean(data, lambda x, y: [y.mean().reshape(1), torch.tensor([float(len(y))])])
    assert torch.equal(flatten(out), torch.tensor([6 / 8, (2 * 2 + 6 * 6) / 8]))
    with pytest.raises(ValueError, match="empty"):
        batch_mean([], lambda x, y: [x])
