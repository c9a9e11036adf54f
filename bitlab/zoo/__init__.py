"""The data sets and models the book's experiments use: bundled 8x8 digits, MNIST / CIFAR-10 through
torchvision (:mod:`.data`); MLP, small CNN, CIFAR-style ResNets (:mod:`.models`).
"""

from __future__ import annotations

from . import data, models

__all__ = ["data", "models"]
