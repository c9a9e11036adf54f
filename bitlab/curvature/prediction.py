"""Second-order Taylor prediction of the loss change of single-weight changes (bit flips),
``dL ~ g_i delta + 1/2 H_ii delta^2`` with the exact ``H_ii = (H e_i)_i``, next to the observed change; the
quadratic model behind Hessian-aware training (Pranto et al. 2025)."""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor, nn

from .products import Data, HessianOperator, LossFn, Vec, eval_mode, sized_mean

__all__ = ["flip_loss_prediction"]


def _mean_loss(op: HessianOperator) -> float:
    """The size-weighted mean of the batch losses over ``op``'s data (the loss the operator differentiates)."""

    def loss(batch: object) -> Vec:
        return [op.batch_loss(batch).detach().to(device="cpu", dtype=torch.float64)]

    with torch.no_grad():
        return float(sized_mean(op.batches, loss, op.loss.pairs)[0])


def _mean_grad(op: HessianOperator) -> Tensor:
    """The flat float64 gradient of the mean loss over ``op``'s data (size-weighted, as the operator)."""

    def batch_grad(batch: object) -> Vec:
        gs = op.gradient(batch, create_graph=False)
        flat = torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1) for g, p in zip(gs, op.params)])
        return [flat.detach().to(device="cpu", dtype=torch.float64)]

    return sized_mean(op.batches, batch_grad, op.loss.pairs)[0]


def flip_loss_prediction(
    model: nn.Module, loss_fn: LossFn, data: Data, flips: pd.DataFrame, observed: bool = True, mode: str = "check"
) -> pd.DataFrame:
    """Second-order Taylor prediction of the loss change caused by single-weight changes (e.g. bit flips).

    Each row of ``flips`` (columns ``param``, ``index``, ``flipped``, as in a bit census) sets weight
    ``index`` of parameter ``param`` (flat index) to ``flipped``, i.e. moves the weights by
    ``delta * e_i`` with ``delta = flipped - value``. The predicted change of the mean loss is
    ``g_i delta + 1/2 H_ii delta^2`` (``g`` the gradient, ``H_ii`` the exact diagonal element of the Hessian,
    ``(H e_i)_i`` by one Hessian-vector product per distinct weight) -- the quadratic model behind
    Hessian-aware training (Pranto et al. 2025): a small ``Tr(H) = sum_i H_ii`` makes every such term small.
    Returns a copy of ``flips`` with ``value, delta, grad, curvature, first_order, second_order, predicted``
    and, if ``observed``, ``observed`` = L(w + delta e_i) - L(w) measured with the weight set (restored
    bit for bit afterwards, also on an exception). The expansion is only meaningful for small ``delta``;
    non-finite ``flipped`` values give non-finite predictions. ``flipped`` is rounded to the parameter's
    stored dtype first (the value the weight can take). ``loss_fn`` and ``data`` take the forms of
    :class:`~.products.HessianOperator` (``(outputs, targets)`` or ``batch_loss(fn)``); forwards run under
    the math attention kernel, and a float16/bfloat16 model is evaluated on its float32 copy (the weight
    set there), so ``observed`` and ``predicted`` describe the same function."""
    if not isinstance(flips, pd.DataFrame):
        raise TypeError(
            f"flips must be a pandas DataFrame with columns param, index, flipped, got {type(flips).__name__}"
        )
    missing = [c for c in ("param", "index", "flipped") if c not in flips.columns]
    if missing:
        raise ValueError(f"flips: columns {missing} are missing; expected param, index, flipped")
    if not isinstance(observed, bool):
        raise TypeError(f"observed must be a bool, got {type(observed).__name__}")
    out = flips.copy()
    if len(out) == 0:
        for c in ("value", "delta", "grad", "curvature", "first_order", "second_order", "predicted") + (
            ("observed",) if observed else ()
        ):
            out[c] = pd.Series(dtype="float64")
        return out
    names = list(dict.fromkeys(out["param"].tolist()))
    stored = {n: p.dtype for n, p in model.named_parameters()}
    named = dict(model.named_parameters())
    unknown = [n for n in names if n not in named]
    if unknown:
        raise ValueError(f"flips: params {unknown} are not parameters of the model; allowed {sorted(named)}")
    with eval_mode(model, mode):
        op = HessianOperator(model, loss_fn, data, names)
        sizes = {n: p.numel() for n, p in op.named}
        bad = [(n, i) for n, i in zip(out["param"], out["index"]) if not 0 <= int(i) < sizes[n]]
        if bad:
            raise ValueError(f"flips: index out of range for {bad[:3]} (param sizes {sizes})")
        offsets, start = {}, 0
        for n, p in op.named:
            offsets[n] = start
            start += p.numel()
        flat_pos = torch.tensor([offsets[n] + int(i) for n, i in zip(out["param"], out["index"])])
        grad = _mean_grad(op)
        # exact diagonal elements, one product per distinct weight
        diag: dict[int, float] = {}
        for j in sorted(set(flat_pos.tolist())):
            e = torch.zeros(op.n, dtype=torch.float64)
            e[j] = 1.0
            diag[j] = float(op(e)[j])
        flat_values = torch.cat([p.detach().reshape(-1).to("cpu", torch.float64) for p in op.params])
        value = flat_values[flat_pos]
        as_stored = zip(out["param"], out["flipped"])
        flipped = [float(torch.tensor(float(f), dtype=torch.float64).to(stored[n])) for n, f in as_stored]
        delta = torch.tensor(flipped, dtype=torch.float64) - value
        g = grad[flat_pos]
        h = torch.tensor([diag[j] for j in flat_pos.tolist()], dtype=torch.float64)
        out["value"] = value.numpy()
        out["delta"] = delta.numpy()
        out["grad"] = g.numpy()
        out["curvature"] = h.numpy()
        out["first_order"] = (g * delta).numpy()
        out["second_order"] = (0.5 * h * delta**2).numpy()
        out["predicted"] = out["first_order"] + out["second_order"]
        if observed:
            work = dict(op.model.named_parameters())
            with torch.no_grad():
                base = _mean_loss(op)
                changes = []
                for n, i, new in zip(out["param"], out["index"], flipped):
                    w = work[n].data.view(-1)
                    old = w[int(i)].clone()
                    try:
                        w[int(i)] = new
                        changes.append(_mean_loss(op) - base)
                    finally:
                        w[int(i)] = old
            out["observed"] = changes
    return out
