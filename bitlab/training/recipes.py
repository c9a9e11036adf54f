"""The papers' training recipes in code, each naming its source and the accuracy it should reach, and
:func:`train_recipe`, which runs one on the model's device (CUDA when available) with optional mixed
precision, DataLoader workers and pinned memory.

The CIFAR-10 ResNets follow He et al. 2016 (*Deep Residual Learning*, Sec. 4.2): SGD with momentum
0.9, weight decay 1e-4, batch 128, learning rate 0.1 divided by 10 at 32k and 48k iterations, 64k
iterations on a 45k/5k train/val split, 4-pixel padding with random 32x32 crops and horizontal flips;
test error 8.75% (ResNet-20) and 6.97% (ResNet-56). The MNIST recipes are the book's (the papers do not
publish theirs) and say so. ResNet-50 on ImageNet is evaluated, not trained: torchvision's pretrained
weights (:mod:`bitlab.zoo.pretrained`).

The GPU times are estimates for one current data-centre GPU, not measurements (no GPU was available
where this was written); :func:`train_recipe` prints nothing and returns the measured seconds per epoch.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..evaluate import correct
from ..progress import bar as progress_bar
from ..validate import check_cpu_generator
from .loop import make_optimizer

__all__ = ["RECIPES", "Recipe", "build", "crop_flip", "paper_plan", "pick_device", "recipe", "train_recipe"]


@dataclass(frozen=True)
class Recipe:
    """One training recipe: the data set, the model builder (:mod:`bitlab.zoo.models` name and keyword
    arguments), optimizer and schedule (``iterations`` steps, learning rate times ``gamma`` at each of
    ``milestones``), augmentation, and what it should reach (``expected_accuracy`` on the test set)."""

    name: str
    source: str
    data: str
    model: str
    model_kwargs: tuple[tuple[str, object], ...]
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    iterations: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: str | None = None
    val_size: int = 5000
    expected_accuracy: float | None = None
    gpu_minutes: float | None = None  # estimate, see the module docstring

    def epochs(self, n_train: int) -> float:
        """Epochs the ``iterations`` make over ``n_train`` training examples."""
        return self.iterations * self.batch_size / n_train

    def describe(self) -> str:
        """One line: the recipe, its source and what it should reach, for a notebook's first cell."""
        acc = "" if self.expected_accuracy is None else f", expected test accuracy {self.expected_accuracy:.2%}"
        gpu = "" if self.gpu_minutes is None else f", about {self.gpu_minutes:g} min on one GPU (estimate)"
        return f"{self.name}: {self.source}{acc}{gpu}"


def _he2016(depth: int, error: float, minutes: float) -> Recipe:
    return Recipe(
        name=f"resnet{depth}-cifar10",
        source=f"He et al. 2016, Sec. 4.2 (ResNet-{depth}: {error:.2f}% test error)",
        data="cifar10",
        model=f"resnet{depth}",
        model_kwargs=(("in_channels", 3), ("num_classes", 10)),
        optimizer="sgd",
        lr=0.1,
        momentum=0.9,
        weight_decay=1e-4,
        batch_size=128,
        iterations=64_000,
        milestones=(32_000, 48_000),
        augment="crop4-flip",
        val_size=5000,
        expected_accuracy=1 - error / 100,
        gpu_minutes=minutes,
    )


def _mnist(name: str, source: str, model: str, kwargs: tuple[tuple[str, object], ...], expected: float) -> Recipe:
    """The book's Adam recipe for a small MNIST model: 20 epochs of batches of 128 on 55k images."""
    return Recipe(
        name=name,
        source=source,
        data="mnist",
        model=model,
        model_kwargs=kwargs,
        optimizer="adam",
        lr=1e-3,
        momentum=0.0,
        weight_decay=0.0,
        batch_size=128,
        iterations=8_600,
        milestones=(6_450,),
        expected_accuracy=expected,
        gpu_minutes=1,
    )


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        _he2016(20, 8.75, 30),
        _he2016(56, 6.97, 80),
        Recipe(
            name="lenet5-mnist",
            source="the book's recipe for LeNet-5 (LeCun et al. 1998 report 0.95% test error with their own "
            "second-order training; expect about 99%)",
            data="mnist",
            model="lenet5",
            model_kwargs=(),
            optimizer="sgd",
            lr=0.05,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=128,
            iterations=8_600,  # 20 epochs of 55k images
            milestones=(6_450,),
            expected_accuracy=0.99,
            gpu_minutes=2,
        ),
        _mnist(
            "mlp-mnist",
            "the book's recipe for a 784-256-128-10 MLP (Qin et al. 2017 do not publish theirs; expect about 98%)",
            "mlp",
            (("in_features", 784), ("hidden", (256, 128))),
            0.98,
        ),
        _mnist(
            "small-cnn-mnist",
            "the book's recipe for its small CNN on 28x28 MNIST (expect about 98.5%)",
            "small_cnn",
            (("in_channels", 1), ("num_classes", 10), ("input_size", 28)),
            0.985,
        ),
    )
}


def recipe(name: str, /, **changes: object) -> Recipe:
    """The recipe ``name`` of :data:`RECIPES`, with any field replaced (``recipe("resnet20-cifar10",
    iterations=200)``; the learning-rate milestones and the GPU-time estimate follow a change of ``iterations``)."""
    if name not in RECIPES:
        raise ValueError(f"recipe: {name!r}; allowed {sorted(RECIPES)}")
    base = RECIPES[name]
    if "iterations" in changes:
        ratio = float(changes["iterations"]) / base.iterations  # type: ignore[arg-type]
        if "gpu_minutes" not in changes and base.gpu_minutes is not None:
            changes["gpu_minutes"] = base.gpu_minutes * ratio
        if "milestones" not in changes:  # the schedule keeps its shape: decays at the same share of the run
            changes["milestones"] = tuple(round(m * ratio) for m in base.milestones)
    return replace(base, **changes)  # type: ignore[arg-type]


def paper_plan(rows: Sequence[tuple[str, str | Recipe, int, float]]) -> pd.DataFrame:
    """What a notebook's paper run trains, and for how long on one GPU: one row per ``(what, recipe,
    runs, cost)``, ``cost`` being the training cost relative to the recipe's plain SGD step (2 for SAM's
    two passes, 1 + PGD steps for adversarial training), with the estimated GPU minutes
    (``runs * cost * recipe.gpu_minutes`` to 0.1 min, estimates: see the module docstring) and a total row. A recipe
    is a :data:`RECIPES` name or a :class:`Recipe` (``recipe(name, **changes)``)."""
    out = []
    for what, name, runs, cost in rows:
        rec = name if isinstance(name, Recipe) else recipe(name)
        if not (isinstance(runs, int) and runs >= 1) or not cost > 0:
            raise ValueError(
                f"rows: runs must be an int >= 1 and cost > 0, got runs={runs!r}, cost={cost!r} for {what!r}"
            )
        minutes = None if rec.gpu_minutes is None else round(runs * cost * rec.gpu_minutes, 1)
        out.append({"trains": what, "recipe": rec.name, "runs": runs, "cost": cost, "GPU minutes (estimate)": minutes})
    plan = pd.DataFrame(out)
    total = {"trains": "total", "recipe": "", "runs": int(plan["runs"].sum()), "cost": float("nan")}
    total["GPU minutes (estimate)"] = plan["GPU minutes (estimate)"].sum(min_count=len(plan))
    return pd.concat([plan, pd.DataFrame([total])], ignore_index=True)


def build(rec: Recipe) -> nn.Module:
    """A fresh model of recipe ``rec`` (initialized from torch's global generator: seed it first)."""
    from ..zoo import models

    return getattr(models, rec.model)(**dict(rec.model_kwargs))


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as a torch.device; None picks CUDA when it is available, else the CPU. A CUDA device
    asked for on a machine without one is refused by name."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r}, but torch.cuda.is_available() is False here; allowed 'cpu' or None")
    return d


def crop_flip(x: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """He et al.'s CIFAR-10 augmentation on a batch ``(N, C, H, W)``: each image zero-padded by ``pad``
    pixels on every side, a random ``H x W`` crop of it taken, and flipped left-right with probability
    1/2 (offsets and flips drawn on the CPU from ``generator``, a CPU torch.Generator or None)."""
    check_cpu_generator("generator", generator)
    n, _, h, w = x.shape
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flip = torch.rand(n, generator=generator) < 0.5
    xp = F.pad(x, (pad, pad, pad, pad))
    cols = left[:, None] + torch.arange(w)[None]  # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows = (top[:, None] + torch.arange(h)[None]).to(x.device)
    cols = cols.to(x.device)
    idx = torch.arange(n, device=x.device)[:, None, None]
    return xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2).contiguous()


def train_recipe(
    model: nn.Module,
    train: Dataset,
    rec: Recipe,
    *,
    val: Dataset | None = None,
    device: str | torch.device | None = None,
    amp: bool = False,
    workers: int = 0,
    max_steps: int | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> pd.DataFrame:
    """Train ``model`` on ``train`` by recipe ``rec`` on ``device`` (default: CUDA when available), with
    cross-entropy; ``amp`` trains in mixed precision (float16 with a gradient scaler on CUDA, bfloat16
    on the CPU); ``workers`` DataLoader processes, memory pinned on CUDA; ``max_steps`` stops early (a
    smoke run). Returns one row per epoch: ``epoch, steps, loss, train_acc, lr, seconds`` and
    ``val_acc`` when ``val`` is given. The model is left on the device, in eval mode."""
    if not isinstance(rec, Recipe):
        raise TypeError(f"rec: expected a bitlab Recipe (bl.train.recipe(name)), got {type(rec).__name__}")
    if rec.augment not in (None, "crop4-flip"):
        raise ValueError(f"rec.augment: {rec.augment!r}; allowed None or 'crop4-flip'")
    dev = pick_device(device)
    model.to(dev)
    steps = rec.iterations if max_steps is None else min(rec.iterations, max_steps)
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    loader = DataLoader(
        train,
        batch_size=rec.batch_size,
        shuffle=True,
        generator=g,
        num_workers=workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=workers > 0,
    )
    kwargs = {"momentum": rec.momentum} if rec.optimizer == "sgd" else {}
    opt = make_optimizer(model.parameters(), rec.optimizer, lr=rec.lr, weight_decay=rec.weight_decay, **kwargs)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(rec.milestones), gamma=rec.gamma)
    half = torch.float16 if dev.type == "cuda" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=amp and dev.type == "cuda")
    rows, step, epoch = [], 0, 0
    bar = progress_bar(total=steps, desc=f"train {rec.name}", progress=progress)
    while step < steps:
        epoch += 1
        model.train()
        start, tot, hits, seen = time.perf_counter(), 0.0, 0, 0
        for x, y in loader:
            x, y = x.to(dev, non_blocking=True), y.to(dev, non_blocking=True)
            if rec.augment == "crop4-flip":
                x = crop_flip(x, 4, g)
            with torch.autocast(dev.type, dtype=half, enabled=amp):
                out = model(x)
                loss = F.cross_entropy(out.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
            step += 1
            tot += float(loss.detach()) * len(y)
            hits += int(correct(out.detach().float(), y).sum())
            seen += len(y)
            bar.update()
            if step >= steps:
                break
        row = {
            "epoch": epoch,
            "steps": step,
            "loss": tot / seen,
            "train_acc": hits / seen,
            "lr": opt.param_groups[0]["lr"],
            "seconds": time.perf_counter() - start,
        }
        if val is not None:
            row["val_acc"] = _accuracy(model, val, dev, rec.batch_size)
        rows.append(row)
    bar.close()
    model.eval()
    return pd.DataFrame(rows)


@torch.no_grad()
def _accuracy(model: nn.Module, data: Dataset, dev: torch.device, batch_size: int) -> float:
    model.eval()
    hits = seen = 0
    for x, y in DataLoader(data, batch_size=batch_size):
        x, y = x.to(dev), y.to(dev)
        hits += int(correct(model(x).float(), y).sum())
        seen += len(y)
    model.train()
    return hits / max(seen, 1)
