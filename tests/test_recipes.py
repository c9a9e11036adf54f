"""The paper recipes (bitlab.training.recipes) and the pretrained ResNet-50 path (bitlab.zoo.pretrained):
He et al.'s augmentation against a brute-force search over crops, the learning-rate schedule step by
step, every recipe run for a few steps on the CPU, mixed precision and workers, safetensors round
trips against the format's bytes, and the errors that name what is allowed."""

from __future__ import annotations

import json
import struct
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import TensorDataset

import bitlab as bl
from bitlab.training import recipes
from bitlab.zoo import pretrained


def test_crop_flip_is_a_crop_of_the_padded_image_maybe_flipped():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 2, 6, 5, generator=g)  # distinct values: each crop is identified uniquely
    out = recipes.crop_flip(x, pad=2, generator=torch.Generator().manual_seed(1))
    assert out.shape == x.shape
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    flips = 0
    for n in range(len(x)):
        found = [
            (t, left, f)
            for t in range(5)
            for left in range(5)
            for f in (False, True)
            if torch.equal(
                out[n], (xp[n, :, t : t + 6, left : left + 5].flip(-1) if f else xp[n, :, t : t + 6, left : left + 5])
            )
        ]
        assert len(found) == 1, n
        flips += found[0][2]
    assert 0 < flips < len(x)
    again = recipes.crop_flip(x, pad=2, generator=torch.Generator().manual_seed(1))
    assert torch.equal(out, again)


def _blobs(n: int, shape: tuple[int, ...], classes: int = 10, seed: int = 0) -> TensorDataset:
    """Faint noise with one bright pixel per class (pixel ``y``): learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.rand(n, *shape, generator=g) * 0.1
    x.view(n, -1)[torch.arange(n), y] += 1.0
    return TensorDataset(x, y)


def test_learning_rate_follows_the_milestones_step_by_step():
    rec = bl.train.recipe("resnet20-cifar10", iterations=6, milestones=(2, 4), batch_size=8, augment=None)
    torch.manual_seed(0)
    model = bl.models.mlp(3 * 32 * 32, (8,), 10)
    rows = bl.train.train_recipe(model, _blobs(8, (3, 32, 32)), rec, progress=False)
    assert rows["steps"].tolist() == [1, 2, 3, 4, 5, 6]
    assert rows["lr"].tolist() == pytest.approx([0.1, 0.01, 0.01, 0.001, 0.001, 0.001])
    assert not model.training


def test_a_recipe_learns_and_reports_validation_accuracy():
    rec = bl.train.recipe(
        "mlp-mnist",
        iterations=100,
        lr=1e-2,
        milestones=(),
        batch_size=32,
        model_kwargs=(("in_features", 64), ("hidden", (16,))),
    )
    torch.manual_seed(0)
    model = recipes.build(rec)
    data = _blobs(320, (1, 8, 8))
    rows = bl.train.train_recipe(model, data, rec, val=_blobs(100, (1, 8, 8), seed=1), progress=False)
    assert rows["loss"].iloc[-1] < rows["loss"].iloc[0] and rows["val_acc"].iloc[-1] > 0.5


@pytest.mark.parametrize("name", sorted(recipes.RECIPES))
def test_every_recipe_runs_a_few_steps_on_the_cpu(name):
    rec = bl.train.recipe(name)
    assert rec.source and 0.9 < rec.expected_accuracy < 1 and rec.gpu_minutes > 0 and name in rec.describe()
    shape = (3, 32, 32) if rec.data == "cifar10" else (1, 28, 28)
    torch.manual_seed(0)
    model = recipes.build(rec)
    before = [p.detach().clone() for p in model.parameters()]
    rows = bl.train.train_recipe(model, _blobs(2 * rec.batch_size, shape), rec, max_steps=2, progress=False)
    assert rows["steps"].iloc[-1] == 2 and np.isfinite(rows["loss"]).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_he_et_al_schedule_in_epochs_and_resnet_sizes():
    r20, r56 = bl.train.recipe("resnet20-cifar10"), bl.train.recipe("resnet56-cifar10")
    assert r20.epochs(45_000) == pytest.approx(182.04, abs=0.01)  # 64k iterations of 128 on a 45k split
    assert (r20.expected_accuracy, r56.expected_accuracy) == pytest.approx((0.9125, 0.9303))
    sizes = [bl.models.num_params(recipes.build(r)) for r in (r20, r56)]
    assert sizes == [269_722, 853_018]  # He et al. 2016 Table 6: 0.27M and 0.85M


def test_mixed_precision_and_workers_on_the_cpu():
    rec = bl.train.recipe("small-cnn-mnist", batch_size=16)
    torch.manual_seed(0)
    model = recipes.build(rec)
    rows = bl.train.train_recipe(model, _blobs(32, (1, 28, 28)), rec, amp=True, workers=1, max_steps=3, progress=False)
    assert rows["steps"].iloc[-1] == 3 and np.isfinite(rows["loss"]).all()
    assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast leaves the weights in float32


def test_devices_and_bad_input_are_named():
    assert bl.train.pick_device() == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert bl.train.pick_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda.is_available"):
            bl.train.pick_device("cuda")
    with pytest.raises(ValueError, match="allowed"):
        bl.train.recipe("resnet18-imagenet")
    with pytest.raises(TypeError, match="Recipe"):
        bl.train.train_recipe(bl.models.mlp(), _blobs(4, (1, 8, 8)), "mlp-mnist")
    with pytest.raises(ValueError, match="augment"):
        bl.train.train_recipe(bl.models.mlp(), _blobs(4, (1, 8, 8)), bl.train.recipe("mlp-mnist", augment="mixup"))


DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8, torch.bool]


@settings(max_examples=30, deadline=None)
@given(
    shapes=st.lists(st.lists(st.integers(0, 4), max_size=3), min_size=1, max_size=4),
    kinds=st.lists(st.sampled_from(range(len(DTYPES))), min_size=4, max_size=4),
    seed=st.integers(0, 2**16),
)
def test_safetensors_round_trip_and_layout(tmp_path_factory, shapes, kinds, seed):
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for k, shape in enumerate(shapes):
        dtype = DTYPES[kinds[k % len(kinds)]]
        t = (
            torch.randint(0, 200, shape, generator=g)
            if not dtype.is_floating_point
            else torch.randn(shape, generator=g)
        )
        tensors[f"t{k}.weight"] = t.to(dtype)
    path = pretrained.save_safetensors(tensors, tmp_path_factory.mktemp("st") / "w.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert n % 8 == 0 and set(header) == set(tensors)
    for name, t in tensors.items():  # each tensor's bytes, little-endian, at its offsets
        lo, hi = header[name]["data_offsets"]
        expect = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        assert raw[8 + n + lo : 8 + n + hi] == expect
    back = pretrained.load_safetensors(path)
    assert list(back) == list(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        if t.numel():
            assert torch.equal(back[name].view(-1).view(torch.uint8), t.contiguous().view(-1).view(torch.uint8))


def test_resnet50_has_torchvisions_size_and_names_and_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = pretrained.resnet50()
    assert bl.models.num_params(model) == 25_557_032  # torchvision's ResNet-50
    state = model.state_dict()
    for key in (
        "conv1.weight",
        "layer1.0.downsample.0.weight",
        "layer3.5.bn3.running_var",
        "layer4.2.conv2.weight",
        "fc.bias",
    ):
        assert key in state
    path = pretrained.save_safetensors(state, tmp_path / "r50.safetensors")
    loaded = pretrained.pretrained_resnet50(path)
    assert not loaded.training
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in state.items())
    with torch.no_grad():
        out = loaded(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1000)
    small = pretrained.save_safetensors(
        {k: v for k, v in state.items() if k != "fc.bias"}, tmp_path / "bad.safetensors"
    )
    with pytest.raises(RuntimeError, match="fc.bias"):
        pretrained.pretrained_resnet50(small)


def test_pretrained_paths_refuse_pickles_and_name_torchvision(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="never unpickles"):
        pretrained.pretrained_resnet50(tmp_path / "resnet50.pth")
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(ImportError, match="safetensors"):
        pretrained.pretrained_resnet50("torchvision")
    (tmp_path / "junk.safetensors").write_bytes(struct.pack("<Q", 4) + b"\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match="not a safetensors file"):
        pretrained.load_safetensors(tmp_path / "junk.safetensors")


def test_paper_plan_multiplies_runs_cost_and_the_recipes_minutes():
    r20 = recipes.recipe("resnet20-cifar10")
    half = recipes.recipe("resnet20-cifar10", name="resnet20-short", iterations=r20.iterations // 2)
    assert half.name == "resnet20-short" and half.gpu_minutes == pytest.approx(r20.gpu_minutes / 2)
    assert recipes.recipe("resnet20-cifar10", lr=0.05).gpu_minutes == r20.gpu_minutes  # only iterations scale it
    plan = recipes.paper_plan([("SGD", "resnet20-cifar10", 3, 1), ("SAM", half, 2, 2.0)])
    minutes = plan["GPU minutes (estimate)"].tolist()
    assert minutes[:2] == pytest.approx([3 * r20.gpu_minutes, 2 * 2.0 * r20.gpu_minutes / 2], abs=0.05)
    assert plan["trains"].iloc[-1] == "total" and minutes[-1] == pytest.approx(sum(minutes[:2]))
    assert plan["recipe"].tolist()[:2] == ["resnet20-cifar10", "resnet20-short"]
    with pytest.raises(ValueError, match="runs must be an int >= 1"):
        recipes.paper_plan([("x", "resnet20-cifar10", 0, 1)])
    with pytest.raises(ValueError, match="allowed"):
        recipes.paper_plan([("x", "resnet-9000", 1, 1)])


def test_paper_data_in_smoke_mode_goes_through_the_real_readers():
    from bitlab.zoo.scale import SMOKE_VAL_SIZE, imagenet_resnet50, paper_data
    from bitlab.zoo.synthetic import SMOKE_SIZES

    for kind, shape in (("mnist", (1, 28, 28)), ("cifar10", (3, 32, 32))):
        s = paper_data(kind, smoke=True)
        assert s.input_shape == shape and len(s.val) == SMOKE_VAL_SIZE
        assert len(s.train) + len(s.val) == SMOKE_SIZES[kind][0] and len(s.test) == SMOKE_SIZES[kind][1]
    with pytest.raises(ValueError, match="allowed"):
        paper_data("svhn", smoke=True)
    model, val, note = imagenet_resnet50(smoke=True)
    assert not model.training and note.startswith("SMOKE: ResNet-50 with random weights")
    assert len(val) == SMOKE_SIZES["imagenet"][1] and val[0][0].shape == (3, 224, 224)
    assert sum(p.numel() for p in model.parameters()) == 25_557_032


def test_a_shorter_recipe_keeps_the_shape_of_its_schedule():
    r20 = recipes.recipe("resnet20-cifar10")
    short = recipes.recipe("resnet20-cifar10", iterations=200)
    assert short.milestones == (100, 150) and r20.milestones == (32_000, 48_000)
    assert recipes.recipe("resnet20-cifar10", iterations=200, milestones=(10,)).milestones == (10,)


def test_the_smoke_resnet50_leaves_the_callers_generator_alone():
    from bitlab.zoo.scale import imagenet_resnet50

    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    imagenet_resnet50(smoke=True)
    assert torch.equal(torch.rand(3), want)
