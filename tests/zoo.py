"""A zoo of models that are not the book's classifiers, for testing every entry point on them.

Each factory returns ``(model, data)`` where ``data`` is a small list of ``(inputs, targets)`` batches
(``inputs`` a tensor, a tuple of tensors or a dict of keyword arguments) and is deterministic for a
given seed. :data:`ZOO` maps a name to its factory and :data:`KIND` to "classify" or "regress", and
:data:`OUTPUT` to the ``output=`` selector the model needs (None: the output is the scores tensor).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

Batches = list[tuple[object, Tensor]]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ResNetBN(nn.Module):
    """Conv stem, two residual blocks with BatchNorm, global pool, linear head (ResNet-18 style)."""

    def __init__(self, c: int = 8, num_classes: int = 4) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, c, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(c)
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.bn0(self.stem(x)))
        h = torch.relu(h + self.bn1(self.conv1(h)))
        h = torch.relu(h + self.bn2(self.conv2(h)))
        return self.head(h.mean(dim=(2, 3)))


class Encoder(nn.Module):
    """Token embedding, one stock TransformerEncoderLayer, mean pool, linear head."""

    def __init__(self, vocab: int = 16, d: int = 16, num_classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, num_classes)

    def forward(self, tokens: Tensor) -> Tensor:
        return self.head(self.layer(self.embed(tokens)).mean(dim=1))


class Recurrent(nn.Module):
    """LSTM then GRU over a sequence of feature vectors; classify from the last hidden state."""

    def __init__(self, f: int = 6, h: int = 8, num_classes: int = 3) -> None:
        super().__init__()
        self.lstm = nn.LSTM(f, h, batch_first=True)
        self.gru = nn.GRU(h, h, batch_first=True)
        self.head = nn.Linear(h, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h, _ = self.lstm(x)
        h, _ = self.gru(h)
        return self.head(h[:, -1])


class Conv1dNet(nn.Module):
    """Two Conv1d layers over a 1-D signal, global pool, linear head."""

    def __init__(self, c: int = 6, num_classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(2, c, 3, padding=1)
        self.conv2 = nn.Conv1d(c, c, 3, padding=1)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.conv2(torch.relu(self.conv1(x)))).mean(dim=2))


class Tied(nn.Module):
    """A language-model style head whose output projection is the embedding matrix (tied weights)."""

    def __init__(self, vocab: int = 12, d: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.mix = nn.Linear(d, d)
        self.out = nn.Linear(d, vocab, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, tokens: Tensor) -> Tensor:
        return self.out(torch.tanh(self.mix(self.embed(tokens).mean(dim=1))))


class DictOut(nn.Module):
    """Two keyword inputs, a dict output: ``{"logits": ..., "features": ...}``."""

    def __init__(self, num_classes: int = 3) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.b = nn.Linear(3, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, image: Tensor, meta: Tensor) -> dict[str, Tensor]:
        f = torch.relu(self.a(image) + self.b(meta))
        return {"logits": self.head(f), "features": f}


class Regressor(nn.Module):
    """A small Transformer regressor: linear input projection, encoder layer, one float per sample."""

    def __init__(self, f: int = 4, d: int = 16) -> None:
        super().__init__()
        self.proj = nn.Linear(f, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.layer(self.proj(x)).mean(dim=1)).squeeze(-1)


def _labels(model: nn.Module, inputs: list[object]) -> list[Tensor]:
    """Targets the untrained model mostly gets right: its own predictions, a few of them changed."""
    out = []
    with torch.no_grad():
        was = model.training
        model.eval()
        for i, x in enumerate(inputs):
            o = model(**x) if isinstance(x, dict) else model(*x) if isinstance(x, tuple) else model(x)
            o = o["logits"] if isinstance(o, dict) else o
            y = o.float().argmax(dim=1)
            y[:: 5 + i] = (y[:: 5 + i] + 1) % o.shape[1]
            out.append(y)
        model.train(was)
    return out


def resnet_bn(seed: int = 0) -> tuple[nn.Module, Batches]:
    torch.manual_seed(seed)
    m = ResNetBN()
    m.train()
    g = _gen(seed)
    xs = [torch.randn(16, 1, 8, 8, generator=g) for _ in range(2)]
    with torch.no_grad():  # BatchNorm statistics that are not the defaults
        m(torch.cat(xs))
    m.eval()
    return m, list(zip(xs, _labels(m, xs)))


def _classifier(
    build: Callable[[], nn.Module], inputs: Callable[[torch.Generator], object]
) -> Callable[[int], tuple[nn.Module, Batches]]:
    """A factory: ``build()`` in eval mode, built after ``torch.manual_seed(seed)``, with two batches of
    ``inputs(generator)`` labelled by :func:`_labels`."""

    def make(seed: int = 0) -> tuple[nn.Module, Batches]:
        torch.manual_seed(seed)
        m = build().eval()
        g = _gen(seed)
        xs = [inputs(g) for _ in range(2)]
        return m, list(zip(xs, _labels(m, xs)))

    return make


encoder = _classifier(Encoder, lambda g: torch.randint(0, 16, (12, 5), generator=g))
recurrent = _classifier(Recurrent, lambda g: torch.randn(12, 7, 6, generator=g))
conv1d = _classifier(Conv1dNet, lambda g: torch.randn(12, 2, 10, generator=g))
tied = _classifier(Tied, lambda g: torch.randint(0, 12, (12, 4), generator=g))
dict_out = _classifier(
    DictOut, lambda g: {"image": torch.randn(12, 5, generator=g), "meta": torch.randn(12, 3, generator=g)}
)


def regressor(seed: int = 0) -> tuple[nn.Module, Batches]:
    torch.manual_seed(seed)
    m = Regressor().eval()
    g = _gen(seed)
    xs = [torch.randn(12, 5, 4, generator=g) for _ in range(2)]
    with torch.no_grad():
        ys = [m(x) + 0.1 * torch.randn(len(x), generator=g) for x in xs]
    return m, list(zip(xs, ys))


def _cast(
    factory: Callable[[int], tuple[nn.Module, Batches]], dtype: torch.dtype
) -> Callable[[int], tuple[nn.Module, Batches]]:
    def make(seed: int = 0) -> tuple[nn.Module, Batches]:
        m, data = factory(seed)
        m = m.to(dtype)
        cast = [(x.to(dtype) if x.is_floating_point() else x, y) for x, y in data]  # type: ignore[union-attr]
        return m, cast

    return make


_mlp = _classifier(
    lambda: nn.Sequential(nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 3)), lambda g: torch.randn(12, 6, generator=g)
)


ZOO: dict[str, Callable[..., tuple[nn.Module, Batches]]] = {
    "resnet_bn": resnet_bn,
    "encoder": encoder,
    "recurrent": recurrent,
    "conv1d": conv1d,
    "tied": tied,
    "dict_out": dict_out,
    "regressor": regressor,
    "fp16": _cast(_mlp, torch.float16),
    "bf16": _cast(_mlp, torch.bfloat16),
}
KIND = {name: "regress" if name == "regressor" else "classify" for name in ZOO}
OUTPUT: dict[str, object] = {name: "logits" if name == "dict_out" else None for name in ZOO}


def forward(model: nn.Module, inputs: object) -> object:
    """Call ``model`` on one batch's inputs: a tensor, a tuple of positional tensors or a dict of keywords."""
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def snapshot(model: nn.Module) -> dict[str, object]:
    """Every parameter and buffer (cloned, bit patterns kept) and every submodule's train/eval mode."""
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "modes": [m.training for m in model.modules()],
    }


def same_as(model: nn.Module, snap: dict[str, object]) -> bool:
    """Whether ``model`` is bit for bit as :func:`snapshot` saw it (NaN payloads included)."""
    state = model.state_dict(keep_vars=True)
    saved = snap["state"]
    assert isinstance(saved, dict)
    if state.keys() != saved.keys():
        return False
    for k, v in saved.items():
        now = state[k].detach()
        if now.dtype != v.dtype or now.shape != v.shape:
            return False
        if now.is_floating_point():
            width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[now.element_size()]
            if not torch.equal(now.contiguous().view(width), v.contiguous().view(width)):
                return False
        elif not torch.equal(now, v):
            return False
    return [m.training for m in model.modules()] == snap["modes"]
