import pytest
import torch
from torch import nn

from bitlab import models


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_mlp_shapes_and_size():
    m = models.mlp()
    assert m(torch.rand(5, 1, 8, 8)).shape == (5, 10)
    assert models.num_params(m) == 64 * 32 + 32 + 32 * 10 + 10
    deep = models.mlp(in_features=3 * 32 * 32, hidden=(64, 32), num_classes=7)
    assert deep(torch.rand(2, 3, 32, 32)).shape == (2, 7)
    assert [l.out_features for l in deep if isinstance(l, nn.Linear)] == [64, 32, 7]
    with pytest.raises(ValueError, match="hidden"):
        models.mlp(hidden=(0,))


@pytest.mark.parametrize("in_channels,size", [(1, 8), (3, 32), (1, 28)])
def test_small_cnn_shapes(in_channels, size):
    m = models.small_cnn(in_channels=in_channels, num_classes=10, input_size=size)
    assert m(torch.rand(3, in_channels, size, size)).shape == (3, 10)
    fc = next(l for l in m if isinstance(l, nn.Linear))
    assert fc.in_features == 16 * (size // 4) ** 2


def test_small_cnn_rejects_bad_size():
    with pytest.raises(ValueError, match="input_size"):
        models.small_cnn(input_size=10)


@pytest.mark.parametrize("fn,depth", [(models.resnet20, 20), (models.resnet56, 56)])
@pytest.mark.parametrize("in_channels,size", [(1, 8), (3, 32)])
def test_resnet_shapes(fn, depth, in_channels, size):
    m = fn(in_channels=in_channels, num_classes=10)
    assert m(torch.rand(2, in_channels, size, size)).shape == (2, 10)
    # depth counts the weighted layers: depth - 1 convolutions and one linear classifier
    convs = sum(isinstance(l, nn.Conv2d) for l in m.modules())
    linears = sum(isinstance(l, nn.Linear) for l in m.modules())
    assert (convs, linears) == (depth - 1, 1)
    assert sum(isinstance(l, nn.BatchNorm2d) for l in m.modules()) == depth - 1


def test_resnet_parameter_counts_match_he_et_al():
    # He et al. 2016, Table 6 (option A shortcuts): ResNet-20 0.27M, ResNet-56 0.85M parameters on CIFAR-10
    assert round(models.num_params(models.resnet20(in_channels=3)) / 1e6, 2) == 0.27
    assert round(models.num_params(models.resnet56(in_channels=3)) / 1e6, 2) == 0.85


def test_option_a_shortcut_is_parameter_free_subsample_and_zero_pad():
    block = models.BasicBlock(4, 8, stride=2)
    x = torch.randn(2, 4, 6, 6)
    sc = block.shortcut(x)
    assert sc.shape == (2, 8, 3, 3)
    assert torch.equal(sc[:, 2:6], x[:, :, ::2, ::2])
    assert torch.count_nonzero(sc[:, :2]) == 0 and torch.count_nonzero(sc[:, 6:]) == 0
    assert torch.equal(models.BasicBlock(4, 4).shortcut(x), x)


def test_cifar_resnet_rejects_bad_depth():
    with pytest.raises(ValueError, match="6n\\+2"):
        models.cifar_resnet(21)
    assert models.num_params(models.cifar_resnet(8, in_channels=1, width=4)) > 0
