"""The data sets and models the book's experiments use: bundled 8x8 digits, mnist5k, MNIST / CIFAR-10
/ ImageNet from their own files (:mod:`.data`, :mod:`.files`); MLP, small CNN, LeNet-5, CIFAR-style
ResNets (:mod:`.models`); ResNet-50 with ImageNet weights (:mod:`.pretrained`); tiny synthetic sets in
the real formats (:mod:`.synthetic`); the notebooks' scales and their paper data (:mod:`.scale`).
"""

from __future__ import annotations

from . import data, files, models, pretrained, scale, synthetic

__all__ = ["data", "files", "models", "pretrained", "scale", "synthetic"]
