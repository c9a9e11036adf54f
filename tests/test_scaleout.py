"""The campaign runner (bitlab.campaigns.runner): serial, a process pool, threads and a Dask
LocalCluster with two worker processes give the same frames bit for bit; subsets, extensions and
resumed campaigns (after SIGKILL) give the same rows as one uninterrupted serial run; a failing item is
named and the caller's model is left as it was."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor, nn

from bitlab.campaigns import (
    activation_sweep,
    ber_sweep,
    bit_census,
    bit_flip_attacks,
    naive_bit_census,
    sweep_t,
)
from bitlab.campaigns.runner import ItemError, read_record, record
from bitlab.formats import FP32
from bitlab.training.qlayers import slow_path
from bitlab.training.quant import quantize_model
from bitlab.zoo.models import resnet20, small_cnn

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
import scaleout_job  # noqa: E402
from zoo import regressor, resnet_bn, same_as, snapshot  # noqa: E402

distributed = pytest.importorskip("distributed")  # in the dev extras: pip install -e ".[dev]"

EXECUTORS = ["pool", "threads", "dask"]


@pytest.fixture(scope="module")
def executors():
    """A spawning process pool, a thread pool and a Dask LocalCluster (two single-threaded worker
    processes), each running torch with one thread like the serial reference (see the runner's notes)."""
    pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=torch.set_num_threads, initargs=(1,))
    threads = ThreadPoolExecutor(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, silence_logs=50
        )
    client = distributed.Client(cluster)
    client.run(sys.path.insert, 0, str(TESTS))  # the test models' modules, importable on the workers
    yield {"pool": pool, "threads": threads, "dask": client}
    client.close()
    cluster.close()
    pool.shutdown()
    threads.shutdown()


def _digits_like(n: int = 48, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g))]


def _mlp() -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = m(x).argmax(1)
    return m, [(x, y)]


def _resnet():
    torch.manual_seed(0)
    return resnet20(width=4).eval(), _digits_like()


def _cnn():
    torch.manual_seed(0)
    return small_cnn().eval(), _digits_like()


def _campaigns():
    """Name -> campaign(executor): every campaign of the runner, on models that are not all
    Sequential, with accuracy and a regression metric."""
    res, res_data = _resnet()
    reg, reg_data = regressor()
    cnn, cnn_data = _cnn()
    mlp, mlp_data = _mlp()
    bn, bn_data = resnet_bn()
    qm = quantize_model(mlp, mlp_data[0][0])
    quiet = dict(progress=False)
    return {
        "ber_sweep resnet20": lambda ex: ber_sweep(res, res_data, [1e-4, 1e-3], trials=3, executor=ex, **quiet),
        "ber_sweep mse": lambda ex: ber_sweep(
            reg, reg_data, [1e-3, 1e-2], trials=3, metric="mse", executor=ex, **quiet
        ),
        "sweep_t": lambda ex: sweep_t(mlp, mlp_data, [1.0, 8.0], FP32, [1e-2], trials=3, executor=ex, **quiet),
        "activation_sweep": lambda ex: activation_sweep(qm, mlp_data, [1e-2, 1e-1], trials=3, executor=ex, **quiet),
        "bit_census bounds": lambda ex: bit_census(cnn, cnn_data, bits=[30, 23], n_weights=6, executor=ex, **quiet),
        "bit_census resnet_bn": lambda ex: bit_census(bn, bn_data, bits=[30], n_weights=3, executor=ex, **quiet),
        "naive census mse": lambda ex: naive_bit_census(
            reg, reg_data, bits=[30, 22], n_weights=3, metric="mse", chunk=4, executor=ex, **quiet
        ),
        "bit_flip_attacks": lambda ex: bit_flip_attacks(mlp, mlp_data, seeds=3, budget=3, attack_batch=16, executor=ex),
    }


CAMPAIGNS = list(_campaigns())


@pytest.fixture(scope="module")
def serial():
    torch.set_num_threads(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {k: f(None) for k, f in _campaigns().items()}


@pytest.mark.parametrize("where", EXECUTORS)
@pytest.mark.parametrize("name", CAMPAIGNS)
def test_every_executor_gives_the_serial_frame_bit_for_bit(serial, executors, name, where):
    campaigns = _campaigns()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = campaigns[name](executors[where])
    want = serial[name]
    assert len(want) > 0
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    for k in ("clean", "metric", "paths", "num_classes"):
        assert got.attrs.get(k) == want.attrs.get(k)


def test_the_caller_model_is_untouched_by_every_executor(executors):
    m, data = _resnet()
    before = snapshot(m)
    for ex in [None, *executors.values()]:
        ber_sweep(m, data, [1e-2], trials=2, progress=False, executor=ex)
        assert same_as(m, before)


def test_a_longer_sweep_resumes_from_the_checkpoint_of_a_shorter_one(tmp_path, executors):
    m, data = _resnet()
    path = tmp_path / "sweep.jsonl"
    bers = [1e-4, 1e-3]
    short = ber_sweep(m, data, bers, trials=2, progress=False, checkpoint=path, executor=executors["dask"])
    long = ber_sweep(m, data, bers, trials=5, progress=False, checkpoint=path, executor=executors["pool"])
    fresh = ber_sweep(m, data, bers, trials=5, progress=False)
    assert short.attrs["from_checkpoint"] == 0 and long.attrs["from_checkpoint"] == 4
    pd.testing.assert_frame_equal(long, fresh, check_exact=True)
    pd.testing.assert_frame_equal(short, fresh[fresh.trial < 2].reset_index(drop=True), check_exact=True)
    again = ber_sweep(m, data, bers, trials=5, progress=False, checkpoint=path)
    assert again.attrs["from_checkpoint"] == 10
    pd.testing.assert_frame_equal(again, fresh, check_exact=True)
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 10  # header + each trial once: nothing duplicated


def test_a_split_campaign_gives_the_rows_of_the_whole(executors):
    m, data = _mlp()
    whole = ber_sweep(m, data, [1e-3, 1e-2], trials=6, seed=4, progress=False)
    part = ber_sweep(m, data, [1e-2], trials=3, seed=4, progress=False, executor=executors["dask"])
    want = whole[(whole.ber == 1e-2) & (whole.trial < 3)].reset_index(drop=True)
    pd.testing.assert_frame_equal(part, want, check_exact=True)


def test_a_campaign_killed_with_sigkill_resumes_to_the_uninterrupted_frame(tmp_path, executors):
    path = tmp_path / "killed.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS.parent), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, str(TESTS / "scaleout_job.py"), str(path)], env=env)
    total = len(scaleout_job.BERS) * scaleout_job.TRIALS
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and path.read_bytes().count(b"\n") >= 6:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the job finished before it was killed"
    saved = path.read_bytes().count(b"\n") - 1
    assert 5 <= saved < total
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a last line cut short by the kill is dropped with a warning
        resumed = scaleout_job.sweep(str(path), executor=executors["pool"])
    assert resumed.attrs["from_checkpoint"] >= 5
    pd.testing.assert_frame_equal(resumed, scaleout_job.sweep(None), check_exact=True)
    assert path.read_bytes().count(b"\n") - 1 == total  # every trial saved exactly once


class Fragile(nn.Module):
    """Raises once a flip has made a weight large: some trials of a sweep fail, others do not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        if not bool(self.fc.weight.abs().max() < 10):
            raise RuntimeError("weight out of range")
        return self.fc(x)


@pytest.mark.parametrize("where", [None, *EXECUTORS])
def test_a_failing_item_is_named_and_the_model_is_left_as_it_was(executors, where):
    torch.manual_seed(0)
    m = Fragile().eval()
    x = torch.randn(20, 6, generator=torch.Generator().manual_seed(2))
    before = snapshot(m)
    ex = None if where is None else executors[where]
    with pytest.raises(ItemError, match=r"campaign item \('', 0\.05, \d+\) failed: RuntimeError: weight out of range"):
        ber_sweep(m, [(x, torch.zeros(20, dtype=torch.long))], [0.05], trials=8, progress=False, executor=ex)
    assert same_as(m, before)


def _top(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).float()


def test_executors_are_checked_by_name(executors):
    m, data = _mlp()
    with pytest.raises(TypeError, match="executor: expected None"):
        ber_sweep(m, data, [1e-3], trials=1, progress=False, executor="dask")
    fork = ProcessPoolExecutor(1, mp_context=mp.get_context("fork"))
    with pytest.raises(ValueError, match="spawn"):
        ber_sweep(m, data, [1e-3], trials=1, progress=False, executor=fork)
    fork.shutdown()
    with pytest.raises(TypeError, match="lambdas"):
        ber_sweep(m, data, [1e-3], trials=1, progress=False, executor=executors["pool"], metric=lambda o, t: _top(o, t))
    # a module-level metric travels; a Dask client ships even a lambda (cloudpickle)
    a = ber_sweep(m, data, [1e-2], trials=2, progress=False, executor=executors["pool"], metric=_top)
    b = ber_sweep(m, data, [1e-2], trials=2, progress=False, metric=_top)
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    c = ber_sweep(m, data, [1e-2], trials=2, progress=False, executor=executors["dask"], metric=lambda o, t: _top(o, t))
    d = ber_sweep(m, data, [1e-2], trials=2, progress=False, metric=lambda o, t: _top(o, t))
    pd.testing.assert_frame_equal(c, d, check_exact=True)


def test_census_and_attacks_resume_from_checkpoints_written_by_workers(tmp_path, executors, serial):
    cnn, cnn_data = _cnn()
    path = tmp_path / "census.jsonl"
    first = bit_census(
        cnn, cnn_data, bits=[30, 23], n_weights=6, progress=False, checkpoint=path, executor=executors["dask"]
    )
    again = bit_census(cnn, cnn_data, bits=[30, 23], n_weights=6, progress=False, checkpoint=path)
    assert again.attrs["stats"]["from_checkpoint"] == len(first) > 0
    for got in (first, again):
        pd.testing.assert_frame_equal(got, serial["bit_census bounds"], check_exact=True)
    mlp, mlp_data = _mlp()
    path = tmp_path / "attacks.jsonl"
    two = bit_flip_attacks(
        mlp, mlp_data, seeds=[0, 2], budget=3, attack_batch=16, checkpoint=path, executor=executors["pool"]
    )
    three = bit_flip_attacks(mlp, mlp_data, seeds=3, budget=3, attack_batch=16, checkpoint=path)
    assert two.attrs["from_checkpoint"] == 0 and three.attrs["from_checkpoint"] == 2
    pd.testing.assert_frame_equal(three, serial["bit_flip_attacks"], check_exact=True)
    pd.testing.assert_frame_equal(
        two, serial["bit_flip_attacks"].query("seed != 1").reset_index(drop=True), check_exact=True
    )


scalars = st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats() | st.text(max_size=5)
values = st.recursive(scalars, lambda v: st.lists(v, max_size=3) | st.dictionaries(st.text(max_size=3), v, max_size=3))


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


@given(st.dictionaries(st.text(max_size=4), values, max_size=5))
def test_checkpoint_rows_round_trip_with_their_order_and_non_finite_floats(row):
    import json

    saved = json.loads(json.dumps(record(("", 0.5, 3), row), sort_keys=True, allow_nan=False))
    item, back = read_record(saved)
    assert item == ("", 0.5, 3) and _same(back, row)
    assert record((), {"a": "nan"})["row"] == {"object": [["a", "nan"]]}  # a string stays a string


def test_the_attention_slow_path_survives_overlapping_threads():
    """Two threads inside slow_path() at once: the first to leave must not switch the fast path back
    on under the other, and the last to leave restores the setting from before."""
    assert torch.backends.mha.get_fastpath_enabled()
    inside, leave_a, a_left = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def a():
        with slow_path():
            inside.set()
            leave_a.wait()
        a_left.set()

    t = threading.Thread(target=a)
    t.start()
    inside.wait()
    with slow_path():
        leave_a.set()
        a_left.wait()
        seen.append(torch.backends.mha.get_fastpath_enabled())
    t.join()
    assert seen == [False]
    assert torch.backends.mha.get_fastpath_enabled()


def _hit_max(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmax(1) == targets).float()


def _hit_min(outputs: Tensor, targets: Tensor) -> Tensor:
    return (outputs.argmin(1) == targets).float()


def test_the_fingerprint_sees_names_nested_code_settings_kept_as_attributes_and_no_addresses():
    from bitlab.campaigns.journal import campaign_key, describe
    from bitlab.metrics import Metric

    # the same bytecode calling another function: another key (a stale checkpoint must not be reused)
    assert describe(_hit_max) != describe(_hit_min)
    # a function with a comprehension, and a Metric: the same text in another process (no addresses)
    code = "import scaleout_job as j; from bitlab.campaigns.journal import describe; print(describe(j.fraction_above))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(TESTS), str(TESTS.parent)]))
    other = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == describe(scaleout_job.fraction_above)
    assert " at 0x" not in describe(Metric("hit", _hit_max))
    # a quantized model's activation scales are plain attributes: they change the key
    m, data = _mlp()
    a, b = quantize_model(m, data[0][0]), quantize_model(m, data[0][0] * 3)
    assert a.act_scales != b.act_scales
    assert campaign_key(a, data, ("s",)) != campaign_key(b, data, ("s",))


def test_bad_seeds_and_checkpoint_paths_are_refused_before_anything_runs(tmp_path):
    m, data = _mlp()
    for bad in (-1, 1.5, "0", True):
        with pytest.raises((ValueError, TypeError), match="seed"):
            ber_sweep(m, data, [1e-3], trials=1, seed=bad, progress=False)
    with pytest.raises(ValueError, match="seeds"):
        bit_flip_attacks(m, data, seeds=[-1], budget=1)
    with pytest.raises(ValueError, match="is a directory"):
        ber_sweep(m, data, [1e-3], trials=1, progress=False, checkpoint=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        ber_sweep(m, data, [1e-3], trials=1, progress=False, checkpoint=tmp_path / "no" / "such.jsonl")


def test_a_class_the_pool_workers_cannot_import_is_named(tmp_path, executors):
    (tmp_path / "vanishing_net.py").write_text("from torch import nn\n\nclass Net(nn.Sequential):\n    pass\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import vanishing_net

        torch.manual_seed(0)
        net = vanishing_net.Net(nn.Linear(6, 3)).eval()
    finally:
        sys.path.remove(str(tmp_path))
    (tmp_path / "vanishing_net.py").unlink()  # the workers cannot import it (as a class from __main__)
    _, data = _mlp()
    with pytest.raises(TypeError, match="importable module"):
        ber_sweep(net, data, [1e-2], trials=2, progress=False, executor=executors["pool"])


def test_local_cluster_starts_its_workers_quiet():
    """local_cluster's workers run without the 10-ms stack sampler, with its calmer tick (or the one
    ``config`` asks for) and without Dask's malloc trimming, also after a restart and when added by
    scale(); run after the module's default LocalCluster, whose nannies left Dask's trim value in
    os.environ."""
    from bitlab.campaigns.runner import QUIET, local_cluster

    def _worker_settings() -> tuple[object, object, object]:  # shipped by value, run on the worker
        import os

        import dask

        return (
            dask.config.get("distributed.worker.profile.enabled"),
            dask.config.get("distributed.admin.tick.interval"),
            os.environ.get("MALLOC_TRIM_THRESHOLD_"),
        )

    assert QUIET["distributed.worker.profile.enabled"] is False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = local_cluster(1, 1, config={"distributed.admin.tick.interval": "2s"}, silence_logs=50)
    with cluster, distributed.Client(cluster) as client:
        assert list(client.run(_worker_settings).values()) == [(False, "2s", None)]
        client.restart()  # a restarted worker keeps them
        assert list(client.run(_worker_settings).values()) == [(False, "2s", None)]
        cluster.scale(2)  # and so does one added later
        client.wait_for_workers(2, timeout=60)
        assert list(client.run(_worker_settings).values()) == [(False, "2s", None)] * 2
