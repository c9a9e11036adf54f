"""L-infinity input attacks and adversarial training hooks (the robust models of Fasfous et al. 2022).

* :func:`fgsm` -- fast gradient sign method, Goodfellow et al. 2015: ``x + eps * sign(grad_x L)``.
* :func:`pgd` -- projected gradient descent, Madry et al. 2018 (Eq. 2): from a uniform random start in the
  eps-ball, ``steps`` times ``x <- Proj_{B_inf(x0, eps)}(x + alpha * sign(grad_x L))``.
* :func:`robust_accuracy` -- accuracy on the attacked inputs.
* :func:`pgd_adversary`, :func:`fgsm_adversary` -- callables ``(model, x, y) -> x_adv`` for
  ``bitlab.training.fit(..., adversary=...)`` (Madry-style adversarial training).

The loss is the cross-entropy. Every attack runs the model in eval mode (BatchNorm uses its running
statistics and is not updated by the attack) and puts the model back in its previous mode afterwards;
only the input gradient is computed, the parameters' ``.grad`` are left alone.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..evaluate import Output, eval_mode, materialize, model_device, pick
from ..evaluate import correct as predicted_right

__all__ = ["fgsm", "pgd", "robust_accuracy", "pgd_adversary", "fgsm_adversary"]

Clamp = tuple[float, float] | None
Adversary = Callable[[nn.Module, Tensor, Tensor], Tensor]


def _check_eps(eps: object) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0 or eps == float("inf"):
        raise ValueError(f"eps: expected a finite number >= 0 (an L-inf radius), got {eps!r}")
    return float(eps)


def _check_steps(steps: object) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected an int >= 1, got {steps!r}")
    return steps


def _check_clamp(clamp: object) -> Clamp:
    if clamp is None:
        return None
    if not (isinstance(clamp, (tuple, list)) and len(clamp) == 2 and float(clamp[0]) <= float(clamp[1])):
        raise ValueError(f"clamp: expected None or a (low, high) pair with low <= high, got {clamp!r}")
    return float(clamp[0]), float(clamp[1])


def _step_size(step_size: float | None, eps: float, steps: int) -> float:
    if step_size is None:
        return 2.5 * eps / steps
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not step_size >= 0:
        raise ValueError(f"step_size: expected None (2.5 * eps / steps) or a number >= 0, got {step_size!r}")
    return float(step_size)


def _project(x_adv: Tensor, x: Tensor, eps: float, clamp: Clamp) -> Tensor:
    x_adv = torch.max(torch.min(x_adv, x + eps), x - eps)
    return x_adv.clamp(*clamp) if clamp is not None else x_adv


def _input_grad(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y)
        (g,) = torch.autograd.grad(loss, [x])
    return g


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, clamp: Clamp = (0.0, 1.0)) -> Tensor:
    """FGSM (Goodfellow et al. 2015, Eq. 3): ``clamp(x + eps * sign(grad_x CE(model(x), y)))``.
    The model runs in eval mode; its previous mode is restored."""
    eps, clamp = _check_eps(eps), _check_clamp(clamp)
    with eval_mode(model):
        x0 = x.detach()
        if eps == 0:
            return x0.clamp(*clamp) if clamp is not None else x0.clone()
        g = _input_grad(model, x0, y)
        return _project(x0 + eps * g.sign(), x0, eps, clamp).detach()


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    random_start: bool = True,
    clamp: Clamp = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> Tensor:
    """PGD (Madry et al. 2018): ``steps`` signed-gradient ascent steps of size ``step_size`` (default
    ``2.5 * eps / steps``) on the cross-entropy, each projected onto the L-inf ball of radius ``eps``
    around ``x`` and onto ``clamp``; with ``random_start`` the search starts at a uniform point of the
    ball drawn from ``generator``. Returns the last iterate (in the ball and the clamp range)."""
    eps, steps, clamp = _check_eps(eps), _check_steps(steps), _check_clamp(clamp)
    alpha = _step_size(step_size, eps, steps)
    with eval_mode(model):
        x0 = x.detach()
        x_adv = x0.clone()
        if random_start and eps > 0:
            dev = generator.device if generator is not None else x0.device
            noise = torch.rand(x0.shape, generator=generator, device=dev, dtype=x0.dtype).to(x0.device)
            x_adv = x0 + (2 * noise - 1) * eps
        x_adv = _project(x_adv, x0, eps, clamp)
        if eps == 0:
            return x_adv
        for _ in range(steps):
            g = _input_grad(model, x_adv, y)
            x_adv = _project(x_adv + alpha * g.sign(), x0, eps, clamp)
        return x_adv.detach()


class Picked(nn.Module):
    """``model`` whose forward returns the tensor ``output`` picks (:func:`bitlab.evaluate.pick`)."""

    def __init__(self, model: nn.Module, output: Output) -> None:
        super().__init__()
        self.model, self.output = model, output

    def forward(self, *args: object, **kwargs: object) -> Tensor:
        return pick(self.model(*args, **kwargs), self.output)


def robust_accuracy(
    model: nn.Module,
    data: object,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    attack: str = "pgd",
    random_start: bool = True,
    clamp: Clamp = (0.0, 1.0),
    batch_size: int = 256,
    seed: int = 0,
    output: Output = None,
) -> float:
    """Fraction of ``data`` still classified correctly after the ``attack`` (``"pgd"`` or ``"fgsm"``) of
    radius ``eps``; NaN/Inf logits count as wrong. PGD's random starts come from a generator seeded with
    ``seed``, so the result is deterministic. The model's mode is restored. ``output`` picks the logits
    from a tuple/dict output; the inputs must be one tensor (the attack perturbs it)."""
    _check_eps(eps)
    _check_steps(steps)
    if attack not in ("pgd", "fgsm"):
        raise ValueError(f"attack: {attack!r}; allowed 'pgd', 'fgsm'")
    device = model_device(model)
    gen = torch.Generator(device=device).manual_seed(seed)
    correct = seen = 0
    scored = model if output is None else Picked(model, output)
    with eval_mode(model):
        for x, y in materialize(data, batch_size):
            if not isinstance(x, Tensor):
                raise TypeError(
                    f"data: robust_accuracy perturbs one input tensor per batch, got {type(x).__name__} inputs"
                )
            x, y = x.to(device), y.to(device)
            if attack == "pgd":
                x_adv = pgd(scored, x, y, eps, steps, step_size, random_start, clamp, gen)
            else:
                x_adv = fgsm(scored, x, y, eps, clamp)
            with torch.no_grad():
                out = scored(x_adv)
            correct += int(predicted_right(out, y).sum())
            seen += len(y)
    if seen == 0:
        raise ValueError("data: is empty")
    return correct / seen


def pgd_adversary(
    eps: float,
    steps: int = 7,
    step_size: float | None = None,
    seed: int = 0,
    random_start: bool = True,
    clamp: Clamp = (0.0, 1.0),
) -> Adversary:
    """``(model, x, y) -> pgd(model, x, y, ...)`` for ``bitlab.training.fit(adversary=...)`` (Madry et al. 2018
    adversarial training). One generator, seeded with ``seed``, supplies the random starts of all batches,
    so a training run is reproducible. The attack runs in eval mode (BatchNorm statistics are not updated
    by it) and the model's mode is restored; ``fit`` trains on the returned inputs in train mode."""
    _check_eps(eps)
    _check_steps(steps)
    _check_clamp(clamp)
    _step_size(step_size, float(eps), steps)
    gens: dict[torch.device, torch.Generator] = {}

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if x.device not in gens:
            gens[x.device] = torch.Generator(device=x.device).manual_seed(seed)
        return pgd(model, x, y, eps, steps, step_size, random_start, clamp, gens[x.device])

    return adversary


def fgsm_adversary(eps: float, clamp: Clamp = (0.0, 1.0)) -> Adversary:
    """``(model, x, y) -> fgsm(model, x, y, eps)`` for ``bitlab.training.fit(adversary=...)``."""
    _check_eps(eps)
    _check_clamp(clamp)

    def adversary(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        return fgsm(model, x, y, eps, clamp)

    return adversary
