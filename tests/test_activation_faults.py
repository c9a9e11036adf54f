"""Activation faults on the zoo's models: the chosen output element changes exactly as a numpy bit flip of
the reported sites says, the rest passes through, gradients pass straight through, and everything that
would make a fault go silent is refused by name."""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from torch import Tensor, nn
from zoo import ZOO, forward, same_as, snapshot

import bitlab as bl
from bitlab.inject import ActivationReport, corrupted_activations

NP_WORD = {torch.float32: (np.float32, np.uint32), torch.float16: (np.float16, np.uint16)}


def naive_flip(clean: Tensor, words: Tensor, bits: Tensor) -> Tensor:
    """``clean`` with bit ``bits[j]`` of element ``words[j]`` flipped, one site at a time, in numpy."""
    if clean.dtype == torch.bfloat16:  # bfloat16 is the top half of a float32
        u = clean.float().numpy().reshape(-1).view(np.uint32).copy()
        for w, b in zip(words.tolist(), bits.tolist()):
            u[w] ^= np.uint32(1 << (b + 16))
        return torch.from_numpy(u.view(np.float32).copy()).to(torch.bfloat16).view(clean.shape)
    fl, word = NP_WORD[clean.dtype]
    u = clean.numpy().astype(fl).reshape(-1).view(word).copy()
    for w, b in zip(words.tolist(), bits.tolist()):
        u[w] ^= word(1 << b)
    return torch.from_numpy(u.view(fl).copy()).view(clean.shape)


def bits_of(t: Tensor) -> Tensor:
    return t.contiguous().view({2: torch.int16, 4: torch.int32}[t.element_size()])


def pick(out: object, path: tuple) -> object:
    for k in path:
        out = out[k]  # type: ignore[index]
    return out


class Capture:
    """A forward hook keeping each call's output (registered before the fault hook: the clean output;
    after it: the faulty one)."""

    def __init__(self) -> None:
        self.outs: list[object] = []

    def __call__(self, module: nn.Module, inputs: tuple, out: object) -> None:
        self.outs.append(out)


CASES = [
    ("encoder", "layer.self_attn", (0,)),
    ("encoder", "layer", ()),
    ("recurrent", "lstm", (0,)),
    ("recurrent", "gru", (0,)),
    ("resnet_bn", "bn1", ()),
    ("resnet_bn", "conv2", ()),
    ("dict_out", "a", ()),
    ("fp16", "0", ()),
    ("bf16", "2", ()),
]


@pytest.mark.parametrize("zoo_name, module, path", CASES)
def test_faults_match_a_numpy_bit_flip_of_the_reported_sites(zoo_name, module, path):
    model, batches = ZOO[zoo_name]()
    snap = snapshot(model)
    target = dict(model.named_modules())[module]
    before, after = Capture(), Capture()
    h = target.register_forward_hook(before)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad(), corrupted_activations(model, bl.BitErrorRate(0.01), module, generator=g) as r:
        h2 = target.register_forward_hook(after)
        forward(model, batches[0][0])
        h2.remove()
    h.remove()
    assert r.calls[module] == 1 and r.flips[module] > 0
    clean, faulty = pick(before.outs[0], path), pick(after.outs[0], path)
    sites = r.sites[module]
    assert faulty.dtype == clean.dtype
    assert r.formats[module] == {torch.float32: "FP32", torch.float16: "FP16", torch.bfloat16: "BF16"}[clean.dtype]
    assert torch.equal(bits_of(faulty), bits_of(naive_flip(clean, sites.word, sites.bit)))
    if path:  # the rest of a tuple output passes through untouched
        rest_b = [o for i, o in enumerate(before.outs[0]) if i != path[0]]
        rest_a = [o for i, o in enumerate(after.outs[0]) if i != path[0]]
        assert all(a is b for a, b in zip(rest_a, rest_b))
    assert same_as(model, snap)
    assert all(not m._forward_hooks for m in model.modules())


def test_lstm_hidden_state_by_path_and_formats_follow_the_dtype():
    model, batches = ZOO["recurrent"]()
    before, after = Capture(), Capture()
    model.lstm.register_forward_hook(before)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), corrupted_activations(model, bl.BitFlips(3), "lstm", generator=g, output=(1, 0)) as r:
        model.lstm.register_forward_hook(after)
        model(batches[0][0])
    (seq_b, (h_b, c_b)), (seq_a, (h_a, c_a)) = before.outs[0], after.outs[0]
    assert seq_a is seq_b and c_a is c_b and r.outputs["lstm"] == "output[1][0]"
    assert torch.equal(bits_of(h_a), bits_of(naive_flip(h_b, r.sites["lstm"].word, r.sites["lstm"].bit)))
    for name, fmt in [("fp16", "FP16"), ("bf16", "BF16")]:
        m, data = ZOO[name]()
        with corrupted_activations(m, bl.BitErrorRate(0.1), "0", generator=g) as r2:
            assert forward(m, data[0][0]).dtype == data[0][0].dtype
        assert r2.formats["0"] == fmt


Pair = namedtuple("Pair", ["ids", "score"])


@dataclass
class Out:
    ids: Tensor
    score: Tensor


class Multi(nn.Module):
    """Returns an int tensor and a float tensor in a container of the chosen ``kind``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> object:
        ids, score = x.argmax(dim=1), self.lin(x)
        return {
            "tuple": (ids, score),
            "dict": {"ids": ids, "score": score},
            "named": Pair(ids, score),
            "dataclass": Out(ids, score),
        }[self.kind]


class Wrap(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.inner = Multi(kind)

    def forward(self, x: Tensor) -> object:
        return self.inner(x)


def get(out: object, key: int | str) -> Tensor:
    if isinstance(out, dict) or (isinstance(out, tuple) and isinstance(key, int)):
        return out[key]  # type: ignore[index]
    return getattr(out, key)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kind, output, key",
    [
        ("tuple", None, 1),
        ("tuple", 1, 1),
        ("dict", None, "score"),
        ("dict", "score", "score"),
        ("named", "score", "score"),
        ("named", None, "score"),
        ("dataclass", None, "score"),
        ("dataclass", "score", "score"),
    ],
)
def test_containers_take_the_fault_in_the_chosen_element(kind, output, key):
    torch.manual_seed(0)
    model, x = Wrap(kind), torch.randn(5, 4)
    clean = model(x)
    with corrupted_activations(model, bl.SingleBitFlip("inner", 7, 30), "inner", output=output) as r:
        faulty = model(x)
    assert type(faulty) is type(clean)
    assert torch.equal(get(faulty, "ids" if kind != "tuple" else 0), get(clean, "ids" if kind != "tuple" else 0))
    want = naive_flip(get(clean, key).detach(), torch.tensor([7]), torch.tensor([30]))
    assert torch.equal(bits_of(get(faulty, key).detach()), bits_of(want))
    assert r.flips == {"inner": 1}


class ArgMax(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.argmax(dim=1)


def test_non_float_outputs_and_missing_keys_are_refused_by_name():
    torch.manual_seed(0)
    model, x = Wrap("tuple"), torch.randn(5, 4)
    with pytest.raises(TypeError, match=r"output\[0\] of 'inner' is a torch.int64 tensor"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), "inner", output=0):
            model(x)
    with pytest.raises(ValueError, match=r"output\[5\] does not exist in the output of 'inner'"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), "inner", output=5):
            model(x)
    with pytest.raises(ValueError, match=r"output: \['head'\] are not chosen modules"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), "inner", output={"head": 0}):
            pass
    argmax = nn.Sequential(nn.Linear(4, 4), ArgMax())
    with pytest.raises(TypeError, match=r"output of '1' is a torch.int64 tensor and holds no floating-point"):
        with corrupted_activations(argmax, bl.BitErrorRate(0.1), "1"):
            argmax(x)
    assert all(not m._forward_hooks for m in [*model.modules(), *argmax.modules()])


def test_out_proj_is_refused_at_entry_and_the_attention_module_takes_its_output():
    model, batches = ZOO["encoder"]()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"'layer.self_attn.out_proj'.*never called.*target 'layer.self_attn'"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), "layer.self_attn.out_proj"):
            pass
    with corrupted_activations(model, bl.SingleBitFlip("layer.self_attn", 3, 31), "layer.self_attn") as r:
        forward(model, batches[0][0])
    assert r.calls == {"layer.self_attn": 1} and r.outputs == {"layer.self_attn": "output[0]"}
    assert same_as(model, snap)


def test_a_module_never_called_is_an_error_on_exit_but_never_masks_the_blocks_own():
    model, batches = ZOO["encoder"]()
    with pytest.raises(RuntimeError, match=r"\['layer.linear1'\] were never called.*TransformerEncoderLayer.*'layer'"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), ["embed", "layer.linear1"]) as r:
            model.embed(batches[0][0])
    assert r.calls == {"embed": 1, "layer.linear1": 0}
    with pytest.raises(KeyError, match="mine"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), "layer.linear1"):
            raise KeyError("mine")
    rec, data = ZOO["recurrent"]()
    with pytest.raises(RuntimeError, match=r"\['head'\] were never called"):
        with corrupted_activations(rec, bl.BitErrorRate(0.1), "head"):
            rec.lstm(data[0][0])
    assert all(not m._forward_hooks for m in [*model.modules(), *rec.modules()])


def test_compiled_models_are_refused_naming_the_fix():
    model, _ = ZOO["conv1d"]()
    compiled = torch.compile(model, backend="eager")
    with pytest.raises(TypeError, match=r"compiled Conv1dNet.*uncompiled module \(model._orig_mod"):
        with corrupted_activations(compiled, bl.BitErrorRate(0.1), "conv1"):
            pass
    outer = nn.Sequential(torch.compile(nn.Linear(2, 2), backend="eager"))
    with pytest.raises(TypeError, match=r"inside the compiled module '0'"):
        with corrupted_activations(outer, bl.BitErrorRate(0.1), "0._orig_mod"):
            pass
    model.compile(backend="eager")
    with pytest.raises(TypeError, match="compiled Conv1dNet"):
        with corrupted_activations(model, bl.BitErrorRate(0.1), "conv1"):
            pass


def test_format_wider_than_the_activation_and_unknown_dtypes_are_refused():
    m, data = ZOO["fp16"]()
    with pytest.raises(ValueError, match=r"FP32 is 32 bits wide.*torch.float16"):
        with corrupted_activations(m, bl.BitErrorRate(0.1), "0", fmt=bl.FP32):
            forward(m, data[0][0])
    d = nn.Sequential(nn.Linear(3, 3)).double()
    with pytest.raises(TypeError, match=r"'0' is torch.float64.*fmt=None"):
        with corrupted_activations(d, bl.BitErrorRate(0.1), "0"):
            d(torch.randn(2, 3, dtype=torch.float64))
    with corrupted_activations(d, bl.BitErrorRate(0.0), "0", fmt=bl.FP32) as r:  # narrower on purpose: fine
        out = d(torch.ones(2, 3, dtype=torch.float64))
    assert out.dtype == torch.float64 and r.formats == {"0": "FP32"}
    with pytest.raises(TypeError, match="generator: expected None or a torch.Generator"):
        with corrupted_activations(d, bl.BitErrorRate(0.1), "0", generator=3):  # type: ignore[arg-type]
            pass
    with pytest.raises(ValueError, match="bits: bit index 20"):
        with corrupted_activations(m, bl.BitErrorRate(0.1, bits=[20]), "0"):
            forward(m, data[0][0])


def test_explicit_formats_keep_working():
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 6)), torch.randn(3, 4)
    clean = model(x).detach()
    with corrupted_activations(model, bl.BitErrorRate(0.0), "0", fmt=bl.Q(2, 5)):
        out = model(x).detach()
    assert torch.equal(out, torch.clamp(torch.round(clean * 32), -128, 127) / 32)
    with corrupted_activations(model, bl.SingleBitFlip("0", 4, 7), "0", fmt=bl.Int(8), scales={"0": 0.25}) as r:
        out = model(x).detach()
    q = torch.clamp(torch.round(clean / 0.25), -127, 127).reshape(-1)
    q[4] = q[4] - 128 if q[4] >= 0 else q[4] + 128  # the sign bit of an 8-bit two's complement word
    assert torch.equal(out.reshape(-1), q * 0.25) and isinstance(r, ActivationReport)


@given(st.integers(0, 2**32 - 1), st.integers(0, 31), st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
@example(0x7C00, 0, torch.float16)  # +inf -> a signalling NaN, which a round trip through float32 would quiet
@example(0x7F80, 0, torch.bfloat16)
@example(0x7F800000, 0, torch.float32)
def test_a_single_flip_is_bit_exact_nan_payloads_included(pattern, bit, dtype):
    width = 32 if dtype == torch.float32 else 16
    bit %= width
    words = torch.tensor([pattern % (1 << width)], dtype=torch.int64)
    signed = torch.where(words >= 1 << (width - 1), words - (1 << width), words)
    x = signed.to({32: torch.int32, 16: torch.int16}[width]).view(dtype)
    model = nn.Sequential(nn.Identity())
    with corrupted_activations(model, bl.SingleBitFlip("0", 0, bit), "0"):
        out = model(x)
    assert int(bits_of(out)[0] ^ bits_of(x)[0]) & ((1 << width) - 1) == 1 << bit


class Skip(nn.Module):
    """Not a Sequential: a residual block in the middle, its output faulted."""

    def __init__(self) -> None:
        super().__init__()
        self.inp, self.mid, self.out = nn.Linear(4, 6), nn.Linear(6, 6), nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.inp(x))
        return self.out(torch.tanh(h + self.mid(h)))


@pytest.mark.parametrize("zoo_name, module", [(None, "mid"), ("resnet_bn", "conv1"), ("encoder", "layer.self_attn")])
def test_gradients_pass_the_fault_straight_through(zoo_name, module):
    if zoo_name is None:
        torch.manual_seed(0)
        model, x = Skip(), torch.randn(8, 4)
    else:
        model, batches = ZOO[zoo_name]()
        x = batches[0][0]

    def run(hook=None):
        model.zero_grad()
        target = dict(model.named_modules())[module]
        handle = target.register_forward_hook(hook) if hook else None
        o = forward(model, x)
        o.square().sum().backward()
        if handle:
            handle.remove()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    clean = run()
    with corrupted_activations(model, bl.BitErrorRate(0.0), module):
        assert all(torch.equal(clean[n], v) for n, v in run().items()) and run().keys() == clean.keys()
    g = torch.Generator().manual_seed(0)
    fault = bl.BitErrorRate(0.2, bits="mantissa")
    after = Capture()
    with corrupted_activations(model, fault, module, generator=g) as r:
        handle = dict(model.named_modules())[module].register_forward_hook(after)
        faulty = run()
        handle.remove()
    assert r.flips[module] > 0
    assert faulty.keys() == clean.keys()  # every parameter before the fault gets a gradient
    assert all(v.abs().sum() > 0 and torch.isfinite(v).all() for v in faulty.values())
    recorded = pick(after.outs[0], (0,) if module == "layer.self_attn" else ()).detach()

    def by_hand(mod, inputs, out):  # the straight-through estimator written out, with the recorded values
        act = out[0] if isinstance(out, tuple) else out
        st_act = act + (recorded - act).detach()
        return (st_act, *out[1:]) if isinstance(out, tuple) else st_act

    ref = run(by_hand)
    for n in ref:
        torch.testing.assert_close(faulty[n], ref[n], rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_faults_land_on_the_outputs_device_in_its_dtype(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 2)).to("cuda", dtype)
    x = torch.randn(16, 8, device="cuda", dtype=dtype)
    before, after = Capture(), Capture()
    model[0].register_forward_hook(before)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad(), corrupted_activations(model, bl.BitErrorRate(0.05), "0", generator=g) as r:
        model[0].register_forward_hook(after)
        model(x)
    clean, faulty = before.outs[0], after.outs[0]
    assert faulty.device == clean.device and faulty.dtype == dtype and r.flips["0"] > 0
    want = naive_flip(clean.cpu(), r.sites["0"].word, r.sites["0"].bit)
    assert torch.equal(bits_of(faulty.cpu()), bits_of(want))
    with corrupted_activations(model, bl.BitErrorRate(0.05), "0", fmt=bl.Int(8), generator=g):
        assert model(x).device == x.device


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_quantized_activation_faults_apply_on_the_words_device():
    from bitlab.campaigns.activations import act_fault_fn, flips_per_inference_fn

    words = torch.randint(0, 256, (4, 10), generator=torch.Generator().manual_seed(0))
    for make in (
        lambda g: act_fault_fn(bl.BitErrorRate(0.1), g, 8),
        lambda g: flips_per_inference_fn(3, {"x": 10}, g, 8),
    ):
        on_cpu = make(torch.Generator().manual_seed(1))("x", words)
        on_gpu = make(torch.Generator().manual_seed(1))("x", words.cuda())
        assert on_gpu.device.type == "cuda" and torch.equal(on_gpu.cpu(), on_cpu) and not torch.equal(on_cpu, words)
