"""Fault models: counts, distinctness, reproducibility, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import bitlab as bl
from bitlab.draws import SHUFFLE_TOTAL, shuffle_prefix
from bitlab.faults import fault_words, sample_distinct

SHAPES = [torch.Size([1000, 100]), torch.Size([50]), torch.Size([3, 3, 7])]
NAMES = ["a", "b", "c"]
N_WORDS = 100_000 + 50 + 63


def test_ber_count_matches_binomial_mean():
    p, bits = 1e-3, tuple(range(32))
    n = N_WORDS * 32
    g = torch.Generator().manual_seed(0)
    counts = torch.tensor(
        [len(bl.BitErrorRate(p).sample(NAMES, SHAPES, bits, g)) for _ in range(200)], dtype=torch.float64
    )
    mean, sd = n * p, math.sqrt(n * p * (1 - p))
    assert abs(counts.mean().item() - mean) < 4 * sd / math.sqrt(200)
    assert abs(counts.std().item() - sd) < 0.25 * sd


def test_ber_sites_are_distinct_and_in_range():
    g = torch.Generator().manual_seed(3)
    sites = bl.BitErrorRate(0.01, bits="exponent").sample(NAMES, SHAPES, bl.FP32.bits("exponent"), g)
    assert len(sites) > 1000
    sizes = torch.tensor([100_000, 50, 63])
    assert (sites.word < sizes[sites.tensor]).all() and (sites.word >= 0).all()
    assert set(sites.bit.tolist()) <= set(range(23, 31))
    key = (sites.tensor * 10**7 + sites.word) * 64 + sites.bit
    assert key.unique().numel() == len(sites)


def test_sampling_is_reproducible_with_a_generator():
    bits = tuple(range(32))
    s1 = bl.BitErrorRate(1e-3).sample(NAMES, SHAPES, bits, torch.Generator().manual_seed(7))
    s2 = bl.BitErrorRate(1e-3).sample(NAMES, SHAPES, bits, torch.Generator().manual_seed(7))
    assert torch.equal(s1.word, s2.word) and torch.equal(s1.bit, s2.bit)


@pytest.mark.parametrize("total,k", [(10, 10), (10**9, 500), (1000, 300), (70_000, 20_000)])
def test_sample_distinct(total, k):
    s = sample_distinct(total, k, torch.Generator().manual_seed(0))
    assert s.numel() == k and s.unique().numel() == k and s.min() >= 0 and s.max() < total


def test_sample_distinct_is_uniform():
    g = torch.Generator().manual_seed(0)
    hits = torch.zeros(100_000 // 1000)
    for _ in range(40):
        s = sample_distinct(100_000, 500, g)
        hits += torch.bincount(s // 1000, minlength=100)
    expected = 40 * 500 / 100
    chi2 = ((hits - expected) ** 2 / expected).sum().item()
    assert chi2 < 160  # 99 dof: the 0.9999 quantile is about 155


@settings(max_examples=300, deadline=None)
@given(
    total=st.integers(1, SHUFFLE_TOTAL),
    share=st.floats(0, 1),
    seed=st.integers(0, 2**63 - 1),
    before=st.integers(0, 700),  # draws taken before, so the Mersenne twister's refill falls anywhere
)
def test_shuffle_prefix_is_randperms_prefix(total, share, seed, before):
    """The O(k) prefix takes exactly the positions of torch.randperm's own shuffle: the rows of a small
    store's sweeps do not depend on which path sample_distinct took."""
    k = int(share * total)
    g1, g2 = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    torch.randint(0, 10, (before,), generator=g1), torch.randint(0, 10, (before,), generator=g2)
    assert torch.equal(shuffle_prefix(total, k, g1), torch.randperm(total, generator=g2)[:k])


@pytest.mark.parametrize("total,k", [(60_736, 6), (60_736, 5_000), (4_096, 1), (65_536, 64)])
def test_sample_distinct_small_space_is_randperms_prefix(total, k):
    """Both paths of a small space (the prefix for a few flips, the permutation for many) give randperm's
    first k positions from a fresh generator."""
    got = sample_distinct(total, k, torch.Generator().manual_seed(11))
    assert torch.equal(got, torch.randperm(total, generator=torch.Generator().manual_seed(11))[:k])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 99), st.integers(0, 31)), max_size=40, unique=True))
def test_by_tensor_groups_like_of(sites):
    """One sort groups the sites per tensor as a mask per tensor (``of``) does, in the same order."""
    t, w, b = (torch.tensor([s[k] for s in sites], dtype=torch.int64) for k in range(3))
    s = bl.faults.Sites(t, w, b)
    groups = s.by_tensor()
    assert set(groups) == s.hit()
    for i, (word, bit) in groups.items():
        want_word, want_bit = s.of(i)
        assert torch.equal(word, want_word) and torch.equal(bit, want_bit)


def test_shuffle_prefix_rejects_bad_sizes():
    with pytest.raises(ValueError, match="k, total"):
        shuffle_prefix(10, 11)
    with pytest.raises(ValueError, match="k, total"):
        shuffle_prefix(SHUFFLE_TOTAL + 1, 1)


def test_bitflips_exact_count():
    sites = bl.BitFlips(17).sample(NAMES, SHAPES, (0, 1, 2), torch.Generator().manual_seed(0))
    assert len(sites) == 17
    with pytest.raises(ValueError, match="k"):
        bl.BitFlips(10).sample(["a"], [torch.Size([3])], (0, 1), None)


def test_single_bit_flip_multi_index():
    s = bl.SingleBitFlip("c", (1, 2, 3), 5).sample(NAMES, SHAPES, tuple(range(32)))
    assert s.tensor.tolist() == [2] and s.word.tolist() == [1 * 21 + 2 * 7 + 3] and s.bit.tolist() == [5]


@pytest.mark.parametrize(
    "make,msg",
    [
        (lambda: bl.BitErrorRate(1.5), "allowed values are in \\[0, 1\\]"),
        (lambda: bl.BitErrorRate(-1e-3), "p"),
        (lambda: bl.StuckAt(0.1, 2), "value"),
        (lambda: bl.BitFlips(-1), "k"),
    ],
)
def test_bad_fault_parameters(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize(
    "fault,msg",
    [
        (bl.SingleBitFlip("zz", 0, 0), "param"),
        (bl.SingleBitFlip("b", 50, 0), "index"),
        (bl.SingleBitFlip("b", 0, 32), "bit"),
    ],
)
def test_bad_single_flip_targets(fault, msg):
    with pytest.raises(ValueError, match=msg):
        fault.sample(NAMES, SHAPES, tuple(range(32)))


def test_fault_words_modes():
    words = torch.tensor([0b1010, 0b0000])
    which = torch.tensor([0, 0, 1])
    bits = torch.tensor([0, 1, 3])
    assert fault_words(words, which, bits, "flip").tolist() == [0b1001, 0b1000]
    assert fault_words(words, which, bits, "stuck1").tolist() == [0b1011, 0b1000]
    assert fault_words(words, which, bits, "stuck0").tolist() == [0b1000, 0b0000]
