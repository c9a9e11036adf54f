"""The census checkpoint (JSON lines, append-only, checksummed): resume, refusal of damaged or
foreign files, truncated last lines, exact float round trip."""

import copy
import json
import random

import pandas as pd
import pytest
import torch

from bitlab.campaigns.census import bit_census
from bitlab.campaigns.census.checkpoint import FORMAT, CheckpointFile, configuration
from bitlab.codecs import RangeNulling, WeightScaling
from bitlab.formats import Int
from bitlab.zoo.models import mlp


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = mlp(8, (6,), 3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, torch.randint(0, 3, (30,), generator=g))
    kw = dict(bits="exponent", n_weights=3, seed=1, progress=False, batch_flips=8)
    return model, data, kw, bit_census(model, data, **kw)


def test_file_layout_and_resume(setup, tmp_path):
    model, data, kw, straight = setup
    path = tmp_path / "c.jsonl"
    first = bit_census(model, data, checkpoint=path, **kw)
    pd.testing.assert_frame_equal(straight, first, check_exact=True)
    lines = path.read_text().splitlines()
    head = json.loads(lines[0])
    assert head["format"] == FORMAT and head["version"] == 1 and len(head["key"]) == 64
    chunk = json.loads(lines[1])
    assert set(chunk) == {"param", "start", "step", "accuracies", "sha256"}
    again = bit_census(model, data, checkpoint=path, **kw)
    pd.testing.assert_frame_equal(straight, again, check_exact=True)
    assert again.attrs["stats"]["from_checkpoint"] == len(straight)


def test_flipped_byte_is_refused(setup, tmp_path):
    model, data, kw, _ = setup
    path = tmp_path / "c.jsonl"
    bit_census(model, data, checkpoint=path, **kw)
    raw = bytearray(path.read_bytes())
    at = raw.index(b'"accuracies":[') + len(b'"accuracies":[') + 2  # a digit of the first accuracy
    raw[at] = ord("1") if raw[at] != ord("1") else ord("2")
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum") as err:
        bit_census(model, data, checkpoint=path, **kw)
    assert str(path) in str(err.value)


def test_malformed_line_is_refused(setup, tmp_path):
    model, data, kw, _ = setup
    path = tmp_path / "c.jsonl"
    bit_census(model, data, checkpoint=path, **kw)
    lines = path.read_text().splitlines(keepends=True)
    lines[1] = lines[1][:10] + "\n"
    path.write_text("".join(lines))
    with pytest.raises(ValueError, match="JSON"):
        bit_census(model, data, checkpoint=path, **kw)


def test_foreign_key_and_bad_header_are_refused(setup, tmp_path):
    model, data, kw, _ = setup
    path = tmp_path / "c.jsonl"
    bit_census(model, data, checkpoint=path, **{**kw, "seed": 2})
    with pytest.raises(ValueError, match="different census"):
        bit_census(model, data, checkpoint=path, **kw)
    path.write_text('{"format": "something else", "version": 1, "key": "x"}\n')
    with pytest.raises(ValueError, match="header"):
        bit_census(model, data, checkpoint=path, **kw)
    path.write_bytes(b"\x80\x04binary pickle\n")
    with pytest.raises(ValueError, match=str(path).replace("\\", "\\\\")):
        bit_census(model, data, checkpoint=path, **kw)


def test_truncated_last_line_is_dropped_not_trusted(setup, tmp_path):
    model, data, kw, straight = setup
    path = tmp_path / "c.jsonl"
    bit_census(model, data, checkpoint=path, **kw)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 7])  # a crash mid-write of the last chunk
    with pytest.warns(UserWarning, match="unfinished"):
        resumed = bit_census(model, data, checkpoint=path, **kw)
    pd.testing.assert_frame_equal(straight, resumed, check_exact=True)
    assert resumed.attrs["stats"]["from_checkpoint"] < len(straight)
    assert path.read_bytes() == raw  # the dropped chunk was computed and written again


def test_floats_round_trip_exactly(tmp_path):
    rng = random.Random(0)
    values = [rng.random() for _ in range(500)] + [k / 359 for k in range(360)] + [5e-324, 1 / 3, 0.1]
    ckpt = CheckpointFile(tmp_path / "f.jsonl", "k")
    ckpt.load()
    ckpt.append(("w", 0, len(values)), values)
    back = CheckpointFile(tmp_path / "f.jsonl", "k").load()[("w", 0, len(values))]
    assert [v.hex() for v in back] == [v.hex() for v in values]


def _bn_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.BatchNorm1d(6), torch.nn.ReLU(), torch.nn.Linear(6, 3))


def _changed_architecture(m):
    m = copy.deepcopy(m)
    m[2] = torch.nn.Tanh()  # no parameter changes: only the architecture
    return m


def _changed_buffer(m):
    m = copy.deepcopy(m)
    m[1].running_mean.add_(0.5)  # same parameters, other BatchNorm statistics
    return m


@pytest.mark.parametrize(
    "first, second",
    [
        ({"model": "arch"}, {}),
        ({"model": "buffer"}, {}),
        ({"codec": RangeNulling(0)}, {"codec": RangeNulling(5)}),
        ({"codec": WeightScaling(1.0)}, {"codec": WeightScaling(1.0000001)}),
        ({"fmt": Int(8, True, axis=0)}, {"fmt": Int(8, True, axis=1)}),
    ],
    ids=["architecture", "buffer", "RangeNulling margin", "WeightScaling t", "Int axis"],
)
def test_resume_with_anything_that_changes_the_answer_is_refused(first, second, tmp_path):
    """Issue 15: each of these used to resume with the other census's accuracies."""
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(20, 8, generator=g), torch.randint(0, 3, (20,), generator=g))
    base = _bn_model().eval()
    variants = {"arch": _changed_architecture(base), "buffer": _changed_buffer(base)}
    kw = dict(bits=[6, 5] if "fmt" in first else [30, 29], n_weights=2, params="0.weight", progress=False)
    path = tmp_path / "c.jsonl"
    model_a = variants.get(first.pop("model", None), base)
    bit_census(model_a, data, checkpoint=path, **kw, **first)
    with pytest.raises(ValueError, match="different census"):
        bit_census(base, data, checkpoint=path, **kw, **second)
    fresh = bit_census(base, data, **kw, **second)  # and a fresh run of the second one is what it is
    assert len(fresh) == 4


def test_configuration_names_every_attribute():
    assert configuration(RangeNulling(0)) != configuration(RangeNulling(5))
    assert configuration(Int(8, True, axis=0)) != configuration(Int(8, True, axis=1))
    assert configuration(WeightScaling(1.0)) != configuration(WeightScaling(1.0000001))
    assert configuration(RangeNulling(2)) == configuration(RangeNulling(2))
