"""The census on a traced graph (models that are not an nn.Sequential chain) against the naive loop:
the same frame, row for row and float for float, NaN/Inf flips included, on residual networks with
BatchNorm (in-place ReLU and ``+=`` included), attention, concatenation, recurrent layers, tied
weights and reduced-precision parameters; and the fall-backs, said by name."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pandas as pd
import pytest
import torch
from torch import Tensor, nn
from zoo import ZOO, same_as, snapshot

from bitlab.campaigns.census import bit_census, count_above, naive_bit_census
from bitlab.campaigns.census.graph import dirty_nodes, trace_graph
from bitlab.zoo.models import resnet20


class Pair(NamedTuple):
    first: Tensor
    second: Tensor


def pack(h: Tensor) -> dict[str, Tensor]:
    """A function the trace keeps as one node (``torch.fx.wrap``) whose value is a dict."""
    return {"h": h}


def split(h: Tensor) -> Pair:
    """A function the trace keeps as one node whose value is a NamedTuple."""
    return Pair(h[:, :3], h[:, 3:])


torch.fx.wrap("pack")
torch.fx.wrap("split")


class Block18(nn.Module):
    """A torchvision-style BasicBlock: in-place ReLU, ``out += identity``, a 1x1 downsampling shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.down is None else self.down(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNet18ish(nn.Module):
    """Stem with max-pooling, two stages of :class:`Block18`, global pool, head."""

    def __init__(self, c: int = 6, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.MaxPool2d(2)
        )
        self.layer1 = Block18(c, c, 1)
        self.layer2 = Block18(c, 2 * c, 2)
        self.fc = nn.Linear(2 * c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


class Attention(nn.Module):
    """A hand-written pre-norm attention block (LayerNorm, q/k/v projections, softmax, residual), mean pool."""

    def __init__(self, d: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(4, d)
        self.norm = nn.LayerNorm(d)
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.head = nn.Linear(d, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        z = self.norm(h)
        att = torch.softmax(self.q(z) @ self.k(z).transpose(1, 2) / 8**0.5, dim=-1)
        h = h + att @ self.v(z)
        return self.head(h.mean(dim=1))


class Concat(nn.Module):
    """Two convolutional branches concatenated along the channels (Inception style), then a head."""

    def __init__(self, num_classes: int = 4) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 3, 3, padding=1)
        self.b = nn.Conv2d(1, 2, 1)
        self.bn = nn.BatchNorm2d(5)
        self.head = nn.Linear(5 * 16, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.cat([torch.relu(self.a(x)), self.b(x)], dim=1)
        return self.head(nn.functional.max_pool2d(torch.relu(self.bn(h)), 2).flatten(1))


class Untraceable(nn.Module):
    """Control flow on a tensor's value: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        return h if h.sum() > 0 else -h


class AddInPlace(nn.Module):
    """``a.add_(b)``: an in-place write whose result the graph links (``a`` read from the cache must be
    copied first when only ``b`` changed)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.b = nn.Linear(6, 4)

    def forward(self, x: Tensor) -> Tensor:
        return self.a(x).add_(self.b(x))


class HiddenWrite(nn.Module):
    """An in-place write whose result is not used (``out.add_(x)``, then ``out`` read): the graph does
    not show that the head depends on the write."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        out = self.a(x)
        out.add_(x)
        return self.head(out)


def _images(model: nn.Module, n: int, size: int, seed: int) -> list[tuple[Tensor, Tensor]]:
    """Two batches of random images labelled by the model itself (a few labels changed), BN statistics
    set from the data first (in train mode), then eval mode."""
    g = torch.Generator().manual_seed(seed)
    xs = [torch.randn(n, 1, size, size, generator=g) for _ in range(2)]
    model.train()
    with torch.no_grad():
        model(torch.cat(xs))
        model.eval()
        ys = [model(x).argmax(1) for x in xs]
    for i, y in enumerate(ys):
        y[:: 4 + i] = (y[:: 4 + i] + 1) % 4
    return list(zip(xs, ys))


def _plant(model: nn.Module, n_weights: int, seed: int) -> None:
    """Give the first visited weight of every tensor a value in [1, 2): its exponent-MSB flip reads
    back as Inf/NaN (the census's own draw: one randperm per sampled tensor)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for j, (_, p) in enumerate(model.named_parameters()):
            idx = torch.arange(p.numel())
            if n_weights < p.numel():
                idx = torch.randperm(p.numel(), generator=g)[:n_weights].sort().values
            p.view(-1)[idx[0]] = (1.0, -1.5, 1.25)[j % 3]


def _same_as_naive(model: nn.Module, data: object, **kw: object) -> pd.DataFrame:
    snap = snapshot(model)
    naive = naive_bit_census(model, data, progress=False, **kw)
    fast = bit_census(model, data, progress=False, **kw)
    pd.testing.assert_frame_equal(naive, fast, check_exact=True)
    assert count_above(naive, by=None).equals(count_above(fast, by=None))
    assert same_as(model, snap)
    return fast


def _resnet20(plant: bool = False) -> tuple[nn.Module, list[tuple[Tensor, Tensor]]]:
    torch.manual_seed(0)
    model = resnet20(width=4)
    if plant:
        _plant(model, 2, 1)
    return model, _images(model, 24, 8, 0)


def test_resnet20_exponent_bits_of_every_tensor_and_all_bits_of_two():
    model, data = _resnet20(plant=True)
    assert data and bit_census(model, data, params="fc.bias", bits=[0], progress=False).attrs["clean_accuracy"] > 0.5
    df = _same_as_naive(model, data, bits="exponent", n_weights=2, seed=1)
    assert set(df.attrs["paths"].values()) == {"graph suffix"} and df.attrs["untraced"] == ""
    assert not torch.isfinite(torch.tensor(df["flipped"].to_numpy())).all()  # Inf/NaN weights included
    assert (df["accuracy"] == 0).any() and (df["rad"] == 0).any()
    params = ["layers.1.conv2.weight", "layers.2.bn1.bias"]
    df = _same_as_naive(model, data, bits="all", params=params, n_weights=3, seed=2)
    assert len(df) == 2 * 3 * 32


def test_resnet18_style_in_place_relu_and_add_leave_the_cache_alone():
    torch.manual_seed(3)
    model = ResNet18ish()
    _plant(model, 3, 0)
    data = _images(model, 20, 8, 3)
    df = _same_as_naive(model, data, bits="exponent", n_weights=3, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}
    _same_as_naive(model, data, bits="all", params="layer2.down.0.weight", n_weights=4, seed=5)


@pytest.mark.parametrize("name", ["resnet_bn", "encoder", "recurrent", "conv1d", "tied"])
def test_zoo_models_take_the_graph(name):
    model, data = ZOO[name](0)
    df = _same_as_naive(model, data, bits="exponent", n_weights=2, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}


def test_attention_and_concatenation_all_bits():
    torch.manual_seed(0)
    att = Attention()
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(10, 5, 4, generator=g) for _ in range(2)]
    with torch.no_grad():
        data = [(x, att(x).argmax(1)) for x in xs]
    _same_as_naive(att, data, bits="all", n_weights=2, seed=0)
    torch.manual_seed(1)
    cat = Concat()
    _same_as_naive(cat, _images(cat, 16, 8, 1), bits="all", n_weights=2, seed=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_residual_network(dtype):
    model, data = ZOO["resnet_bn"](1)
    model = model.to(dtype)
    data = [(x.to(dtype), y) for x, y in data]
    df = _same_as_naive(model, data, bits="all", n_weights=2, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}


def test_untraceable_model_falls_back_to_the_full_forward_and_says_why():
    torch.manual_seed(0)
    model = Untraceable().eval()
    x = torch.randn(12, 6)
    data = [(x, model(x).argmax(1))]
    df = _same_as_naive(model, data, bits="exponent")
    assert set(df.attrs["paths"].values()) == {"full forward"}
    assert "torch.fx cannot trace Untraceable" in df.attrs["untraced"]


def test_in_place_writes_never_touch_the_cache_and_hidden_ones_fall_back():
    torch.manual_seed(0)
    x = torch.randn(12, 6)
    for cls, path in ((AddInPlace, "graph suffix"), (HiddenWrite, "full forward")):
        model = cls().eval()
        with torch.no_grad():
            data = [(x, model(x).argmax(1))]
        df = _same_as_naive(model, data, bits="all", n_weights=3, seed=0)
        assert set(df.attrs["paths"].values()) == {path}
    assert "after an in-place operation changed it" in df.attrs["untraced"]


def test_cache_limit_and_what_each_parameter_reads():
    model, data = _resnet20()
    with torch.no_grad():
        run, why = trace_graph(model, data, limit=1000)
        assert run is None and "GiB" in why and "CACHE_BYTES" in why  # the limit, and how to raise it
        run, why = trace_graph(model, data)
    assert run is not None and why == ""
    seeds, dirty = dirty_nodes(run, model.fc.weight)
    assert [n.target for n in seeds] == ["fc"] and [n.op for n in dirty] == ["call_module", "output"]
    seeds, dirty = dirty_nodes(run, model.conv.weight)
    assert len(dirty) == len([n for n in run.nodes if n.op not in ("placeholder", "get_attr")])


def test_tied_weights_recompute_every_module_that_holds_them():
    model, data = ZOO["tied"](0)
    with torch.no_grad():
        run, _ = trace_graph(model, data)
    assert run is not None
    seeds, _ = dirty_nodes(run, model.embed.weight)
    assert sorted(str(n.target) for n in seeds) == ["embed", "out"]


def test_graph_census_on_threads_equals_in_process():
    model, data = _resnet20()
    kw = dict(bits="exponent", params=["layers.0.conv1.weight", "fc.weight"], n_weights=3, seed=0, progress=False)
    serial = bit_census(model, data, **kw)
    with ThreadPoolExecutor(2) as pool:
        threaded = bit_census(model, data, executor=pool, **kw)
    pd.testing.assert_frame_equal(serial, threaded, check_exact=True)


def test_copies_of_a_refused_graph_do_not_trace_again(monkeypatch):
    """fx tracing patches nn.Module.__call__ for every thread: a thread's copy of a census whose model was
    refused must not trace next to another thread's full forward."""
    import torch.fx

    torch.manual_seed(0)
    x = torch.randn(12, 6)
    model = HiddenWrite().eval()
    with torch.no_grad():
        data = [(x, model(x).argmax(1))]
    serial = bit_census(model, data, bits="exponent", progress=False)
    assert "after an in-place operation" in serial.attrs["untraced"]
    original = torch.fx.Tracer.trace
    calls = []

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.fx.Tracer, "trace", counted)
    with ThreadPoolExecutor(2) as pool:
        threaded = bit_census(model, data, bits="exponent", batch_flips=8, executor=pool, progress=False)
    pd.testing.assert_frame_equal(serial, threaded, check_exact=True)
    assert len(calls) == 1  # the caller's trace only


def _rows(model: nn.Module, n: int = 12, width: int = 6, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    """Two batches of random rows labelled by the model (in eval mode) itself."""
    g = torch.Generator().manual_seed(seed)
    model.eval()
    xs = [torch.randn(n, width, generator=g) for _ in range(2)]
    with torch.no_grad():
        return [(x, model(x).argmax(1)) for x in xs]


class AliasWrite(nn.Module):
    """Recomputed nodes that return a cached tensor or a view of one (``view_as``, ``type_as`` of the same
    dtype) when only ``b`` changed, then written in place (``add_``, ``+=``)."""

    def __init__(self) -> None:
        super().__init__()
        self.a1, self.a2, self.b = nn.Linear(6, 4), nn.Linear(6, 4), nn.Linear(6, 4)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.b(x)
        s = self.a1(x).view_as(h).add_(h)
        t = self.a2(x).type_as(h)
        t += h
        return self.head(torch.cat([s, t], 1))


class OutKwarg(nn.Module):
    """``torch.add(c, h, out=c)``: a write into ``c`` through ``out=``."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        c = self.a(x)
        return self.head(torch.add(c, self.b(x), out=c))


class DictWrite(nn.Module):
    """A dict-valued node whose tensor is written in place, then read again from the dict."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        d = pack(self.a(x))
        d["h"].add_(self.b(x))
        return self.head(d["h"])


class DataWrite(nn.Module):
    """A write through ``.data`` (a tensor with its own version counter), then the tensor read."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(6, 4), nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        h.data.add_(self.b(x))
        return self.head(h)


class ReZero(nn.Module):
    """``h += alpha * r`` with another name on ``h`` (``keep``): with ``alpha = 0`` the clean pass
    cannot tell ``h + r`` from the in-place add, a flip of ``alpha`` can."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.r = nn.Linear(6, 6), nn.Linear(6, 6)
        self.alpha = nn.Parameter(torch.zeros(()))
        self.head = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        keep = h
        h += self.alpha * self.r(x)
        return self.head(keep + h)


class Unbatched(nn.Module):
    """A Conv2d on an unbatched ``(C, H, W)`` input (the samples are the rows of one image): its
    output channels are on dim 0."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.head = nn.Linear(3 * 6, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.conv(x.unsqueeze(0)))
        return self.head(h.permute(1, 0, 2).flatten(1))


class SharedStorage(nn.Module):
    """Parameters that are other Parameter objects on the same memory: ``b.weight`` on all of
    ``a.weight``'s, ``c.weight`` on its first three rows (a view)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)
        self.b.weight.data = self.a.weight.data
        self.c.weight.data = self.a.weight.data[:3]
        self.head = nn.Linear(15, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.cat([torch.relu(self.a(x)), self.b(x), self.c(x)], 1))


class NamedPair(nn.Module):
    """A NamedTuple-valued node."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 6)
        self.head = nn.Linear(3, 3)

    def forward(self, x: Tensor) -> Tensor:
        pair = split(self.a(x))
        return self.head(torch.relu(pair.first) * pair.second)


class TracesOtherwise(nn.Module):
    """A forward that traces another program than it runs (a branch taken only under torch.fx): the
    graph raises on the data, the model does not."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.a(x)
        if isinstance(h, torch.fx.Proxy):
            h = h.view(-1, 5)
        return self.head(h)


class UntraceableConv(nn.Module):
    """A Conv2d with more than one input channel (channels-last makes its weight non-contiguous) in a
    model fx cannot trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.mix = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.mix(torch.relu(self.conv(x))).mean(dim=(2, 3))
        return self.head(h if h.sum() > 0 else -h)


class Expanded(nn.Module):
    """A per-channel gate broadcast by ``expand_as`` (a stride-0 view) onto a feature map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.gate = nn.Linear(4, 4)
        self.head = nn.Linear(4 * 16, 4)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        g = torch.sigmoid(self.gate(h.mean(dim=(2, 3))))[:, :, None, None].expand_as(h)
        return self.head(nn.functional.max_pool2d(h * g, 2).flatten(1))


def test_recomputed_aliases_of_the_cache_are_copied_before_an_in_place_write():
    torch.manual_seed(0)
    model = AliasWrite()
    df = _same_as_naive(model, _rows(model), bits="all", params="b.weight", n_weights=3, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}


def test_out_keyword_writes_leave_the_cache_alone():
    torch.manual_seed(0)
    model = OutKwarg()
    df = _same_as_naive(model, _rows(model), bits="all", params="b.weight", n_weights=3, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}


@pytest.mark.parametrize("cls", [DictWrite, DataWrite])
def test_writes_through_a_dict_or_data_are_seen_and_fall_back(cls):
    torch.manual_seed(0)
    model = cls()
    df = _same_as_naive(model, _rows(model), bits="all", n_weights=2, seed=0)
    assert set(df.attrs["paths"].values()) == {"full forward"}
    assert "after an in-place operation changed it" in df.attrs["untraced"]


def test_in_place_add_with_another_name_on_the_tensor_falls_back():
    torch.manual_seed(0)
    model = ReZero()
    df = _same_as_naive(model, _rows(model), bits="all", params=["alpha", "r.weight"], n_weights=3, seed=0)
    assert set(df.attrs["paths"].values()) == {"full forward"}
    assert "after an in-place operation changed it" in df.attrs["untraced"]


def test_unbatched_conv_is_not_packed_along_dim_1():
    torch.manual_seed(0)
    model = Unbatched()
    df = _same_as_naive(model, _rows(model), bits="all", params=["conv.weight", "conv.bias"], n_weights=3, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}


def test_parameters_on_shared_memory_recompute_every_reader():
    torch.manual_seed(0)
    model = SharedStorage()
    data = _rows(model)
    df = _same_as_naive(model, data, bits="exponent", params=["a.weight", "c.weight"], n_weights=4, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}
    with torch.no_grad():
        run, _ = trace_graph(model, data)
    assert run is not None
    assert sorted(str(n.target) for n in dirty_nodes(run, model.c.weight)[0]) == ["a", "b", "c"]


def test_named_tuple_values_and_graphs_that_raise():
    torch.manual_seed(0)
    model = NamedPair()
    df = _same_as_naive(model, _rows(model), bits="all", n_weights=2, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}
    model = TracesOtherwise()
    df = _same_as_naive(model, _rows(model), bits="exponent", n_weights=2, seed=0)
    assert set(df.attrs["paths"].values()) == {"full forward"}
    assert "the traced graph raised RuntimeError" in df.attrs["untraced"]
    x, y = _rows(model)[0]
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):  # the model's own error, as naive
        bit_census(model, [(x, y), (x[:, :5], y)], bits="exponent", n_weights=2, progress=False)


def test_channels_last_parameters_and_expanded_values():
    model, data = ZOO["resnet_bn"](0)
    model = model.to(memory_format=torch.channels_last)
    assert not model.conv1.weight.is_contiguous()
    df = _same_as_naive(model, data, bits="exponent", params=["conv1.weight", "conv2.weight"], n_weights=3, seed=0)
    assert set(df.attrs["paths"].values()) == {"graph suffix"}
    torch.manual_seed(0)  # a float16 chain's exact paths index the flat weights: its channels-last ones take the graph
    chain = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 4))
    data = [
        (x.repeat(1, 2, 1, 1).half(), y) for x, y in _images(nn.Sequential(nn.Flatten(), nn.Linear(64, 4)), 12, 8, 0)
    ]
    chain = chain.to(memory_format=torch.channels_last, dtype=torch.float16)
    df = _same_as_naive(chain, data, bits="exponent", params=["0.weight", "2.weight", "4.weight"], n_weights=3, seed=0)
    assert df.attrs["paths"] == {"0.weight": "graph suffix", "2.weight": "graph suffix", "4.weight": "packed exact"}
    torch.manual_seed(0)
    model = UntraceableConv().to(memory_format=torch.channels_last)
    df = _same_as_naive(model, _images(model, 12, 8, 0), bits="exponent", params="mix.weight", n_weights=3, seed=0)
    assert df.attrs["paths"] == {"mix.weight": "full forward"}
    torch.manual_seed(0)
    model = Expanded()
    data = _images(model, 12, 8, 0)
    _same_as_naive(model, data, bits="exponent", n_weights=3, seed=0)
    with torch.no_grad():
        run, _ = trace_graph(model, data)
    assert run is not None
    expand = next(n for n in run.nodes if n.target == "expand_as")
    assert 0 in run.cache[0][expand].stride()  # the cached copy keeps the broadcast, not a dense copy
