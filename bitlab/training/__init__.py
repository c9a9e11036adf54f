"""The training side: the models the fault pipeline tests.

* :mod:`.loop` -- mini-batch training with closure steps, regularizer and adversary hooks.
* :mod:`.optim` -- SAM / ASAM (Foret et al. 2021, Kwon et al. 2021) and our reading of SAR (Zhou et al. 2024).
* :mod:`.adversarial` -- FGSM / PGD attacks and adversarial-training hooks (Fasfous et al. 2022).
* :mod:`.quant` -- post-training integer quantization of weights and activations (Fasfous et al. 2022).
* :mod:`.recipes` -- the papers' training recipes in code (He et al. 2016's CIFAR-10 ResNets, MNIST
  models), run on CUDA when available with optional mixed precision (:func:`train_recipe`).

``bitlab.train`` is this package; the evaluation functions of :mod:`bitlab.evaluate` are re-exported here
so that ``bl.train.fit`` and ``bl.train.accuracy`` read side by side.
"""

from __future__ import annotations

from ..evaluate import accuracy, correct, evaluate, logits, predict
from . import adversarial, optim, quant, recipes
from .loop import OPTIMIZERS, fit, make_optimizer, set_seed
from .recipes import RECIPES, Recipe, paper_plan, pick_device, recipe, train_recipe

__all__ = [
    "fit",
    "make_optimizer",
    "set_seed",
    "OPTIMIZERS",
    "accuracy",
    "correct",
    "evaluate",
    "logits",
    "predict",
    "adversarial",
    "optim",
    "quant",
    "recipes",
    "RECIPES",
    "Recipe",
    "paper_plan",
    "pick_device",
    "recipe",
    "train_recipe",
]
