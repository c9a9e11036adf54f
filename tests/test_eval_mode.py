"""Every function that evaluates a model hands it back with each submodule in its own train/eval mode.

``model.train(was_training)`` resets every submodule to the root's mode; a model with a frozen
(eval-mode) BatchNorm inside a training-mode network would come back changed. Each entry point is run
on such a mixed-mode model, also when the evaluation raises."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bitlab as bl
from bitlab.campaigns import activation_sweep, ber_sweep, bit_census, bit_flip_attack, naive_bit_census, sweep_t
from bitlab.curvature import hutchinson_trace, top_eigenvalues
from bitlab.curvature.landscape import loss_slice, random_direction
from bitlab.evaluate import accuracy, batch_accuracy, eval_mode, evaluate, logits, materialize, predict
from bitlab.training.adversarial import fgsm, pgd, robust_accuracy
from bitlab.training.quant import calibrate_activations, quantize_model


class Residual(nn.Module):
    """Not a Sequential: a conv stem, a residual block with BatchNorm and Dropout, a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(4 * 8 * 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.stem(x))
        h = h + self.drop(self.bn(h))
        return self.head(h.flatten(1))


def _mixed() -> nn.Module:
    torch.manual_seed(0)
    m = Residual()
    m.train()
    m.bn.eval()  # frozen statistics inside a training model: the case a root-level restore breaks
    return m


def _modes(m: nn.Module) -> dict[str, bool]:
    return {name: sub.training for name, sub in m.named_modules()}


g = torch.Generator().manual_seed(1)
X, Y = torch.rand(24, 1, 8, 8, generator=g), torch.randint(0, 3, (24,), generator=g)
DATA = torch.utils.data.TensorDataset(X, Y)
LOSS = nn.CrossEntropyLoss()

CALLS = {
    "accuracy": lambda m: accuracy(m, DATA),
    "evaluate": lambda m: evaluate(m, DATA),
    "logits": lambda m: logits(m, DATA),
    "predict": lambda m: predict(m, DATA),
    "batch_accuracy": lambda m: batch_accuracy(m, materialize(DATA)),
    "ber_sweep": lambda m: ber_sweep(m, DATA, [1e-3], trials=2, progress=False),
    "naive_bit_census": lambda m: naive_bit_census(m, DATA, bits="exponent_msb", params="head.weight", n_weights=3),
    "bit_census": lambda m: bit_census(m, DATA, bits="exponent_msb", params="head.weight", n_weights=3),
    "bit_flip_attack": lambda m: bit_flip_attack(m, DATA, budget=2, attack_batch=8, progress=False),
    "sweep_t": lambda m: sweep_t(m, DATA, [None, 2.0], bl.FP32, 1e-3, trials=1, params="*.weight", progress=False),
    "loss_slice": lambda m: loss_slice(m, LOSS, DATA, random_direction(m, torch.Generator().manual_seed(0)), [0.0]),
    "robust_accuracy": lambda m: robust_accuracy(m, DATA, eps=0.1, steps=2),
    "fgsm": lambda m: fgsm(m, X, Y, eps=0.1),
    "pgd": lambda m: pgd(m, X, Y, eps=0.1, steps=2),
    "calibrate_activations": lambda m: calibrate_activations(m, X, ["head"]),
    "quantize_model": lambda m: quantize_model(m, X),
    "top_eigenvalues": lambda m: top_eigenvalues(m, LOSS, (X, Y), mode="eval"),
    "hutchinson_trace": lambda m: hutchinson_trace(m, LOSS, (X, Y), n_probes=2, mode="eval"),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_each_submodule_keeps_its_own_mode(name):
    m = _mixed()
    before = _modes(m)
    CALLS[name](m)
    assert _modes(m) == before


def test_activation_sweep_keeps_the_quantized_model_modes():
    qm = quantize_model(_mixed(), X)
    qm.train()
    qm.model.bn.eval()
    before = _modes(qm)
    activation_sweep(qm, DATA, [1e-3], trials=1, progress=False)
    assert _modes(qm) == before


def test_quantize_model_copies_each_submodule_mode():
    m = _mixed()
    qm = quantize_model(m, X)
    assert {n: s.training for n, s in qm.model.named_modules()} == _modes(m)


def test_modes_restored_when_the_evaluation_raises():
    m = _mixed()
    before = _modes(m)

    class Boom(Exception):
        pass

    def hook(*_):
        raise Boom

    h = m.head.register_forward_hook(hook)
    with pytest.raises(Boom):
        accuracy(m, DATA)
    with pytest.raises(Boom):
        ber_sweep(m, DATA, [1e-3], trials=1, progress=False)
    h.remove()
    assert _modes(m) == before
    with pytest.raises(Boom), eval_mode(m):
        assert not any(_modes(m).values())
        raise Boom
    assert _modes(m) == before


def test_a_root_level_restore_would_fail_this_test():
    """The reference the tests above rely on: restoring with model.train(flag) loses the frozen BatchNorm."""
    m = _mixed()
    before = _modes(m)
    was = m.training
    m.eval()
    m.train(was)
    assert _modes(m) != before
