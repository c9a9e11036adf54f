"""The paper data sets' own files, read (and written, for tests and smoke runs) without torchvision
and without pickle: MNIST's idx files (LeCun et al. 1998), the binary version of CIFAR-10 (Krizhevsky
2009, ``cifar-10-binary.tar.gz``) and an ImageFolder tree of images (ImageNet's validation set as
``val/<wnid>/*.JPEG``), read lazily through Pillow.

CIFAR-10's *python* version (``cifar-10-batches-py``) is a set of pickles; bitlab never unpickles a
file, so it reads the binary version instead and says so when it finds only the python one.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "CIFAR10_FILES",
    "MNIST_FILES",
    "ImageFolder",
    "find_file",
    "read_cifar10",
    "read_idx",
    "read_mnist",
    "write_cifar10",
    "write_idx",
    "write_image_folder",
    "write_mnist",
]

#: the idx files of MNIST per part (each may also be gzipped, ``.gz``)
MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
#: the batches of CIFAR-10's binary version, in ``cifar-10-batches-bin``
CIFAR10_FILES = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
_IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


def read_idx(path: str | Path) -> np.ndarray:
    """An idx file (plain or ``.gz``) as a numpy array of its type and shape."""
    path = Path(path)
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an idx file (magic bytes {raw[:4]!r})")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    dtype = _IDX_TYPES[raw[2]]
    body = raw[4 + 4 * ndim :]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise ValueError(f"{path}: {len(body)} bytes of data for shape {dims} of {dtype}")
    return np.frombuffer(body, dtype=dtype).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write a uint8 array as an idx file (gzipped if ``path`` ends in ``.gz``)."""
    a = np.ascontiguousarray(array)
    if a.dtype != np.uint8:
        raise ValueError(f"array: idx files written here hold uint8, got {a.dtype}")
    raw = bytes([0, 0, 0x08, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if path.suffix == ".gz" else raw)
    return path


def find_file(root: str | Path, name: str, folders: Sequence[str] = ("", "MNIST/raw", "raw")) -> Path | None:
    """``name`` or ``name.gz`` under ``root`` or one of its usual sub-folders (torchvision's layout too)."""
    for folder in folders:
        for candidate in (name, name + ".gz"):
            p = Path(root) / folder / candidate
            if p.is_file():
                return p
    return None


def read_mnist(root: str | Path, part: str) -> tuple[Tensor, Tensor]:
    """MNIST's ``part`` ("train" or "test") from its idx files under ``root``: images ``(N, 1, 28, 28)``
    float32 in [0, 1] and labels int64."""
    if part not in MNIST_FILES:
        raise ValueError(f"part: {part!r}; allowed 'train' or 'test'")
    found = [find_file(root, n) for n in MNIST_FILES[part]]
    if any(f is None for f in found):
        missing = [n for n, f in zip(MNIST_FILES[part], found) if f is None]
        raise FileNotFoundError(f"MNIST: {missing} (or .gz) not found under root={str(root)!r} or its MNIST/raw")
    images, labels = (read_idx(f) for f in found if f is not None)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"MNIST {part}: images {images.shape} and labels {labels.shape} do not match")
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    return x, torch.from_numpy(labels.astype(np.int64))


def write_mnist(root: str | Path, part: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    """Write ``images`` (N, H, W) uint8 and ``labels`` (N,) as MNIST's idx files of ``part`` under ``root``."""
    suffix = ".gz" if gz else ""
    img_name, lab_name = MNIST_FILES[part]
    write_idx(Path(root) / (img_name + suffix), images.astype(np.uint8))
    write_idx(Path(root) / (lab_name + suffix), labels.astype(np.uint8))


def _cifar_dir(root: str | Path) -> Path:
    for d in (Path(root) / "cifar-10-batches-bin", Path(root)):
        if (d / CIFAR10_FILES["test"][0]).is_file():
            return d
    if (Path(root) / "cifar-10-batches-py").is_dir():
        raise FileNotFoundError(
            f"CIFAR-10 under root={str(root)!r} is the python version (pickles), which bitlab does not unpickle; "
            "put the binary version there (cifar-10-binary.tar.gz, extracted: cifar-10-batches-bin/)"
        )
    raise FileNotFoundError(f"CIFAR-10: cifar-10-batches-bin/test_batch.bin not found under root={str(root)!r}")


def read_cifar10(root: str | Path, part: str) -> tuple[Tensor, Tensor]:
    """CIFAR-10's ``part`` ("train" or "test") from the binary batches under ``root``: images
    ``(N, 3, 32, 32)`` float32 in [0, 1] (not normalized) and labels int64. Each record is one label
    byte and 3072 pixel bytes (red, green, blue planes, row-major)."""
    if part not in CIFAR10_FILES:
        raise ValueError(f"part: {part!r}; allowed 'train' or 'test'")
    d = _cifar_dir(root)
    chunks = []
    for name in CIFAR10_FILES[part]:
        raw = np.frombuffer((d / name).read_bytes(), dtype=np.uint8)
        if raw.size % 3073:
            raise ValueError(f"{d / name}: {raw.size} bytes is not a whole number of 3073-byte records")
        chunks.append(raw.reshape(-1, 3073))
    rec = np.concatenate(chunks)
    x = torch.from_numpy(rec[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32) / 255.0)
    return x, torch.from_numpy(rec[:, 0].astype(np.int64))


def write_cifar10(root: str | Path, part: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write ``images`` (N, 3, 32, 32) uint8 and ``labels`` as CIFAR-10's binary batches of ``part``
    under ``root/cifar-10-batches-bin`` (the training part split over the five batch files)."""
    if images.shape[1:] != (3, 32, 32):
        raise ValueError(f"images: CIFAR-10 records are (3, 32, 32), got {images.shape[1:]}")
    d = Path(root) / "cifar-10-batches-bin"
    d.mkdir(parents=True, exist_ok=True)
    rec = np.concatenate([labels.astype(np.uint8)[:, None], images.astype(np.uint8).reshape(len(images), -1)], 1)
    names = CIFAR10_FILES[part]
    for name, part_rec in zip(names, np.array_split(rec, len(names))):
        (d / name).write_bytes(part_rec.tobytes())


class ImageFolder(Dataset):
    """Images under ``root/<class>/`` (classes sorted by name, as torchvision's ImageFolder), read
    lazily with Pillow: resized so the shorter side is ``resize``, center-cropped to ``size``, as float32
    (3, size, size) in [0, 1], then normalized with ``mean`` / ``std`` when given (the ImageNet
    evaluation transform of torchvision's pretrained models: 256, 224 and the ImageNet statistics)."""

    def __init__(
        self,
        root: str | Path,
        size: int = 224,
        resize: int = 256,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"ImageFolder: root={str(root)!r} is not a folder")
        self.classes = sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.samples = [
            (f, k)
            for k, c in enumerate(self.classes)
            for f in sorted((self.root / c).iterdir())
            if f.suffix.lower() in _IMAGE_SUFFIXES
        ]
        if not self.samples:
            raise FileNotFoundError(f"ImageFolder: no images ({', '.join(_IMAGE_SUFFIXES)}) under {root}/<class>/")
        self.size, self.resize = size, resize
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        from PIL import Image  # Pillow comes with matplotlib

        path, label = self.samples[i]
        with Image.open(path) as f:
            rgb = f.convert("RGB")
        w, h = rgb.size
        scale = self.resize / min(w, h)
        rgb = rgb.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = rgb.size
        left, top = (w - self.size) // 2, (h - self.size) // 2
        rgb = rgb.crop((left, top, left + self.size, top + self.size))
        x = torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255.0
        if self.mean is not None and self.std is not None:
            x = (x - self.mean) / self.std
        return x, label


def write_image_folder(root: str | Path, images: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> None:
    """Write ``images`` (N, H, W, 3) uint8 as PNG files under ``root/<classes[label]>/``."""
    from PIL import Image

    for k, (img, label) in enumerate(zip(images, labels)):
        d = Path(root) / classes[int(label)]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(d / f"{k:06d}.png")
