"""Sharpness-aware optimizers: minimize the loss in a neighbourhood of the weights, not only at them.

* :class:`SAM` -- Sharpness-Aware Minimization (Foret et al. 2021, eq. 2): ascend to
  ``w + eps_hat`` with ``eps_hat = rho * g / ||g||_2``, take the gradient there, step from ``w``.
  ``adaptive=True`` gives ASAM (Kwon et al. 2021): ``eps = rho * T^2 g / ||T g||_2`` with the elementwise
  scale ``T = |w| + eta``, so the neighbourhood is measured relative to each weight's size.
* :class:`SAR` -- our reading of SAR (Zhou et al. 2024): SAM whose adversarial perturbation has the shape of
  a bit-flip error -- a few weights, each changed by an amount proportional to its own magnitude.
* :func:`frozen_bn` -- undo the running-statistics update of normalization layers during a pass.
* :func:`hit_fraction` -- fraction of stored words hit by at least one flip at a bit error rate.

Both optimizers need a closure: ``opt.step(closure)`` runs ``closure`` twice (at ``w`` and at the perturbed
weights), as :func:`bitlab.training.fit` does. ``first_step()`` / ``second_step()`` are the two halves, for
custom loops. Pass ``model=`` so that BatchNorm running statistics are updated by the first (clean) pass only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["SAM", "SAR", "frozen_bn", "hit_fraction"]

_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


@contextmanager
def frozen_bn(model: nn.Module) -> Iterator[None]:
    """Inside the block, forward passes in train mode still normalize with batch statistics, but on exit
    every BatchNorm/InstanceNorm running statistic (``running_mean``, ``running_var``,
    ``num_batches_tracked``) of ``model`` is restored bit for bit, also when the block raises.

    SAM uses it for its second (perturbed) pass, so the running statistics only see the clean weights."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    saved = [
        (m, name, buf.detach().clone())
        for m in model.modules()
        if isinstance(m, _NormBase)
        for name in _RUNNING_STATS
        if (buf := getattr(m, name, None)) is not None
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, name, copy in saved:
                getattr(m, name).copy_(copy)


def hit_fraction(ber: float, width: int = 32) -> float:
    """Fraction of ``width``-bit words with at least one flipped bit when each bit flips independently with
    probability ``ber``: ``1 - (1 - ber)^width`` (about ``width * ber`` for small ``ber``). A natural value
    for :class:`SAR`'s ``fraction`` (the *occurrence* of errors)."""
    if not 0 <= ber <= 1:
        raise ValueError(f"ber must be in [0, 1], got {ber!r}")
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be an int >= 1, got {width!r}")
    if ber == 1:
        return 1.0
    return -math.expm1(width * math.log1p(-ber))


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_nonnegative(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _grad(p: Tensor) -> Tensor:
    """``p.grad``, which the caller has checked is set."""
    assert p.grad is not None
    return p.grad


class SAM(torch.optim.Optimizer):
    """Sharpness-Aware Minimization (Foret et al. 2021) around a base optimizer; ASAM when ``adaptive``.

    One step, with ``g = grad L(w)`` over *all* parameters (one global norm across param groups):

    1. ``eps = rho * g / ||g||`` (SAM, eq. 2 of Foret et al.) or ``eps = rho * T^2 g / ||T g||`` with
       ``T = |w| + eta`` elementwise (ASAM, Kwon et al. 2021);
    2. ``w <- w + eps``, recompute the gradient ``g' = grad L(w + eps)``;
    3. restore ``w`` bit for bit, then ``base_optimizer.step()`` with ``g'``.

    Args:
        params: parameters or param groups (a group may set its own ``rho`` / ``adaptive`` / ``eta``;
            the norm stays global).
        base_optimizer: an optimizer *class* (e.g. ``torch.optim.SGD``), built on the same param groups with
            ``**kwargs``; its ``param_groups`` and ``state`` are this optimizer's, so LR schedulers and
            ``opt.state[p]["momentum_buffer"]`` work as usual.
        rho: neighbourhood radius (> 0). Typical: 0.05 for SAM, 0.5-2 for ASAM.
        adaptive: ASAM instead of SAM.
        eta: ASAM's offset in ``T = |w| + eta`` (>= 0; unused by plain SAM).
        model: optional module; when given, :meth:`step` runs the perturbed pass inside
            :func:`frozen_bn`, so BatchNorm running statistics after a step equal those of the first
            (clean) forward pass alone. Without it they are updated by both passes.

    ``step(closure)`` requires a closure that zero-grads, computes the loss, calls ``backward()`` and returns
    the loss; it returns the loss at ``w`` (the first call). ``state_dict()`` is the base optimizer's
    (its state and the shared param groups, which hold ``rho`` etc.).
    """

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        eta: float = 0.01,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        self._setup(params, base_optimizer, dict(rho=rho, adaptive=adaptive, eta=eta), model, kwargs)

    # -- construction ---------------------------------------------------------------------------------
    _own_keys: tuple[str, ...] = ("rho", "adaptive", "eta")

    def _setup(
        self,
        params: Iterable[Any],
        base_optimizer: Any,
        own: dict[str, Any],
        model: nn.Module | None,
        kwargs: dict[str, Any],
    ) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)):
            raise TypeError(
                "base_optimizer must be a torch.optim.Optimizer subclass (the class, e.g. "
                f"torch.optim.SGD), got {base_optimizer!r}"
            )
        if issubclass(base_optimizer, SAM):
            raise TypeError(f"base_optimizer must not itself be SAM/SAR, got {base_optimizer.__name__}")
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
        clash = sorted(set(kwargs) & set(own))
        if clash:
            raise TypeError(f"keyword arguments {clash} are {type(self).__name__}'s own, not the base optimizer's")
        self._check_group(own)
        super().__init__(params, {**own, **kwargs})
        self.base_optimizer = base_optimizer(self.param_groups, **kwargs)
        self._link()
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model
        self._backup: dict[Tensor, Tensor] = {}  # old weights, reused across steps
        self._pending: list[Tensor] = []  # parameters currently perturbed
        self._perturbed = False

    def _link(self) -> None:
        """Share param groups and state with the base optimizer (one source of truth)."""
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_positive("rho", group["rho"])
        _check_nonnegative("eta", group["eta"])
        if "adaptive" in group and not isinstance(group["adaptive"], bool):
            raise TypeError(f"adaptive must be a bool, got {type(group['adaptive']).__name__}")

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        base = self.__dict__.get("base_optimizer")
        if base is None:  # during Optimizer.__init__
            super().add_param_group(param_group)
        else:
            for key in self._own_keys:
                param_group.setdefault(key, self.defaults[key])
            base.add_param_group(param_group)
        self._check_group(self.param_groups[-1])

    # -- the perturbation -----------------------------------------------------------------------------
    def _params_with_grad(self) -> list[tuple[dict[str, Any], Tensor]]:
        return [(group, p) for group in self.param_groups for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def perturbation(self) -> list[tuple[Tensor, Tensor]]:
        """``(param, eps)`` for every parameter with a gradient: the ascent direction of this optimizer
        (SAM: ``rho * g / ||g||``; ASAM: ``rho * T^2 g / ||T g||``; norms over all parameters)."""
        items = self._params_with_grad()
        if not items:
            return []
        scaled = []  # T g (T = 1 for plain SAM)
        for group, p in items:
            scaled.append(p.grad * (p.abs() + group["eta"]) if group["adaptive"] else p.grad)
        dev = items[0][1].device
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t).to(dev) for t in scaled]))
        inv = 1.0 / norm.clamp_min(torch.finfo(norm.dtype).tiny)
        out = []
        for (group, p), t in zip(items, scaled):
            eps = t * (group["rho"] * inv.to(p.device))
            if group["adaptive"]:
                eps.mul_(p.abs() + group["eta"])  # T^2 g
            out.append((p, eps))
        return out

    # -- the two halves of a step ---------------------------------------------------------------------
    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Save ``w`` and move to ``w + eps`` (the gradients must be those at ``w``)."""
        if self._perturbed:
            raise RuntimeError("first_step() called twice: call second_step() to restore the weights first")
        for p, eps in self.perturbation():
            old = self._backup.get(p)
            if old is None or old.shape != p.shape or old.device != p.device or old.dtype != p.dtype:
                self._backup[p] = p.detach().clone()
            else:
                old.copy_(p)
            p.add_(eps)
            self._pending.append(p)
        self._perturbed = True
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def _restore(self) -> None:
        for p in self._pending:
            p.copy_(self._backup[p])
        self._pending = []
        self._perturbed = False

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly, then take the base optimizer's step with the gradients at ``w + eps``."""
        if not self._perturbed:
            raise RuntimeError("second_step() without first_step(): there is no perturbation to undo")
        self._restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One sharpness-aware step; ``closure`` (required) zero-grads, computes the loss, calls backward and
        returns the loss. Returns the loss at the unperturbed weights."""
        if closure is None:
            raise ValueError(
                f"{type(self).__name__}.step needs closure=: a function that zero-grads, computes "
                "the loss, calls backward() and returns it (it is evaluated twice); or call "
                "first_step() and second_step() around your own forward/backward passes"
            )
        closure = torch.enable_grad()(closure)
        loss = closure()
        self.first_step(zero_grad=True)
        try:
            with frozen_bn(self.model) if self.model is not None else nullcontext():
                closure()
        except BaseException:
            self._restore()  # never leave the model at the perturbed weights
            raise
        self.second_step()
        return loss

    # -- checkpoints ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self._perturbed:
            raise RuntimeError("state_dict() between first_step() and second_step(): the weights are perturbed")
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_optimizer.load_state_dict(state_dict)
        self._link()
        for group in self.param_groups:
            self._check_group(group)


class SAR(SAM):
    """SAR -- *our reading* of Zhou et al. 2024 ("Sharpness-Aware minimization for enhancing DNNs'
    Robustness against bit-flip errors"); the paper's exact modification of SAM is not public.

    The paper starts from two observations about bit-flip errors in memory: their **occurrence** is rare
    (a fraction of about ``width * BER`` of the stored words is hit) and their **intensity** is high (a flip
    in a high-order bit -- above all the float exponent -- changes one weight by a large amount that
    scales with the weight itself: an exponent flip multiplies it by a power of two). SAM's worst case,
    an L2 ball spread thinly over all weights, has neither shape. SAR keeps SAM's two-pass step but
    takes the worst case over *bit-flip-shaped* perturbations: at most ``k`` weights change, each by at most
    ``rho * (|w_i| + eta)``::

        max  g^T eps   s.t.  ||eps||_0 <= k,  |eps_i| <= m_i := rho * (|w_i| + eta)

    whose exact solution (first order, as in SAM) is: score ``s_i = |g_i| * m_i`` (the linearized loss
    increase of perturbing weight ``i``), keep the ``k`` largest over *all* parameters, and set
    ``eps_i = sign(g_i) * m_i`` there, 0 elsewhere.

    Args:
        rho: relative intensity (> 0): ``rho = 1`` lets a hit weight double or vanish (the size of an
            exponent-LSB flip); larger values reach further along the exponent.
        fraction: occurrence, in (0, 1]: ``k = ceil(fraction * n)`` of the ``n`` weights with gradients
            (at least one). Match it to the fault model, e.g. ``hit_fraction(ber, width)``.
        eta: absolute floor of the intensity (>= 0), so that zero weights -- which a real exponent flip
            turns into large values -- can also be perturbed.
        model, base_optimizer, ``**kwargs``: as in :class:`SAM`.
    """

    _own_keys = ("rho", "fraction", "eta")

    def __init__(
        self,
        params: Iterable[Any],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 1.0,
        fraction: float = 0.01,
        eta: float = 0.01,
        model: nn.Module | None = None,
        **kwargs: Any,
    ) -> None:
        self._setup(params, base_optimizer, dict(rho=rho, fraction=fraction, eta=eta), model, kwargs)

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_positive("rho", group["rho"])
        _check_nonnegative("eta", group["eta"])
        f = group["fraction"]
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            raise ValueError(f"fraction must be a number in (0, 1], got {f!r}")

    @torch.no_grad()
    def perturbation(self) -> list[tuple[Tensor, Tensor]]:
        """``(param, eps)``: ``sign(g) * rho * (|w| + eta)`` on the global top-k of ``|g| * rho * (|w| + eta)``,
        zero elsewhere; ``k = ceil(fraction * n)`` with the largest ``fraction`` among the groups."""
        items = self._params_with_grad()
        if not items:
            return []
        mags = [group["rho"] * (p.abs() + group["eta"]) for group, p in items]
        dev = items[0][1].device
        scores = torch.cat([(_grad(p).abs() * m).reshape(-1).to(dev) for (_, p), m in zip(items, mags)])
        n = scores.numel()
        fraction = max(group["fraction"] for group, _ in items)
        k = min(n, max(1, math.ceil(fraction * n - 1e-9)))
        keep = torch.zeros(n, dtype=torch.bool, device=dev)
        keep[torch.topk(scores, k, sorted=False).indices] = True
        out, start = [], 0
        for (_, p), m in zip(items, mags):
            mask = keep[start : start + p.numel()].view_as(p).to(p.device)
            start += p.numel()
            out.append((p, torch.where(mask, _grad(p).sign() * m, torch.zeros_like(m))))
        return out
