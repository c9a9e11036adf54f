"""bitlab.hessian on models that are not the book's classifiers (tests/zoo.py): stock Transformer layers,
tied weights, tuple/dict inputs, (model, batch) losses, fp16/bf16, against exact float64 Hessians
(torch.autograd.functional.hessian over a flat parameter vector, computed under the math attention kernel)."""

import copy

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from references import flat_hessian
from torch import nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from zoo import ZOO, forward, same_as, snapshot

from bitlab import curvature as bh

LOSS = {"encoder": F.cross_entropy, "tied": F.cross_entropy, "regressor": F.mse_loss}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def as64(name: str) -> tuple[nn.Module, list]:
    model, data = ZOO[name]()
    model = copy.deepcopy(model).double()
    return model, [
        (x.double() if x.is_floating_point() else x, y.double() if y.is_floating_point() else y) for x, y in data
    ]


def exact_hessian(model: nn.Module, loss_fn, x, y, names=None) -> torch.Tensor:
    """Dense Hessian of ``loss_fn(model(x), y)`` over the named parameters, flattened in model order."""
    with sdpa_kernel(SDPBackend.MATH):
        return flat_hessian(model, lambda ps: loss_fn(functional_call(model, ps, (x,)), y), names, vectorize=True)


_EXACT: dict[str, tuple] = {}


def exact(name: str):
    """(float64 model, data, exact Hessian of batch 0, of batch 1), cached per model."""
    if name not in _EXACT:
        model, data = as64(name)
        _EXACT[name] = (model, data, *(exact_hessian(model, LOSS[name], x, y) for x, y in data))
    return _EXACT[name]


# --------------------------------------------------------------------------------------- attention kernel


@pytest.mark.parametrize("name", ["encoder", "regressor"])
def test_default_kernel_has_no_double_backward_and_math_kernel_the_same_loss(name):
    model, data = ZOO[name]()
    x, y = data[0]
    ps = list(model.parameters())
    default = LOSS[name](forward(model, x), y)
    g = torch.autograd.grad(default, ps, create_graph=True)
    with pytest.raises(RuntimeError, match="derivative for"):  # the bug the math kernel fixes
        torch.autograd.grad(sum((t * t).sum() for t in g), ps)
    with bh.double_backward():
        math = LOSS[name](forward(model, x), y)
    with torch.no_grad():  # the eval fast path of TransformerEncoderLayer
        fast = LOSS[name](forward(model, x), y)
    torch.testing.assert_close(math, default, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, default, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ products


@pytest.mark.parametrize("name", ["encoder", "regressor", "tied"])
def test_hvp_equals_exact_hessian_times_v(name):
    model, data, H0, H1 = exact(name)
    snap = snapshot(model)
    v = torch.randn(H0.shape[0], generator=gen(1), dtype=torch.float64)
    torch.testing.assert_close(bh.hvp(model, LOSS[name], data[0], v), H0 @ v, rtol=1e-8, atol=1e-10)
    n0, n1 = len(data[0][1]), len(data[1][1])
    whole = (n0 * H0 + n1 * H1) / (n0 + n1)
    torch.testing.assert_close(bh.hvp(model, LOSS[name], data, v), whole @ v, rtol=1e-8, atol=1e-10)
    assert same_as(model, snap)


def test_hvp_on_the_float32_model_is_close_to_the_float64_reference():
    model, data = ZOO["encoder"]()
    _, _, H0, _ = exact("encoder")
    v = torch.randn(H0.shape[0], generator=gen(2), dtype=torch.float64)
    hv = bh.hvp(model, F.cross_entropy, data[0], v.float())
    torch.testing.assert_close(hv.double(), H0 @ v, rtol=1e-3, atol=1e-4 * float((H0 @ v).abs().max()))


@settings(max_examples=10, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=4))
def test_a_batch_cut_into_pieces_has_the_same_hessian(cuts):
    """The mean loss is per-sample, so any split into batches gives the same size-weighted Hessian."""
    model, data, H0, _ = exact("regressor")
    x, y = data[0]
    edges = sorted({min(c * 2, len(y) - 1) for c in cuts})
    pieces = [(x[a:b], y[a:b]) for a, b in zip([0, *edges], [*edges, len(y)]) if b > a]
    v = torch.randn(H0.shape[0], generator=gen(3), dtype=torch.float64)
    torch.testing.assert_close(bh.hvp(model, F.mse_loss, pieces, v), H0 @ v, rtol=1e-8, atol=1e-10)


# ----------------------------------------------------------------------------------------- estimators


@pytest.mark.parametrize("name", ["encoder", "regressor"])
def test_hutchinson_with_many_probes_brackets_the_exact_trace(name):
    model, data, H0, _ = exact(name)
    est = bh.hutchinson_trace(model, LOSS[name], data[0], n_probes=300, generator=gen(4))
    tr = float(torch.trace(H0))
    assert abs(est.mean - tr) <= 4 * est.stderr, (est, tr)
    assert est.stderr < 0.2 * abs(tr) + 1e-9


def test_top_eigenvalues_and_slq_nodes_on_the_encoder():
    model, data, H0, _ = exact("encoder")
    snap = snapshot(model)
    ev = torch.linalg.eigvalsh(H0)
    vals, vecs, _ = bh.top_eigenvalues(model, F.cross_entropy, data[0], k=2, max_iter=200, tol=1e-6, generator=gen(5))
    torch.testing.assert_close(vals, ev.flip(0)[:2], rtol=1e-4, atol=1e-6)
    hv = bh.flatten(bh.hvp(model, F.cross_entropy, data[0], vecs[0]))
    torch.testing.assert_close(hv, vals[0] * bh.flatten(vecs[0]), rtol=1e-3, atol=1e-3 * float(vals[0]))
    power, _, _ = bh.top_eigenvalues(model, F.cross_entropy, data[0], method="power", max_iter=300, tol=1e-8)
    assert abs(float(power[0]) - float(ev[-1])) <= 1e-3 * float(ev[-1])
    nodes, weights = bh.slq_nodes(model, F.cross_entropy, data[0], n_v=2, m=20, generator=gen(6))
    assert float(nodes.min()) >= float(ev[0]) - 1e-8 and float(nodes.max()) <= float(ev[-1]) + 1e-8
    torch.testing.assert_close(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    grid, density = bh.slq_density(model, F.cross_entropy, data[0], n_v=2, m=20, generator=gen(6))
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-3)
    assert same_as(model, snap)


def test_per_layer_hutchpp_with_full_budget_is_the_exact_block_trace():
    model, data, H0, _ = exact("regressor")
    names = [n for n, _ in model.named_parameters()]
    sizes = {n: p.numel() for n, p in model.named_parameters()}
    offsets = {n: sum(sizes[m] for m in names[: names.index(n)]) for n in names}
    chosen = ["proj.weight", "proj.bias", "head.weight", "head.bias"]  # proj's block goes through attention
    table = bh.per_layer(bh.hutchpp_trace, model, F.mse_loss, data[0], params=chosen, n_hvp=3 * 80, generator=gen(7))
    for row in table.itertuples():
        block = [n for n in chosen if n.startswith(row.layer + ".")]
        idx = torch.cat([torch.arange(offsets[n], offsets[n] + sizes[n]) for n in block])
        assert row.trace == pytest.approx(float(torch.trace(H0[idx][:, idx])), rel=1e-6, abs=1e-9)
    assert list(table["layer"]) == ["proj", "head"]


def test_flip_prediction_on_the_encoder_uses_the_exact_diagonal():
    model, data, H0, _ = exact("encoder")
    snap = snapshot(model)
    names = [n for n, _ in model.named_parameters()]
    w = dict(model.named_parameters())
    offset = sum(w[n].numel() for n in names[: names.index("layer.linear1.weight")])
    flips = pd.DataFrame({"param": ["layer.linear1.weight"] * 3, "index": [0, 7, 100]})
    flips["flipped"] = [float(w["layer.linear1.weight"].detach().view(-1)[i]) + 1e-3 for i in flips["index"]]
    out = bh.flip_loss_prediction(model, F.cross_entropy, data[0], flips)
    exact_diag = [float(H0[offset + i, offset + i]) for i in flips["index"]]
    assert out["curvature"].tolist() == pytest.approx(exact_diag, rel=1e-8, abs=1e-12)
    assert out["observed"].tolist() == pytest.approx(out["predicted"].tolist(), rel=1e-2, abs=1e-9)
    assert same_as(model, snap)


# ------------------------------------------------------------------------------------- trace penalty


def test_trace_penalty_gradient_flows_to_every_parameter_of_the_encoder():
    model, data = ZOO["encoder"]()
    x, y = data[0]
    with pytest.raises(RuntimeError, match="double_backward"):  # the default kernel, explained
        bh.trace_penalty(model, F.cross_entropy(model(x), y), generator=gen(8))
    with bh.double_backward():
        loss = F.cross_entropy(model(x), y)
    pen = bh.trace_penalty(model, loss, n_probes=2, generator=gen(8))
    pen.backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and bool(p.grad.abs().sum() > 0), n


def test_hessian_regularizer_on_the_regressor_with_a_batch_loss():
    model, data = ZOO["regressor"]()
    x, y = data[0]
    reg = bh.hessian_regularizer(0.5, n_probes=3, seed=1, loss_fn=bh.batch_loss(lambda m, b: F.mse_loss(m(b[0]), b[1])))
    with bh.double_backward():
        loss = F.mse_loss(model(x), y)
    expected = 0.5 * bh.trace_penalty(model, loss, n_probes=3, generator=gen(1))
    got = reg(model, x, y)
    torch.testing.assert_close(got, expected)
    got.backward()
    assert all(p.grad is not None for p in model.parameters())


# -------------------------------------------------------------------------------- loss and batch forms


def test_batch_loss_and_dict_inputs_match_the_pair_loss():
    model, data = ZOO["dict_out"]()
    model = model.double()
    data = [({k: v.double() for k, v in x.items()}, y) for x, y in data]

    def pair(out, y):
        return F.cross_entropy(out["logits"], y)

    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen(9), dtype=torch.float64)
    a = bh.hvp(model, pair, data, v)
    b = bh.hvp(model, bh.batch_loss(lambda m, batch: F.cross_entropy(m(**batch[0])["logits"], batch[1])), data, v)
    inside = [{**x, "labels": y} for x, y in data]  # labels inside a dict batch

    def labelled(m, batch):
        return F.cross_entropy(m(image=batch["image"], meta=batch["meta"])["logits"], batch["labels"])

    c = bh.hvp(model, bh.batch_loss(labelled), inside, v)
    total = sum(len(t) for _, t in data)
    H = flat_hessian(
        model,
        lambda qs: (
            sum(len(t) * F.cross_entropy(functional_call(model, qs, (), s)["logits"], t) for s, t in data) / total
        ),
    )
    torch.testing.assert_close(a, H @ v, rtol=1e-8, atol=1e-10)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_tuple_inputs_are_positional_arguments():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(4, 2)

        def forward(self, u, w):
            return torch.tanh(self.a(u)) * self.b(w)

    torch.manual_seed(0)
    model = Two().double()
    u, w, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,))
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen(10), dtype=torch.float64)
    H = flat_hessian(model, lambda qs: F.cross_entropy(functional_call(model, qs, (u, w)), y))
    torch.testing.assert_close(bh.hvp(model, F.cross_entropy, ((u, w), y), v), H @ v, rtol=1e-8, atol=1e-10)


def test_bad_losses_and_batches_are_refused_by_name():
    model, data = ZOO["encoder"]()
    v = [torch.zeros_like(p) for p in model.parameters()]
    with pytest.raises(TypeError, match=r"loss_fn must take two positional.*batch_loss"):
        bh.hvp(model, lambda out: out.sum(), data[0], v)
    with pytest.raises(TypeError, match=r"loss_fn must be a callable"):
        bh.hvp(model, "cross_entropy", data[0], v)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"batch_loss: fn must take two positional"):
        bh.batch_loss(lambda m, b, c: 0)
    with pytest.raises(ValueError, match=r"scalar.*reduction='mean'.*batch_loss"):
        bh.hvp(model, lambda o, y: F.cross_entropy(o, y, reduction="none"), data[0], v)
    with pytest.raises(ValueError, match=r"scalar"):
        bh.hutchinson_trace(model, bh.batch_loss(lambda m, b: 1.0), data[0], n_probes=2)
    with pytest.raises(TypeError, match=r"\(inputs, targets\) batches.*batch_loss"):
        bh.hvp(model, F.cross_entropy, [(data[0][0],)], v)
    with pytest.raises(TypeError, match=r"data: expected"):
        bh.hvp(model, F.cross_entropy, data[0][0], v)
    with pytest.raises(ValueError, match=r"no batch"):
        bh.hvp(model, F.cross_entropy, [], v)


def test_a_module_without_double_backward_is_named():
    class Fused(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)

        def forward(self, x):
            q = self.lin(x).unsqueeze(1)
            return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q, q)[0].squeeze(1)

    model = nn.Sequential(nn.Linear(4, 4), Fused())
    snap = snapshot(model)
    loss = bh.batch_loss(lambda m, b: m(b[0]).pow(2).mean())
    with pytest.raises(RuntimeError, match=r"in module\(s\) '1' \(Fused\).*fix"):
        bh.hutchinson_trace(model, loss, (torch.randn(3, 5, 4),), n_probes=2)
    assert same_as(model, snap)


# ------------------------------------------------------------------------------ precision, restoration


@pytest.mark.parametrize("name", ["fp16", "bf16"])
def test_half_precision_models_are_differentiated_in_float32(name):
    model, data = ZOO[name]()
    snap = snapshot(model)
    ref = copy.deepcopy(model).float()
    ref_data = [(x.float(), y) for x, y in data]
    v = torch.randn(sum(p.numel() for p in model.parameters()), generator=gen(11), dtype=torch.float32)
    got = bh.hvp(model, F.cross_entropy, data, v)
    assert got.dtype == torch.float32
    assert torch.equal(got, bh.hvp(ref, F.cross_entropy, ref_data, v))
    est = bh.hutchinson_trace(model, F.cross_entropy, data, n_probes=4, generator=gen(12))
    assert est.mean == bh.hutchinson_trace(ref, F.cross_entropy, ref_data, n_probes=4, generator=gen(12)).mean
    assert same_as(model, snap)
    x, y = data[0]
    with pytest.raises(ValueError, match=r"params: .*(float16|bfloat16)"):
        bh.trace_penalty(model, F.cross_entropy(model(x).float(), y))


@pytest.mark.parametrize("name", ["encoder", "regressor"])
def test_models_come_back_bit_for_bit_also_when_the_loss_raises(name):
    model, data = ZOO[name]()
    model.train()  # mode="eval" switches it for the computation and back
    snap = snapshot(model)
    loss = LOSS[name]
    bh.top_eigenvalues(model, loss, data, k=1, max_iter=5, mode="eval", generator=gen(13))
    bh.hutchpp_trace(model, loss, data, n_hvp=6, mode="eval", generator=gen(13))
    bh.slq_density(model, loss, data, n_v=1, m=4, mode="eval", generator=gen(13))
    bh.per_layer(bh.hutchinson_trace, model, loss, data, params="head.*", n_probes=2, mode="eval")
    name0 = next(iter(dict(model.named_parameters())))
    flips = pd.DataFrame({"param": [name0], "index": [0], "flipped": [3.0]})
    bh.flip_loss_prediction(model, loss, data, flips, mode="eval")
    calls = []

    def fails_second(m, batch):
        calls.append(1)
        if len(calls) > 1:
            raise KeyError("boom")
        return loss(forward(m, batch[0]), batch[1])

    with pytest.raises(KeyError, match="boom"):
        bh.hutchinson_trace(model, bh.batch_loss(fails_second), data, n_probes=2, mode="eval")
    assert same_as(model, snap)
    assert all(p.grad is None for p in model.parameters())
