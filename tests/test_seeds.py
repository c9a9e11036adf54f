"""Counter-based campaign randomness: a trial's faults depend on (seed, point, trial) only, so subsets,
extensions, reordering and single rates give the same rows as the full sweep."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from bitlab.campaigns import activation_sweep, ber_sweep
from bitlab.campaigns.seeds import trial_generator, trial_seed
from bitlab.training.quant import quantize_model


def _setup():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3)).eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 6, generator=g)
    return m, [(x, m(x).argmax(1).detach())]


M, D = _setup()
KEY = ["ber", "trial"]


def test_a_longer_sweep_keeps_the_rows_of_a_shorter_one_and_a_rate_alone_its_rows():
    full = ber_sweep(M, D, [1e-3, 1e-2], trials=6, seed=7, progress=False)
    short = ber_sweep(M, D, [1e-3, 1e-2], trials=3, seed=7, progress=False)
    alone = ber_sweep(M, D, [1e-2], trials=6, seed=7, progress=False)
    rev = ber_sweep(M, D, [1e-2, 1e-3], trials=6, seed=7, progress=False)
    pick = full[full.trial < 3].reset_index(drop=True)
    pd.testing.assert_frame_equal(short, pick)
    pd.testing.assert_frame_equal(alone, full[full.ber == 1e-2].reset_index(drop=True))
    srt = rev.sort_values(KEY).reset_index(drop=True)
    pd.testing.assert_frame_equal(srt, full.sort_values(KEY).reset_index(drop=True))
    assert full["flips"].nunique() > 1  # the trials are not all the same draw
    other = ber_sweep(M, D, [1e-3, 1e-2], trials=6, seed=8, progress=False)
    assert not other["flips"].equals(full["flips"])


def test_activation_trials_are_counter_based_too():
    qm = quantize_model(M, D[0][0])
    full = activation_sweep(qm, D, [0.01], trials=4, seed=3, progress=False)
    short = activation_sweep(qm, D, [0.01], trials=2, seed=3, progress=False)
    pd.testing.assert_frame_equal(short, full[full.trial < 2].reset_index(drop=True))


@given(st.integers(0, 2**32), st.floats(0, 1), st.integers(0, 10**6))
def test_trial_seeds_are_pure_and_separate_keys(seed, rate, trial):
    assert trial_seed(seed, "ber", rate, trial) == trial_seed(seed, "ber", rate, trial)
    assert trial_seed(seed, "ber", rate, trial) != trial_seed(seed, "ber", rate, trial + 1)
    assert 0 <= trial_seed(seed, "ber", rate, trial) < 2**63


def test_keys_of_different_types_differ_and_bad_keys_are_refused():
    assert trial_seed(0, 1) != trial_seed(0, 1.0) != trial_seed(0, "1")
    a = torch.rand(3, generator=trial_generator(0, "x", 1))
    assert torch.equal(a, torch.rand(3, generator=trial_generator(0, "x", 1)))
    with pytest.raises(TypeError, match="key"):
        trial_seed(0, [1])
    with pytest.raises(ValueError, match="seed"):
        trial_seed(-1, 1)
