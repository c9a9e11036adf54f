"""The models the notebooks train and break: small enough that digits training takes seconds on a CPU,
and the CIFAR-style ResNets of the papers (ResNet-20/56) for paper-scale runs.

* :func:`mlp` -- fully connected ReLU network (64-32-10 on digits).
* :func:`small_cnn` -- two conv/ReLU/max-pool stages and a linear classifier.
* :func:`lenet5` -- LeCun et al. 1998's LeNet-5 for 28x28 MNIST (ReLU and max-pooling in place of the
  original scaled tanh and trainable subsampling).
* :func:`cifar_resnet`, :func:`resnet20`, :func:`resnet56` -- He et al. 2016 (Sec. 4.2) CIFAR ResNets,
  depth 6n+2, BasicBlocks with BatchNorm, option A (parameter-free) shortcuts.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["mlp", "small_cnn", "lenet5", "BasicBlock", "cifar_resnet", "resnet20", "resnet56", "num_params"]


def num_params(model: nn.Module) -> int:
    """Number of trainable parameters (scalars) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def mlp(in_features: int = 64, hidden: Sequence[int] = (32,), num_classes: int = 10) -> nn.Sequential:
    """Flatten, then ``Linear -> ReLU`` for each width in ``hidden``, then a linear classifier."""
    if in_features < 1 or num_classes < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"in_features, hidden and num_classes must be positive, got {in_features}, {tuple(hidden)}, {num_classes}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def small_cnn(in_channels: int = 1, num_classes: int = 10, input_size: int = 8) -> nn.Sequential:
    """``conv(in->8, 3x3) - ReLU - maxpool2 - conv(8->16, 3x3) - ReLU - maxpool2 - flatten - linear``;
    ``input_size`` (square images, divisible by 4) fixes the classifier's input width ``16 * (input_size/4)**2``."""
    if input_size < 4 or input_size % 4:
        raise ValueError(f"input_size must be a multiple of 4 (two 2x2 poolings), got {input_size}")
    side = input_size // 4
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, num_classes),
    )


def lenet5(in_channels: int = 1, num_classes: int = 10) -> nn.Sequential:
    """LeNet-5 (LeCun et al. 1998) for 28x28 inputs: ``conv 5x5 (6, padded by 2) - ReLU - maxpool2 -
    conv 5x5 (16) - ReLU - maxpool2 - 400-120-84-classes`` with ReLU; 61.7k parameters."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity shortcut. Option A of He et al. 2016: when the block
    halves the resolution and doubles the width, the shortcut subsamples by 2 and pads the new channels
    with zeros, so it adds no parameters (every parameter of the model is a conv, BN or linear weight)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride, self.pad = stride, planes - in_planes

    def shortcut(self, x: Tensor) -> Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """conv3x3 - BN - ReLU, three stages of ``n`` BasicBlocks (widths w, 2w, 4w; stages 2 and 3 start with
    stride 2), global average pooling, linear classifier. Works for any input of at least 4x4 pixels."""

    def __init__(self, depth: int, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
        if width < 2 or width % 2:
            raise ValueError(f"width must be an even int >= 2, got {width}")
        n = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks: list[nn.Module] = []
        planes = width
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(planes, w, stride))
                planes = w
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(planes, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.layers(F.relu(self.bn(self.conv(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


def cifar_resnet(depth: int, in_channels: int = 3, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """A CIFAR-style ResNet of ``depth = 6n + 2`` layers (He et al. 2016, Sec. 4.2), option A shortcuts."""
    return CifarResNet(depth, in_channels, num_classes, width)


def resnet20(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-20 (0.27M parameters at width 16 on 3-channel input)."""
    return cifar_resnet(20, in_channels, num_classes, width)


def resnet56(in_channels: int = 1, num_classes: int = 10, width: int = 16) -> CifarResNet:
    """ResNet-56 (0.85M parameters at width 16), the model of Fasfous et al. 2022 on CIFAR-10."""
    return cifar_resnet(56, in_channels, num_classes, width)
