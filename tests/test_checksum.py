"""Group checksums (RADAR-like): exactly the groups whose checksum changes are zeroed, the rule for
which flip patterns go unseen holds, clean reads are exact, every injection is undone."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import bitlab as bl
from bitlab.codecs.checksum import group_checksums, missed
from bitlab.formats import same_bits

FORMATS = [bl.FP32, bl.FP16, bl.Q(2, 5), bl.Int(8), bl.Int(4, per_channel=True)]


def weights(seed=0, shape=(7, 9)):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.3


def ref_group(i, n, group, interleave):
    return i % -(-n // group) if interleave else i // group


def ref_checksum(words, width, group, bits, interleave=False):
    """Python reference: XOR of the words' ``bits``-bit chunks over each group."""
    n = len(words)
    out = [0] * (-(-n // group))
    for i, u in enumerate(words):
        for shift in range(0, width, bits):
            out[ref_group(i, n, group, interleave)] ^= (u >> shift) & ((1 << bits) - 1)
    return out


def ref_members(g, n, group, interleave):
    return [i for i in range(n) if ref_group(i, n, group, interleave) == g]


def ref_zeroed(flips, group, bits, n=None, interleave=False):
    """Groups a flip set makes mismatch: some residue class (bit % bits) holds an odd count there."""
    counts = {}
    for word, bit in flips:
        key = (ref_group(word, n, group, interleave), bit % bits)
        counts[key] = counts.get(key, 0) + 1
    return {g for (g, _), c in counts.items() if c % 2}


@given(st.sampled_from([5, 8, 16, 32, 39, 62]), st.integers(1, 8), st.integers(1, 16), st.booleans(), st.data())
def test_checksum_matches_python_reference(width, group, bits, interleave, data):
    words = data.draw(st.lists(st.integers(0, 2**width - 1), min_size=1, max_size=40))
    got = group_checksums(torch.tensor(words), width, group, bits, interleave).tolist()
    assert got == ref_checksum(words, width, group, bits, interleave)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(
    "group,bits,interleave", [(1, 1, False), (4, 2, False), (16, 2, True), (5, 8, True), (64, 3, False)]
)
def test_fault_free_round_trip_equals_the_format(fmt, group, bits, interleave):
    w = weights()  # 63 weights: the last group is partial for most group sizes
    c = bl.GroupChecksum(group, bits, interleave)
    state = c.fit(w, fmt)
    got = c.decode(c.encode(w.reshape(-1), fmt, state), fmt, state)
    assert torch.equal(got, fmt.roundtrip(w).reshape(-1))


@given(st.sampled_from(FORMATS), st.integers(1, 12), st.integers(1, 9), st.booleans(), st.data())
def test_zeroes_exactly_the_groups_whose_checksum_flips(fmt, group, bits, interleave, data):
    w = weights(data.draw(st.integers(0, 50))).reshape(-1)
    n = w.numel()
    sites = data.draw(
        st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, fmt.width - 1)), unique=True, max_size=12)
    )
    c = bl.GroupChecksum(group, bits, interleave)
    state = c.fit(w, fmt)
    words = c.encode(w, fmt, state)
    faulty = words.clone()
    for i, b in sites:
        faulty[i] ^= 1 << b
    got = c.decode(faulty, fmt, state)
    zeroed = ref_zeroed(sites, group, bits, n, interleave)
    plain = bl.Identity().decode(faulty, fmt, bl.Identity().fit(w, fmt))
    want = plain.clone()
    for g in zeroed:
        want[ref_members(g, n, group, interleave)] = 0.0
    assert torch.equal(got, want)
    # a single flip in a group is always caught, whatever the group size and checksum width
    per_group = {}
    for i, b in sites:
        per_group.setdefault(ref_group(i, n, group, interleave), []).append(b)
    for g, bs in per_group.items():
        assert (g not in zeroed) == missed(torch.tensor(bs), bits)
        if len(bs) == 1:
            assert g in zeroed


def test_two_flips_in_the_same_residue_class_collide():
    w = weights().reshape(-1)
    fmt, c = bl.Int(8), bl.GroupChecksum(8, 2)
    state = c.fit(w, fmt)
    words = c.encode(w, fmt, state)
    faulty = words.clone()
    faulty[3] ^= 1 << 7  # two MSB flips in group 0: the 2-bit XOR fold cannot see them
    faulty[5] ^= 1 << 7
    faulty[12] ^= 1 << 7  # a lone MSB flip in group 1 is caught
    faulty[13] ^= 1 << 6  # bits 7 and 6 fall in different residue classes: still caught
    got = c.decode(faulty, fmt, state)
    plain = fmt.decode(faulty, state["scale"])
    assert torch.equal(got[:8], plain[:8]) and not torch.equal(got[:8], fmt.decode(words, state["scale"])[:8])
    assert (got[8:16] == 0).all() and torch.equal(got[16:], plain[16:])


@given(st.sampled_from([bl.Int(8), bl.FP32, bl.FP16]), st.integers(1, 20), st.integers(0, 2**31))
def test_injection_zeroes_the_hit_groups_and_is_undone(fmt, k, seed):
    torch.manual_seed(seed % 997)
    model = torch.nn.Sequential(torch.nn.Linear(10, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    before = {n: p.detach().clone().view(torch.int32) for n, p in model.named_parameters()}
    codec = bl.GroupChecksum(8, 2)
    g = torch.Generator().manual_seed(seed)
    with bl.corrupted(model, bl.BitFlips(k), fmt=fmt, codec=codec, params="*.weight", generator=g) as r:
        read = {n: p.detach().clone() for n, p in model.named_parameters()}
    for i, name in enumerate(r.names):
        word, bit = r.sites.of(i)
        zeroed = ref_zeroed(list(zip(word.tolist(), bit.tolist())), 8, 2)
        clean = model.get_parameter(name).detach()
        state = bl.Identity().fit(clean, fmt)
        words = bl.Identity().encode(clean.reshape(-1), fmt, state)
        for j, b in zip(word.tolist(), bit.tolist()):
            words[j] ^= 1 << b
        want = bl.Identity().decode(words, fmt, state)
        for grp in zeroed:
            want[grp * 8 : (grp + 1) * 8] = 0.0
        assert torch.equal(read[name].reshape(-1), want)
    after = {n: p.detach().clone().view(torch.int32) for n, p in model.named_parameters()}
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_restored_when_the_body_raises(tiny_model):
    before = [p.detach().clone() for p in tiny_model.parameters()]
    with pytest.raises(RuntimeError, match="boom"):
        with bl.corrupted(
            tiny_model,
            bl.BitErrorRate(0.05),
            fmt=bl.Int(8),
            codec=bl.GroupChecksum(4, 2),
            generator=torch.Generator().manual_seed(0),
        ):
            raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_model.parameters()))


def test_overhead_and_width():
    c = bl.GroupChecksum(16, 2)
    assert c.overhead_bits(bl.Int(8)) == 0.125 and c.width(bl.Int(8)) == 8
    assert bl.GroupChecksum(4, 8).overhead_bits(bl.FP32) == 2.0
    assert bl.protect.GroupChecksum is bl.GroupChecksum and not c.elementwise and not c.is_exact(bl.FP32)


def test_bad_input():
    for kwargs, arg in [
        ({"group": 0}, "group"),
        ({"bits": 0}, "bits"),
        ({"bits": 63}, "bits"),
        ({"group": 2.5}, "group"),
    ]:
        with pytest.raises(ValueError, match=arg):
            bl.GroupChecksum(**kwargs)
    c = bl.GroupChecksum(4, 2)
    w = weights().reshape(-1)
    state = c.fit(w, bl.FP32)
    with pytest.raises(ValueError, match="words"):
        c.decode(c.encode(w[:5], bl.FP32, state), bl.FP32, state)


@pytest.mark.parametrize("interleave", [False, True])
def test_attack_flips_are_caught_unless_they_collide(interleave):
    """The groups an attack's flips make mismatch read as zeros, all others as the attacked weights."""
    torch.manual_seed(0)
    d = bl.data.digits()
    model = bl.models.mlp(hidden=(16,))
    bl.train.fit(model, d.train, epochs=5, lr=3e-3, progress=False)
    r = bl.attack.bit_flip_attack(model, d.test, budget=6, progress=False)
    with r.applied(model) as rep:
        attacked = {n: model.get_parameter(n).detach().clone().reshape(-1) for n in r.names}
    with r.applied(model, codec=bl.GroupChecksum(16, 2, interleave)):
        read = {n: model.get_parameter(n).detach().clone().reshape(-1) for n in r.names}
    caught = 0
    for i, name in enumerate(rep.names):
        word, bit = rep.sites.of(i)
        n = attacked[name].numel()
        zeroed = ref_zeroed(list(zip(word.tolist(), bit.tolist())), 16, 2, n, interleave)
        want = attacked[name].clone()
        for g in zeroed:
            want[ref_members(g, n, 16, interleave)] = 0.0
        assert torch.equal(read[name], want)
        caught += len(zeroed)
    assert caught >= 1


@given(st.sampled_from(FORMATS), st.integers(1, 12), st.integers(1, 9), st.booleans(), st.data())
def test_read_changed_equals_decoding_the_whole_tensor(fmt, group, bits, interleave, data):
    """The narrow re-check (only the groups hit) reads back what a decode of every word reads back."""
    w = weights(data.draw(st.integers(0, 50))).reshape(-1)
    n = w.numel()
    c = bl.GroupChecksum(group, bits, interleave)
    state = c.fit(w, fmt)
    stored = c.encode(w, fmt, state)
    index = torch.tensor(sorted(data.draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=10))))
    masks = torch.tensor([data.draw(st.integers(1, 2**fmt.width - 1)) for _ in range(len(index))])
    faulty = stored.clone()
    faulty[index] ^= masks
    want = c.decode(faulty, fmt, state)
    idx, vals = c.read_changed(stored, fmt, state, index, faulty[index])
    got = c.decode(stored, fmt, state).clone()
    got[idx] = vals
    assert same_bits(got, want)  # bit for bit: a hit can read back as NaN, which torch.equal never equals
    assert idx.numel() <= min(n, len(index) * group)  # the groups hit, not the tensor


@pytest.mark.parametrize("codec", [bl.Identity(), bl.RangeNulling(), bl.ParityNulling("extra")])
def test_read_changed_of_elementwise_codecs_decodes_the_changed_words(codec):
    w, fmt = weights().reshape(-1), bl.FP32
    state = codec.fit(w, fmt)
    stored = codec.encode(w, fmt, state)
    index = torch.tensor([0, 5, 62])
    faulty = stored[index] ^ (1 << 30)
    idx, vals = codec.read_changed(stored, fmt, state, index, faulty)
    whole = stored.clone()
    whole[index] = faulty
    assert torch.equal(idx, index)
    assert torch.equal(vals, codec.decode(whole, fmt, state)[index])


@pytest.mark.parametrize("interleave", [False, True])
def test_injection_with_interleaved_groups_touches_only_the_hit_groups(interleave):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 12), torch.nn.ReLU(), torch.nn.Linear(12, 3))
    codec = bl.GroupChecksum(8, 2, interleave)
    name, i, b = "0.weight", 37, 30
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with bl.corrupted(model, bl.SingleBitFlip(name, i, b), codec=codec):
        read = {n: p.detach().clone().reshape(-1) for n, p in model.named_parameters()}
    n = before[name].numel()
    zeroed = ref_members(ref_group(i, n, 8, interleave), n, 8, interleave)
    want = before[name].reshape(-1).clone()
    want[zeroed] = 0.0
    assert torch.equal(read[name], want)
    assert all(torch.equal(read[k], before[k].reshape(-1)) for k in before if k != name)
    assert all(torch.equal(p.detach(), before[k]) for k, p in model.named_parameters())
