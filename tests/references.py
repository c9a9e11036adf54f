"""Independent references shared by the tests: the dense Hessian of a loss over a model's parameters,
by ``torch.autograd.functional.hessian`` on the parameters flattened into one vector."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn


def flat_hessian(
    model: nn.Module,
    loss_of: Callable[[dict[str, Tensor]], Tensor],
    names: Sequence[str] | None = None,
    vectorize: bool = False,
) -> Tensor:
    """Dense Hessian of ``loss_of(params)`` (a scalar from a name -> tensor dict, e.g. through
    ``torch.func.functional_call``) over the named parameters (default all), flattened in model order."""
    params = dict(model.named_parameters())
    names = list(names or params)
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(flat: Tensor) -> Tensor:
        ps, i = dict(params), 0
        for n in names:
            k = params[n].numel()
            ps[n] = flat[i : i + k].reshape(params[n].shape)
            i += k
        return loss_of(ps)

    return torch.autograd.functional.hessian(f, flat0, vectorize=vectorize)
