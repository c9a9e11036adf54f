"""Training: the models that the fault pipeline tests.

* :func:`fit` -- mini-batch training; every step is ``opt.step(closure)``, so closure-based optimizers
  such as SAM (Foret et al. 2021) and SAR work unchanged. Hooks: ``regularizer(model, x, y)`` adds a
  scalar penalty to the loss (e.g. lambda * Tr(H), Pranto et al. 2025); ``adversary(model, x, y)``
  replaces the inputs (adversarial training, Fasfous et al. 2022).
* :func:`set_seed`, :func:`make_optimizer` -- the small pieces around it. Evaluation lives in
  :mod:`bitlab.evaluate`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from typing import cast

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..evaluate import correct, model_device
from ..progress import bar as progress_bar
from ..zoo.data import loader

__all__ = ["OPTIMIZERS", "OptimizerSpec", "Hook", "fit", "make_optimizer", "set_seed"]

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "rmsprop": torch.optim.RMSprop,
}

OptimizerSpec = str | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
Hook = Callable[[nn.Module, Tensor, Tensor], Tensor]


def set_seed(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(
    params: Iterable[nn.Parameter],
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    **opt_kwargs,
) -> torch.optim.Optimizer:
    """An optimizer by name (``"sgd" | "adam" | "rmsprop"``, with ``lr``, ``weight_decay`` and ``opt_kwargs``)
    or from a callable ``params -> Optimizer`` (which sets its own hyper-parameters)."""
    if isinstance(optimizer, str):
        cls = OPTIMIZERS.get(optimizer.lower())
        if cls is None:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)} or a callable params -> "
                f"torch.optim.Optimizer, got {optimizer!r}"
            )
        # every class in OPTIMIZERS takes lr and weight_decay; the base class's signature does not say so
        return cls(params, lr=lr, weight_decay=weight_decay, **opt_kwargs)  # type: ignore[call-arg]
    if callable(optimizer):
        if opt_kwargs:
            raise TypeError(
                f"optimizer keyword arguments {sorted(opt_kwargs)} only apply to a named optimizer; "
                "set them inside the optimizer callable"
            )
        opt = optimizer(params)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"optimizer callable must return a torch.optim.Optimizer, got {type(opt).__name__}")
        return opt
    raise TypeError(f"optimizer must be one of {sorted(OPTIMIZERS)} or a callable, got {type(optimizer).__name__}")


def _closure(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    regularizer: Hook | None,
    first: dict[str, Tensor],
) -> Callable[[], Tensor]:
    """The step closure on one batch: cross-entropy (+ penalty), backward; the first evaluation's
    loss, logits and penalty are kept in ``first`` (SAM-style optimizers evaluate it twice)."""

    def closure() -> Tensor:
        opt.zero_grad(set_to_none=True)
        out = model(x)
        ce = F.cross_entropy(out, y)
        loss = ce
        pen = None
        if regularizer is not None:
            pen = regularizer(model, x, y)
            loss = loss + pen
        if not first:
            first.update(ce=ce.detach(), out=out.detach())
            if pen is not None:
                first["pen"] = pen.detach()
        loss.backward()
        return loss

    return closure


def fit(
    model: nn.Module,
    data: Dataset | DataLoader,
    *,
    epochs: int = 30,
    optimizer: OptimizerSpec = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
    regularizer: Hook | None = None,
    adversary: Hook | None = None,
    progress: bool | None = None,
    **opt_kwargs,
) -> pd.DataFrame:
    """Train ``model`` on ``data`` with cross-entropy for ``epochs`` epochs; returns one row per epoch with
    ``epoch, loss, train_acc, seconds`` (plus ``penalty`` when a ``regularizer`` is given).

    ``loss`` is the mean cross-entropy and ``train_acc`` the running accuracy over the epoch's batches, both
    from the first closure evaluation of each step (on the adversarial inputs when ``adversary`` is given).
    A Dataset is shuffled by a generator seeded with ``seed``; a DataLoader is used as it is. Parameters are
    initialized by the caller; ``seed`` also seeds torch's global generator (dropout, adversary noise).
    The model is left in eval mode.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not weight_decay >= 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    for name, hook in (("regularizer", regularizer), ("adversary", adversary)):
        if hook is not None and not callable(hook):
            raise TypeError(f"{name} must be a callable (model, x, y) -> tensor or None, got {type(hook).__name__}")
    if isinstance(data, DataLoader):
        batches = data
    elif isinstance(data, Dataset):
        batches = loader(data, batch_size=batch_size, shuffle=True, seed=seed)
    else:
        raise TypeError(f"data must be a torch Dataset or DataLoader, got {type(data).__name__}")

    torch.manual_seed(seed)
    opt = make_optimizer(model.parameters(), optimizer, lr=lr, weight_decay=weight_decay, **opt_kwargs)
    device = model_device(model)
    rows = []
    bar = progress_bar(range(1, epochs + 1), progress, desc="fit", unit="epoch")
    for epoch in bar:
        model.train()
        start = time.perf_counter()
        tot_loss = tot_pen = 0.0
        hits = seen = 0
        for x, y in batches:
            x, y = x.to(device), y.to(device)
            if adversary is not None:
                x = adversary(model, x, y).detach()
                model.train()
            first: dict[str, Tensor] = {}
            # torch's stubs type the closure as returning float; optimizers call it for its loss tensor
            opt.step(cast(Callable[[], float], _closure(model, opt, x, y, regularizer, first)))
            if not first:
                raise RuntimeError(f"optimizer {type(opt).__name__}.step(closure) never called the closure")
            n = len(y)
            tot_loss += float(first["ce"]) * n
            if "pen" in first:
                tot_pen += float(first["pen"]) * n
            hits += int(correct(first["out"], y).sum())
            seen += n
        row = {
            "epoch": epoch,
            "loss": tot_loss / seen,
            "train_acc": hits / seen,
            "seconds": time.perf_counter() - start,
        }
        if regularizer is not None:
            row["penalty"] = tot_pen / seen
        rows.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", acc=f"{row['train_acc']:.3f}")
    model.eval()
    return pd.DataFrame(rows)
