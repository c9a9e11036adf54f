"""What a store may hold: buffers (BatchNorm statistics), non-contiguous and channels-last weights, a
tied weight under any of its names; and training inside corrupted(), which is undone and refused."""

import struct

import pytest
import torch
from torch import nn
from zoo import ZOO, forward, same_as, snapshot

import bitlab as bl
from bitlab.inject import Store
from bitlab.params import select_tensors


def f32_flip(v: float, bit: int) -> float:
    (word,) = struct.unpack("<I", struct.pack("<f", v))
    return struct.unpack("<f", struct.pack("<I", word ^ (1 << bit)))[0]


def test_a_buffer_can_be_a_fault_target():
    model, _ = ZOO["resnet_bn"]()
    snap = snapshot(model)
    rm = model.bn1.running_mean
    v = rm[2].item()
    with bl.corrupted(model, bl.SingleBitFlip("bn1.running_mean", 2, 30), params="bn1.running_mean") as r:
        assert rm[2].item() == f32_flip(v, 30)
        assert torch.equal(rm[:2], snap["state"]["bn1.running_mean"][:2])
    assert r.names == ["bn1.running_mean"] and r.flips == 1
    assert same_as(model, snap)


def test_globs_reach_float_buffers_and_skip_integer_ones():
    model, _ = ZOO["resnet_bn"]()
    names = [n for n, _ in select_tensors(model, "bn*.running_*")]
    assert names == [f"bn{i}.running_{s}" for i in range(3) for s in ("mean", "var")]
    assert [n for n, _ in select_tensors(model, "bn1.*")] == [
        "bn1.weight",
        "bn1.bias",
        "bn1.running_mean",
        "bn1.running_var",
    ]
    assert [n for n, _ in select_tensors(model, None)] == [n for n, _ in model.named_parameters()]
    with pytest.raises(TypeError, match=r"'bn1.num_batches_tracked' has dtype torch.int64"):
        select_tensors(model, ["bn1.weight", "bn1.num_batches_tracked"])
    with pytest.raises(ValueError, match=r"\['nope\*'\] match no parameter or buffer"):
        select_tensors(model, ["bn1.weight", "nope*"])
    n = sum(b.numel() for name, b in model.named_buffers() if "running" in name)
    with bl.corrupted(model, bl.BitErrorRate(1.0), params="*.running_*") as r:
        pass
    assert r.flips == 32 * n


@pytest.mark.parametrize("fmt", [None, bl.FP16, bl.Int(8)])
def test_a_non_contiguous_weight_is_flipped_in_logical_order_and_restored(fmt):
    torch.manual_seed(0)
    m = nn.Linear(5, 4)
    m.weight.data = m.weight.data.t().contiguous().t()
    assert not m.weight.is_contiguous()
    snap, w = snapshot(m), m.weight.detach().clone()
    clean = w if fmt is None else fmt.roundtrip(w.reshape(-1)).view_as(w)
    bit = 2 if fmt is not None and fmt.width == 8 else 14
    with bl.corrupted(m, bl.SingleBitFlip("weight", (3, 1), bit), fmt=fmt, params="weight"):
        now = m.weight.detach().clone()
    changed = (now != clean).nonzero().tolist()
    assert changed == [[3, 1]]
    if fmt is None:
        assert now[3, 1].item() == f32_flip(w[3, 1].item(), bit)
    assert same_as(m, snap) and m.weight.stride() == (1, 4)
    with bl.corrupted(m, bl.BitErrorRate(0.2), fmt=fmt, generator=torch.Generator().manual_seed(1)):
        m(torch.randn(2, 5))
    assert same_as(m, snap)


@pytest.mark.parametrize("fmt", [None, bl.Int(8, per_channel=True)])
def test_channels_last_convolutions(fmt):
    model, data = ZOO["resnet_bn"]()
    model = model.to(memory_format=torch.channels_last)
    w = model.conv1.weight
    assert not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last)
    snap, before = snapshot(model), w.detach().clone()
    clean = before if fmt is None else fmt.roundtrip(before).view_as(before)
    with bl.corrupted(model, bl.SingleBitFlip("conv1.weight", (5, 2, 1, 0), 6), fmt=fmt, params="conv1.weight"):
        diff = (w.detach() != clean).nonzero().tolist()
        forward(model, data[0][0])
    assert diff == [[5, 2, 1, 0]]
    with bl.corrupted(model, bl.BitFlips(50), fmt=fmt, generator=torch.Generator().manual_seed(0)):
        forward(model, data[0][0])
    assert same_as(model, snap) and w.is_contiguous(memory_format=torch.channels_last)


def test_a_tied_weight_under_either_name():
    model, _ = ZOO["tied"]()
    snap = snapshot(model)
    n = model.embed.weight.numel()
    for name in ("out.weight", "embed.weight"):
        with bl.corrupted(model, bl.BitErrorRate(1.0), params=name) as r:
            assert torch.equal(model.out.weight, model.embed.weight)
        assert r.names == [name] and r.flips == 32 * n
    with bl.corrupted(model, bl.BitErrorRate(1.0), params=["embed.weight", "out.weight"]) as r:
        pass
    assert r.names == ["embed.weight"] and r.flips == 32 * n  # stored once
    v = model.embed.weight[1, 2].item()
    with bl.corrupted(model, bl.SingleBitFlip("out.weight", (1, 2), 29)) as r:  # the alias of a stored name
        assert model.embed.weight[1, 2].item() == f32_flip(v, 29)
    assert r.per_param == {"embed.weight": 1, "mix.weight": 0, "mix.bias": 0}
    assert same_as(model, snap)


def test_writes_through_data_leave_the_version_counter_alone():
    """What the training check relies on: in-place updates bump ``_version``, writes through ``.data`` do not."""
    p = nn.Parameter(torch.zeros(3))
    v = p._version
    p.data.view(torch.int32)[0] ^= 1
    assert p._version == v
    with torch.no_grad():
        p.add_(1.0)
    assert p._version > v


def setup(kind):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    fmt = None
    if kind == "fp16":
        model = model.half()
    if kind == "int8":
        fmt = bl.Int(8)
    x = torch.randn(16, 6).to(next(model.parameters()).dtype)
    y = torch.randint(0, 3, (16,))
    return model, fmt, x, y


def loss_of(model, x, y):
    return nn.functional.cross_entropy(model(x).float(), y)


OPTIMIZERS = {"sgd": lambda ps: torch.optim.SGD(ps, lr=1.0), "adam": lambda ps: torch.optim.Adam(ps, lr=0.01)}


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_an_optimizer_step_inside_is_undone_and_refused(kind, opt):
    model, fmt, x, y = setup(kind)
    optimizer = OPTIMIZERS[opt](model.parameters())
    snap = snapshot(model)
    with pytest.raises(
        RuntimeError, match=r"\['0.weight', '0.bias', '2.weight', '2.bias'\] were modified.*discarded.*backward"
    ):
        with bl.corrupted(model, bl.BitFlips(3), fmt=fmt, generator=torch.Generator().manual_seed(0)):
            loss_of(model, x, y).backward()
            optimizer.step()
    assert same_as(model, snap)


@pytest.mark.parametrize("kind", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_the_fault_aware_training_recipe_updates_every_weight(kind, opt):
    model, fmt, x, y = setup(kind)
    optimizer = OPTIMIZERS[opt](model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    for step in range(2):
        optimizer.zero_grad()
        with bl.corrupted(model, bl.BitFlips(3), fmt=fmt, generator=torch.Generator().manual_seed(step)):
            loss_of(model, x, y).backward()
        optimizer.step()
    assert all(bool((p.detach() != b).all()) for p, b in zip(model.parameters(), before))


def test_a_store_refuses_weights_changed_since_it_was_built_and_load_state_dict_inside():
    model, _, x, y = setup("fp32")
    store = Store(model, bl.Int(8))
    with store.corrupted(bl.BitFlips(1)):
        loss_of(model, x, y).backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    with pytest.raises(RuntimeError, match=r"\['0.weight'.*changed since this Store was built"):
        with store.corrupted(bl.BitFlips(1)):
            pass
    snap, state = snapshot(model), {k: v.clone() + 1 for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="modified inside corrupted"):
        with bl.corrupted(model, bl.BitFlips(1), params="2.*"):
            model.load_state_dict(state)
    assert same_as(model, snapshot(model)) and torch.equal(model[2].weight, snap["state"]["2.weight"])
    assert torch.equal(model[0].weight, state["0.weight"])  # not stored, so not restored


def test_new_storage_inside_is_undone_and_a_raising_block_keeps_its_own_error():
    model, _, x, y = setup("fp32")
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match=r"\['2.weight'\] were modified"):
        with bl.corrupted(model, bl.BitFlips(2)):
            model[2].weight.data = torch.zeros(3, 5)
    assert same_as(model, snap)
    with pytest.raises(ValueError, match="mine"):
        with bl.corrupted(model, bl.BitFlips(2), fmt=bl.FP16):
            loss_of(model, x, y).backward()
            torch.optim.SGD(model.parameters(), lr=0.1).step()
            raise ValueError("mine")
    assert same_as(model, snap)
