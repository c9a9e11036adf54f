"""The data sets' own files (bitlab.zoo.files), read without torchvision or pickle: idx files against
bytes packed here with struct, round trips of every writer, CIFAR-10's record layout, ImageFolder
crops against the pixels written, and the errors that name what is missing."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from bitlab.zoo import data, files
from bitlab.zoo.synthetic import SMOKE_SIZES


def _pack_idx(arr: np.ndarray, code: int = 0x08, fmt: str = "B") -> bytes:
    """An idx file's bytes, packed value by value with struct (big-endian), independently of the reader."""
    head = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return head + struct.pack(f">{arr.size}{fmt}", *arr.reshape(-1).tolist())


@settings(max_examples=40, deadline=None)
@given(arr=arrays(np.uint8, st.lists(st.integers(1, 5), min_size=1, max_size=4).map(tuple)), gz=st.booleans())
def test_idx_round_trip_and_struct_reference(tmp_path_factory, arr, gz):
    d = tmp_path_factory.mktemp("idx")
    path = files.write_idx(d / ("a.idx.gz" if gz else "a.idx"), arr)
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    assert raw == _pack_idx(arr)
    back = files.read_idx(path)
    assert back.dtype == np.uint8 and back.shape == arr.shape and np.array_equal(back, arr)


def test_idx_other_types_and_bad_files(tmp_path):
    ints = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int64)
    (tmp_path / "i.idx").write_bytes(_pack_idx(ints, 0x0C, "i"))
    got = files.read_idx(tmp_path / "i.idx")
    assert got.tolist() == ints.tolist() and got.dtype.byteorder in ("=", "<", "|")
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(ValueError, match="not an idx file"):
        files.read_idx(tmp_path / "bad")
    (tmp_path / "short").write_bytes(_pack_idx(np.zeros((2, 3), np.uint8))[:-1])
    with pytest.raises(ValueError, match="bytes of data for shape"):
        files.read_idx(tmp_path / "short")
    with pytest.raises(ValueError, match="uint8"):
        files.write_idx(tmp_path / "f.idx", np.zeros(3, np.float32))


def _digits_like(n: int, shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8), np.arange(n) % 10


@pytest.mark.parametrize("layout", ["root", "torchvision"])
def test_mnist_from_its_idx_files(tmp_path, layout):
    root = tmp_path if layout == "root" else tmp_path / "MNIST" / "raw"
    xtr, ytr = _digits_like(60, (28, 28), 0)
    xte, yte = _digits_like(20, (28, 28), 1)
    files.write_mnist(root, "train", xtr, ytr, gz=layout == "root")
    files.write_mnist(root, "test", xte, yte, gz=layout == "root")
    x, y = files.read_mnist(tmp_path, "test")
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x[:, 0], torch.from_numpy(xte).float() / 255) and y.tolist() == yte.tolist()
    s = data.mnist(root=tmp_path, val_size=20)
    assert (len(s.train), len(s.val), len(s.test)) == (40, 20, 20) and s.input_shape == (1, 28, 28)
    assert np.bincount(s.val.tensors[1].numpy(), minlength=10).tolist() == [2] * 10


def test_mnist_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
        files.read_mnist(tmp_path, "train")
    with pytest.raises(ValueError, match="allowed 'train' or 'test'"):
        files.read_mnist(tmp_path, "val")


def test_cifar10_binary_records(tmp_path):
    xtr, ytr = _digits_like(43, (3, 32, 32), 2)
    xte, yte = _digits_like(7, (3, 32, 32), 3)
    files.write_cifar10(tmp_path, "train", xtr, ytr)
    files.write_cifar10(tmp_path, "test", xte, yte)
    d = tmp_path / "cifar-10-batches-bin"
    assert sorted(p.name for p in d.iterdir()) == sorted(files.CIFAR10_FILES["train"] + files.CIFAR10_FILES["test"])
    raw = (d / "test_batch.bin").read_bytes()
    i, c, h, w = 4, 2, 17, 30  # record i: one label byte, then the red, green and blue planes row by row
    assert raw[i * 3073] == yte[i] and raw[i * 3073 + 1 + c * 1024 + h * 32 + w] == xte[i, c, h, w]
    x, y = files.read_cifar10(tmp_path, "train")
    assert torch.equal(x, torch.from_numpy(xtr).float() / 255) and y.tolist() == ytr.tolist()
    s = data.cifar10(root=tmp_path, val_size=10)
    assert len(s.train) + len(s.val) == 43 and len(s.val) >= 9 and len(s.test) == 7 and s.input_shape == (3, 32, 32)
    with pytest.raises(ValueError, match="val_size=3: too few"):
        data.cifar10(root=tmp_path, val_size=3)


def test_cifar10_python_version_is_refused_by_name(tmp_path):
    (tmp_path / "cifar-10-batches-py").mkdir()
    with pytest.raises(FileNotFoundError, match="pickles"):
        files.read_cifar10(tmp_path, "test")
    with pytest.raises(FileNotFoundError, match="test_batch.bin"):
        files.read_cifar10(tmp_path / "elsewhere", "test")
    with pytest.raises(ValueError, match="records are"):
        files.write_cifar10(tmp_path, "test", np.zeros((2, 32, 32, 3), np.uint8), np.zeros(2))


def test_image_folder_crops_and_normalizes(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 20, 20, 3), dtype=np.uint8)
    labels = np.array([1, 0, 1, 2, 0])
    files.write_image_folder(tmp_path, images, labels, ["cat", "dog", "eel"])
    ds = files.ImageFolder(tmp_path, size=16, resize=20)  # no resizing: a pure 16x16 center crop
    assert ds.classes == ["cat", "dog", "eel"] and len(ds) == 5
    order = sorted(range(5), key=lambda k: (labels[k], k))  # by class, then by file name
    for j, k in enumerate(order):
        x, label = ds[j]
        assert label == labels[k] and x.shape == (3, 16, 16)
        assert torch.equal(x, torch.from_numpy(images[k, 2:18, 2:18]).permute(2, 0, 1).float() / 255)
    norm = files.ImageFolder(tmp_path, size=16, resize=20, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert torch.allclose(norm[0][0], (ds[0][0] - 0.5) / 0.25)
    big = data.imagenet_val(tmp_path)[0][0]
    assert big.shape == (3, 224, 224)
    with pytest.raises(FileNotFoundError, match="no images"):
        files.ImageFolder(_empty(tmp_path))
    with pytest.raises(FileNotFoundError, match="not a folder"):
        files.ImageFolder(tmp_path / "missing")


def _empty(tmp_path):
    d = tmp_path / "empty" / "class"
    d.mkdir(parents=True)
    return tmp_path / "empty"


@pytest.mark.parametrize("kind", ["mnist", "cifar10", "imagenet"])
def test_smoke_data_is_written_in_the_real_formats_and_learnable(kind):
    root = data.write_smoke_data(kind)
    if kind == "imagenet":
        ds = data.imagenet_val(root)
        assert len(ds) == SMOKE_SIZES["imagenet"][1] and ds[0][0].shape == (3, 224, 224) and len(ds.classes) == 10
        return
    s = data.mnist(root, val_size=100) if kind == "mnist" else data.cifar10(root, val_size=100)
    n_train, n_test = SMOKE_SIZES[kind]
    assert (len(s.train), len(s.val), len(s.test)) == (n_train - 100, 100, n_test)
    x, y = s.train.tensors
    means = torch.stack([x[y == k].mean(0) for k in range(10)])  # each class has its own bright square
    assert (means.flatten(1).argmax(1).unique().numel()) == 10
    with pytest.raises(ValueError, match="allowed"):
        data.write_smoke_data("svhn")
