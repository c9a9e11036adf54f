"""Tiny synthetic data sets written in the real on-disk formats (MNIST's idx files, CIFAR-10's binary
batches, an ImageNet-style ImageFolder tree), so that every notebook's paper path can run end to end
on a CPU in seconds (``SCALE = "paper"`` with ``SMOKE = True``) through the same readers a paper run
uses (:mod:`bitlab.zoo.files`). The images are noise with a class-dependent bright square, so a few
training steps learn something; the numbers mean nothing else.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from . import files

__all__ = ["SMOKE_SIZES", "write_smoke_data"]

#: (training, test) images per data set
SMOKE_SIZES = {"mnist": (400, 100), "cifar10": (400, 100), "imagenet": (0, 16)}


def _images(n: int, side: int, channels: int, classes: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images (N, channels, side, side): faint noise plus a bright square whose place is the class."""
    y = np.arange(n) % classes
    rng.shuffle(y)
    x = rng.integers(0, 60, (n, channels, side, side), dtype=np.uint8)
    cells = int(np.ceil(np.sqrt(classes)))
    step = side // cells
    for k in range(classes):
        r, c = divmod(k, cells)
        x[y == k, :, r * step : r * step + step // 2 + 1, c * step : c * step + step // 2 + 1] = 230
    return x, y


def write_smoke_data(kind: str, root: str | Path | None = None, seed: int = 0, classes: int = 10) -> Path:
    """Write a tiny ``kind`` data set ("mnist", "cifar10" or "imagenet") under ``root`` (default: a fresh
    temporary folder) in its real format, sized by :data:`SMOKE_SIZES`, and return the folder to pass
    as ``root`` to :func:`bitlab.zoo.data.mnist` / :func:`~bitlab.zoo.data.cifar10` (or to
    :func:`~bitlab.zoo.data.imagenet_val`: ImageNet's is a validation set of ``classes`` folders)."""
    if kind not in SMOKE_SIZES:
        raise ValueError(f"kind: {kind!r}; allowed {sorted(SMOKE_SIZES)}")
    out = Path(tempfile.mkdtemp(prefix=f"bitlab-smoke-{kind}-")) if root is None else Path(root)
    rng = np.random.default_rng(seed)
    n_train, n_test = SMOKE_SIZES[kind]
    if kind == "mnist":
        for part, n in (("train", n_train), ("test", n_test)):
            x, y = _images(n, 28, 1, classes, rng)
            files.write_mnist(out, part, x[:, 0], y)
    elif kind == "cifar10":
        for part, n in (("train", n_train), ("test", n_test)):
            x, y = _images(n, 32, 3, classes, rng)
            files.write_cifar10(out, part, x, y)
    else:
        x, y = _images(n_test, 64, 3, classes, rng)
        names = [f"n{k:08d}" for k in range(classes)]  # WordNet-style folder names, sorted as ImageNet's
        files.write_image_folder(out, x.transpose(0, 2, 3, 1), y, names)
    return out
