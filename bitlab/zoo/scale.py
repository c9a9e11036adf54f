"""The scale a notebook runs at, and the data and models of its paper path.

Every notebook of the series has two parameters in its ``parameters`` cell:

* ``SCALE``: ``"small"`` (scikit-learn's 8x8 digits: seconds to minutes on a laptop CPU, what the book
  shows), ``"mnist"`` (the 5,000 real MNIST images of :func:`bitlab.zoo.data.mnist5k`: minutes on a CPU;
  notebook 01; 05 uses them at small scale) or ``"paper"`` (the papers' data sets and models, on a GPU:
  :func:`paper_data`, :func:`imagenet_resnet50`, the recipes of :mod:`bitlab.training.recipes`).
* ``SMOKE``: with ``SCALE = "paper"``, the paper configuration runs end to end for a few steps on tiny
  synthetic data written in the real on-disk formats (:mod:`bitlab.zoo.synthetic`), through the same
  readers, on the device the notebook picks (the CPU in CI). CI runs every notebook this way
  (papermill). The numbers of a smoke run mean nothing, so a notebook checks no claim in smoke mode; it
  checks the papers' claims at paper scale and what its narration says holds at small scale.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from . import data as _data

__all__ = ["SCALES", "SMOKE_VAL_SIZE", "check_scale", "imagenet_resnet50", "paper_data"]

SCALES = ("small", "mnist", "paper")
#: validation images carved from a smoke data set's training images (the paper runs carve 5,000)
SMOKE_VAL_SIZE = 100


def check_scale(scale: str, smoke: bool, allowed: tuple[str, ...] = SCALES) -> None:
    """Refuse a ``scale`` outside ``allowed`` (a notebook passes the scales it has), or ``smoke`` that is
    not a bool or is asked for below paper scale, by name."""
    if scale not in allowed:
        raise ValueError(f"SCALE: {scale!r}; allowed {list(allowed)}")
    if not isinstance(smoke, bool):
        raise TypeError(f"SMOKE must be True or False, got {smoke!r}")
    if smoke and scale != "paper":
        raise ValueError(f"SMOKE=True runs the paper path on synthetic data; it needs SCALE='paper', got {scale!r}")


def paper_data(kind: str, smoke: bool = False, root: str | Path = "data", seed: int = 0) -> _data.Split:
    """The paper data set ``kind`` (``"mnist"`` or ``"cifar10"``) as a :class:`~bitlab.zoo.data.Split`:
    read from its files under ``root``, fetched through torchvision where they are missing (5,000
    training images become the validation set); with ``smoke``, a tiny synthetic set written in the same
    format into a temporary folder and read back by the same reader (:data:`SMOKE_VAL_SIZE` for
    validation)."""
    readers = {"mnist": _data.mnist, "cifar10": _data.cifar10}
    if kind not in readers:
        raise ValueError(f"kind: {kind!r}; allowed {sorted(readers)}")
    if smoke:
        return readers[kind](_data.write_smoke_data(kind, seed=seed), val_size=SMOKE_VAL_SIZE, seed=seed)
    return readers[kind](root, download=True, seed=seed)


def imagenet_resnet50(
    smoke: bool = False, root: str | Path = "data/imagenet/val", weights: str | Path = "torchvision"
) -> tuple[nn.Module, Dataset, str]:
    """Fuengfusin's and Pranto's ImageNet model: ResNet-50 with ImageNet weights (``weights``, see
    :func:`bitlab.zoo.pretrained.pretrained_resnet50`) and ImageNet's validation set under ``root``
    (:func:`bitlab.zoo.data.imagenet_val`), with a line saying what was loaded. With ``smoke``, the part
    that needs torchvision is replaced, and only that: the weights are a random initialization (seed 0)
    written to a ``.safetensors`` file and read back through the same loader, and the images a tiny
    synthetic ImageFolder tree; so the model's accuracy means nothing."""
    from .pretrained import pretrained_resnet50, resnet50, save_safetensors

    if smoke:
        folder = _data.write_smoke_data("imagenet")
        with torch.random.fork_rng(devices=[]):  # the caller's global generator is left as it was
            torch.manual_seed(0)
            path = save_safetensors(resnet50().state_dict(), folder / "resnet50-random.safetensors")
            model = pretrained_resnet50(path)  # building the model draws an initialization first
        note = (
            "SMOKE: ResNet-50 with random weights read from a .safetensors file (torchvision's pretrained "
            f"weights replaced), on {folder} (synthetic images)"
        )
        return model, _data.imagenet_val(folder), note
    model = pretrained_resnet50(weights)
    return model, _data.imagenet_val(root), f"ResNet-50, weights {weights}, ImageNet validation images under {root}"
