# %% [markdown]
# # 03 · Quantized adversarially trained CNNs and activation faults
#
# **Paper.** Nael Fasfous, Lukas Frickenstein, Michael Neumeier, Manoj Rohit Vemparala, Alexander Frickenstein,
# Emanuele Valpreda, Maurizio Martina, Walter Stechele (2022), *Mind the Scaling Factors: Resilience Analysis
# of Quantized Adversarially Robust CNNs* (DATE 2022).
#
# **The question.** Adversarial training makes a CNN robust to small *input* perturbations. Does it also make
# the network, once quantized for an accelerator, robust to *hardware* faults, i.e. bit flips in the stored
# activations? The paper says no: adversarially trained CNNs are *less* resilient, because their weight and
# activation distributions change, the quantization **scale factors** grow, and a flipped high bit of an
# integer activation then injects a larger error (`±2^k · s`). A stronger **weight decay** for the
# adversarially trained model restores the resilience and keeps the adversarial robustness. Headline:
# ResNet-56 on CIFAR-10, **fault resilience +25%** in large activation bit-flip campaigns, with slightly
# better accuracy and adversarial robustness.
#
# **What you will learn**
# - how an 8-bit quantized network stores activations, and why one flipped bit costs `2^k` times the layer's
#   scale factor; the symmetric int8 quantizer and PGD, each written from scratch and checked against bitlab;
# - how to train vanilla and PGD-adversarial ResNet-20s, and measure their clean and robust accuracy;
# - how to run activation bit-flip campaigns (`bl.campaign.activation_sweep`) and weight bit-flip campaigns
#   on the same integer model, and summarize "fault resilience" in one number (`resilience_auc`);
# - what weight decay does to the scale factors and to resilience;
# - whether scale factors predict resilience across three models (MLP, small CNN, ResNet), after
#   post-training quantization (PTQ) and after quantization-aware training (QAT);
# - which of the paper's claims hold on a small problem, with verdicts computed from confidence intervals.
#
# The full text of the paper was not available to us. The fault model (i.i.d. flips of the 8-bit input
# activations of every conv/linear layer, drawn afresh per inference), the resilience metric and the training
# recipe are our reading; they are marked as such below.

# %% tags=["parameters"]
SCALE = "small"            # "paper": CIFAR-10 and ResNet-56 on a GPU
SMOKE = False              # True (at the paper scale): the paper path for a few steps on tiny synthetic data, as CI runs it
SEEDS = [0, 1, 2]
WIDTH = 8                  # ResNet-20 base width (16 is the standard; 8 keeps adversarial training cheap)
EPOCHS = 10
XEPOCHS = 40               # epochs of the MLP and the small CNN of section 8
BATCH = 128
EPS = 0.2                  # L-inf radius of PGD on [0, 1] inputs (digits are 8x8 with 17 gray levels)
TRAIN_STEPS = 2            # PGD steps during adversarial training
EVAL_STEPS = 5             # PGD steps when measuring robust accuracy
WD_GRID = [3e-2, 1e-1]   # weight decays tried for the adversarially trained model (seed 0, validation data)
RATES = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]   # activation / weight bit error rates
TRIALS = 3                 # fault draws per rate, model and seed
SIGN_FLIPS = [2, 8]    # sign-bit flips per inference (mechanism check)

# %%
import copy

import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
from matplotlib.lines import Line2D
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

import bitlab as bl
from bitlab.report import Claim
from bitlab.zoo.scale import check_scale, paper_data
from bitlab.training.adversarial import pgd, pgd_adversary, robust_accuracy
from bitlab.training.quant import (dequantize, fake_quantize, quantize, quantize_model, scale_report,
                                   weight_scale)
from bitlab.campaigns import activation_sweep, resilience_auc

bl.plot.style()
torch.set_num_threads(1)  # small convolutions gain little from a second thread on a busy machine

check_scale(SCALE, SMOKE, ("small", "paper"))
DEVICE = bl.train.pick_device()   # CUDA when available; every campaign runs on the model's device
PAPER_EPOCHS, PAPER_STEPS, PAPER_WD_GRID, PAPER_XEPOCHS = 100, 7, [1e-3, 5e-3, 1e-2], 30
# The paper run trains ResNet-56 with Adam for PAPER_EPOCHS epochs of 45k images; its cost per step is
# estimated from He et al.'s recipe (bitlab.training.recipes), PGD training costing 1 + steps passes. The MLP
# and small CNN of section 8 are costed with the book's small-CNN MNIST recipe at PAPER_XEPOCHS epochs (an
# estimate; QAT's fake-quantization overhead is not included):
r56 = bl.train.recipe("resnet56-cifar10", iterations=PAPER_EPOCHS * 45_000 // 128)
r_small = bl.train.recipe("small-cnn-mnist", iterations=PAPER_XEPOCHS * 45_000 // 128)
print("paper run (SCALE = 'paper'): what it trains, and for how long on one GPU (the fault campaigns not included):")
print(bl.train.paper_plan([("vanilla ResNet-56", r56, len(SEEDS), 1),
                           ("PGD-trained ResNet-56 (+ the weight-decay grid)", r56,
                            2 * len(SEEDS) - 1 + len(PAPER_WD_GRID), 1 + PAPER_STEPS),
                           ("QAT ResNet-56, vanilla (section 8)", r56, 1, 1),
                           ("QAT ResNet-56, PGD-trained (section 8)", r56, 1, 1 + PAPER_STEPS),
                           ("MLP + small CNN, vanilla, PTQ and QAT (section 8)", r_small, 4, 1),
                           ("MLP + small CNN, PGD-trained, PTQ and QAT (section 8)", r_small, 4, 1 + PAPER_STEPS),
                           ]).to_string(index=False))

if SCALE == "paper":   # Fasfous et al.: CIFAR-10, ResNet-56, PGD with radius 8/255
    data = paper_data("cifar10", smoke=SMOKE)
    build = lambda: bl.models.resnet56(3, 10)
    EPOCHS, EPS, TRAIN_STEPS, EVAL_STEPS = PAPER_EPOCHS, 8 / 255, PAPER_STEPS, 20
    WD_GRID, TRIALS, SIGN_FLIPS, XEPOCHS = PAPER_WD_GRID, 50, [1, 10, 100], PAPER_XEPOCHS
    RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4]
    RESNET = "ResNet-56"
    XMODELS = {"MLP": lambda: bl.models.mlp(3 * 32 * 32, (256, 128), 10),
               "small CNN": lambda: bl.models.small_cnn(3, 10, input_size=32), RESNET: build}
else:
    data = bl.data.digits(seed=0)
    build = lambda: bl.models.resnet20(in_channels=1, num_classes=10, width=WIDTH)
    RESNET = f"ResNet-20 (width {WIDTH})"
    XMODELS = {"MLP": lambda: bl.models.mlp(64, (32,), 10), "small CNN": lambda: bl.models.small_cnn(1, 10, 8),
               RESNET: build}
if SMOKE:   # the paper configuration, a few steps of everything (PGD cut to 2 steps): the numbers mean nothing
    SEEDS, EPOCHS, TRAIN_STEPS, EVAL_STEPS, WD_GRID, TRIALS, RATES = [0], 1, 2, 2, WD_GRID[:1], 1, RATES[-2:]
    XEPOCHS = 1
calib = data.train.tensors[0][:256].to(DEVICE)   # calibration images for the activation scales
WDN = "adversarial + weight decay"
NAMES = ["vanilla", "adversarial", WDN]

# %% [markdown]
# ## 1. What one flipped activation bit does
#
# `quantize_model` turns a float model into its 8-bit integer counterpart (weights per tensor, and the
# *input activation* of every conv/linear layer with one scale `s` per layer, calibrated as `max|x| / 127` on
# 256 training images; BatchNorm stays in float). An activation is stored as a two's complement word `q` and
# read as `q · s`. A flip of bit `k < 7` adds `±2^k · s`; a flip of the sign bit (bit 7) adds `−128 · s` to a
# non-negative value. After a ReLU every stored activation is `>= 0`, so the sign flip turns a small positive
# activation into a large negative one: the larger `s`, the larger the injected error.

# %%
# NBVAL_CHECK_OUTPUT
q = 5   # a small activation level, 5 s
rows = [{"bit": k, "word before": f"{q & 0xFF:08b}", "word after": f"{(q ^ (1 << k)) & 0xFF:08b}",
         "level after": ((q ^ (1 << k)) & 0xFF) - (256 if (q ^ (1 << k)) & 0x80 else 0)} for k in range(8)]
t = pd.DataFrame(rows).set_index("bit")
t["change (in units of s)"] = t["level after"] - q
t

# %% [markdown]
# **The int8 quantizer, from scratch.** Symmetric per-tensor quantization needs four lines: the scale maps the
# largest magnitude to level 127, every value is divided by it, rounded (half to even) and clamped to
# `[-127, 127]`; the integer layer then computes with `q · s`. We write it out, then check it against
# bitlab's `weight_scale` / `quantize` / `dequantize`, against `bl.Int(8)` (the format the weight campaigns
# of section 6 flip) and against what `quantize_model` stores, on every layer of a freshly initialized model.
# The division is done in float64, as bitlab does, so that the rounding agrees bit for bit.

# %%
def int8_scratch(w):
    s = w.abs().max() / 127                                     # the largest |w| maps to level 127
    q = torch.round(w.double() / s.double()).clamp(-127, 127)   # round half to even, saturate
    return q.long(), s, (q * s.double()).float()                # levels, scale, what the layer computes with

torch.manual_seed(SEEDS[0])
fresh = build().to(DEVICE)
qm_fresh = quantize_model(fresh, calib)
for name in qm_fresh.weight_layers:
    w = fresh.get_submodule(name).weight.detach()
    q, s, w_hat = int8_scratch(w)
    assert torch.equal(s, weight_scale(w)) and torch.equal(q, quantize(w, s)) and torch.equal(w_hat, dequantize(q, s))
    assert torch.equal(q, qm_fresh.weight_int(name)) and torch.equal(w_hat, qm_fresh.model.get_submodule(name).weight)
    assert torch.equal(bl.Int(8).encode(w, s), q & 0xFF) and torch.equal(bl.Int(8).decode(q & 0xFF, s), w_hat)
first = qm_fresh.layers[0]   # the first conv reads the image: its activation scale is max|image| / 127
assert qm_fresh.act_scales[first] == float(calib.abs().max()) / 127
print(f"{len(qm_fresh.weight_layers)} layers: levels, scales and dequantized weights agree exactly; first conv: "
      f"weight scale {float(weight_scale(fresh.get_submodule(first).weight)):.4g}, "
      f"activation scale {qm_fresh.act_scales[first]:.4g}")

# %% [markdown]
# ## 2. Three recipes, three seeds
#
# Our training recipe (the paper's is on CIFAR-10 with ResNet-56): Adam, learning rate 1e-3, batch `BATCH`,
# `EPOCHS` epochs, ResNet-20 at base width `WIDTH`.
# - **vanilla**: no weight decay;
# - **adversarial**: Madry-style PGD training (`TRAIN_STEPS` steps, radius `EPS`, random start), no weight decay;
# - **adversarial + weight decay**: the same with a stronger weight decay (Adam's L2 penalty on every
#   parameter, BatchNorm's too), chosen by the sweep in section 3.
#
# **PGD, from scratch.** Projected gradient descent (Madry et al. 2018) starts at a uniform random point of the
# L-inf ball of radius `EPS` around the input, then takes `steps` steps of size `α = 2.5 · EPS / steps`
# (bitlab's default) along the *sign* of the input gradient of the cross-entropy, each followed by a
# projection back into the ball and into the valid input range `[0, 1]`. The model runs in eval mode
# (BatchNorm uses its running statistics). With the same random generator, the library's `pgd` and the
# training hook `pgd_adversary` must return exactly the same images (checked on the CPU, where the gradients
# are deterministic).

# %%
def pgd_scratch(model, x, y, eps, steps, gen):
    alpha = 2.5 * eps / steps
    project = lambda z: torch.min(torch.max(z, x - eps), x + eps).clamp(0, 1)   # into the ball, then [0, 1]
    x_adv = project(x + (2 * torch.rand(x.shape, generator=gen, device=gen.device) - 1) * eps)  # random start
    model.eval()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (g,) = torch.autograd.grad(F.cross_entropy(model(x_adv), y), [x_adv])
        x_adv = project(x_adv.detach() + alpha * g.sign())    # ascend the loss, project back
    return x_adv.detach()

m_cpu = copy.deepcopy(fresh).cpu()
xb, yb = data.test.tensors[0][:32].cpu(), data.test.tensors[1][:32].cpu()
ours = pgd_scratch(m_cpu, xb, yb, EPS, TRAIN_STEPS, torch.Generator().manual_seed(0))
assert torch.equal(ours, pgd(m_cpu, xb, yb, EPS, TRAIN_STEPS, generator=torch.Generator().manual_seed(0)))
assert torch.equal(ours, pgd_adversary(EPS, TRAIN_STEPS, seed=0)(m_cpu, xb, yb))   # what fit(adversary=...) trains on
assert float((ours - xb).abs().max()) <= EPS + 1e-6 and 0 <= float(ours.min()) and float(ours.max()) <= 1
with torch.no_grad():
    print(f"untrained model, 32 test images: cross-entropy {float(F.cross_entropy(m_cpu(xb), yb)):.3f} clean, "
          f"{float(F.cross_entropy(m_cpu(ours), yb)):.3f} after {TRAIN_STEPS} PGD steps "
          f"(radius {EPS:g}); ours and bitlab's agree exactly")

# %% [markdown]
# We first train the vanilla and adversarial models with `bl.train.fit(..., adversary=pgd_adversary(...))`.

# %%
def train(seed, adversarial, wd=0.0, make=None, epochs=None, fit=bl.train.fit):
    torch.manual_seed(seed)
    m = (make or build)().to(DEVICE)
    adv = pgd_adversary(EPS, TRAIN_STEPS, seed=seed) if adversarial else None
    fit(m, data.train, epochs=epochs or EPOCHS, weight_decay=wd, adversary=adv, batch_size=BATCH, seed=seed,
        progress=False)
    return m

models = {}
for seed in SEEDS:
    models["vanilla", seed] = train(seed, adversarial=False)
    models["adversarial", seed] = train(seed, adversarial=True)

# %% [markdown]
# ## 3. Choosing the weight decay
#
# The paper does not give its value here (our reading). We train the adversarial model of seed 0 with each
# weight decay of `WD_GRID` and measure, on the **validation** split, the clean and robust accuracy and the
# activation fault resilience (defined in section 5). We keep the largest resilience among the decays whose
# clean and robust validation accuracy stay within 2 points of the adversarial model without decay.

# %%
val = bl.campaign.materialize(data.val)

def val_row(name, wd, m):
    qm = quantize_model(m, calib)
    sweep = activation_sweep(qm, val, RATES, trials=TRIALS, seed=100, progress=False)
    return {"model": name, "weight decay": wd, "clean (val)": bl.train.accuracy(m, data.val),
            "robust (val)": robust_accuracy(m, data.val, EPS, EVAL_STEPS),
            "mean act. scale": scale_report(qm)["act_scale"].mean(), "act. resilience (val)": resilience_auc(sweep)}

sweep_models = {wd: train(SEEDS[0], adversarial=True, wd=wd) for wd in WD_GRID}
wd_table = pd.DataFrame([val_row("adversarial", 0.0, models["adversarial", SEEDS[0]])] +
                        [val_row(WDN, wd, m) for wd, m in sweep_models.items()]).set_index("weight decay")
base = wd_table.loc[0.0]
ok = wd_table[(wd_table.index > 0) & (wd_table["clean (val)"] >= base["clean (val)"] - 0.02)
              & (wd_table["robust (val)"] >= base["robust (val)"] - 0.02)]
WD = float(ok["act. resilience (val)"].idxmax()) if len(ok) else float(WD_GRID[0])
print(f"chosen weight decay: {WD:g}")
wd_table.round(3)

# %%
for seed in SEEDS:
    models[WDN, seed] = sweep_models[WD] if seed == SEEDS[0] else train(seed, True, WD)

# %% [markdown]
# ## 4. Accuracy, robustness and scale factors
#
# Clean test accuracy of the float and of the 8-bit model, and robust accuracy under PGD (`EVAL_STEPS`
# steps, radius `EPS`, on the float model); mean ± standard deviation over the seeds.

# %%
def mean_sd(frame, cols, by="model", fmt="{:.3f}"):
    """One row per `by` group, each cell 'mean ± sd' over the rows of the group (the seeds)."""
    g = frame.groupby(by, sort=False)[cols]
    m, s = g.mean(), g.std()
    return pd.DataFrame({c: [f"{fmt.format(a)} ± {fmt.format(b)}" for a, b in zip(m[c], s[c])] for c in cols},
                        index=m.index)

qms = {key: quantize_model(m, calib) for key, m in models.items()}
rows = []
for (name, seed), m in models.items():
    rep = scale_report(qms[name, seed])
    rows.append({"model": name, "seed": seed, "clean": bl.train.accuracy(m, data.test),
                 "clean int8": bl.train.accuracy(qms[name, seed], data.test),
                 "robust (PGD)": robust_accuracy(m, data.test, EPS, EVAL_STEPS),
                 "mean act. scale": rep["act_scale"].mean(), "max act. scale": rep["act_scale"].max(),
                 "mean weight scale": rep["weight_scale"].mean()})
acc = pd.DataFrame(rows)
mean_sd(acc, ["clean", "clean int8", "robust (PGD)"]).join(
    mean_sd(acc, ["mean act. scale", "max act. scale", "mean weight scale"], fmt="{:.4f}"))

# %%
scales = pd.concat([scale_report(q).assign(model=k[0], seed=k[1], index=range(len(q.layers)))
                    for k, q in qms.items()])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, col in zip(axes, ["act_scale", "weight_scale"]):
    for name, g in scales.groupby("model", sort=False):
        s = g.groupby("index")[col].agg(["mean", "std"])
        ax.errorbar(s.index, s["mean"], yerr=s["std"], marker="o", ms=3, capsize=2, label=name,
                    color=bl.plot.method_color(name))
    ax.set_xlabel("quantized layer (0 = first conv, last = classifier)")
    ax.set_ylabel(col.replace("_", " "))
    ax.set_yscale("log")
axes[0].set_title("activation scale s per layer (mean ± sd over seeds)")
axes[1].set_title("weight scale per layer")
axes[0].legend(fontsize="small");

# %% [markdown]
# PGD training works: the adversarial models keep about 19% of the test images under the attack where the
# vanilla ones keep about 1%, at the same clean accuracy (~94-95%). Quantization to int8 costs 0.1-0.4 points on
# average. The mean activation scale of the adversarial models is larger than the vanilla models' on every seed
# (about +20%; the largest layer scale grows by about a third), and the stronger weight decay shrinks it again
# on every seed (about −11%); the checks in section 9 test both with their confidence intervals. The weight
# scales barely move, except under weight decay (about −10%).

# %% [markdown]
# ## 5. Activation bit flips
#
# Every bit of every stored input activation of every quantized layer flips independently with probability
# `rate`, afresh for each test image (`activation_sweep(..., mode="ber")`). **Fault resilience** (our reading)
# is `resilience_auc`: the area under the mean-accuracy vs `log10(rate)` curve over the grid `RATES`, divided
# by the width of the grid, i.e. the mean accuracy over a log-spaced range of fault rates (1 = no loss, 0.1 =
# chance). The relative improvement of one model over another is the ratio of their resilience.

# %%
act = pd.concat([activation_sweep(q, data.test, RATES, trials=TRIALS, seed=seed, progress=False, label=name)
                 for (name, seed), q in qms.items()])
ax = bl.plot.accuracy_vs_ber(act, hue="model", title=f"int8 {RESNET}, bit flips in the activations")
ax.set_xlabel("activation bit error rate");

# %% [markdown]
# Here the picture turns against the paper: the **adversarial models are the more resilient ones** on every
# seed, although their scale factors are larger (resilience about 0.52 vs 0.46). Weight decay adds a little on
# top (about 0.54). Section 9 turns these numbers into verdicts.

# %%
def resilience(frame):
    return pd.DataFrame([{"model": name, "seed": seed, "resilience": resilience_auc(g)}
                         for (name, seed), g in frame.groupby(["model", "seed"], sort=False)])

act_res = resilience(act)
mean_sd(act_res, ["resilience"])

# %% [markdown]
# ## 6. Weight bit flips
#
# The same integer models with faults in their stored 8-bit *weights* instead (conv and linear weights,
# `ber_sweep(qm.model, ..., fmt=bl.Int(8))`; the activation quantizers stay on). First a check that the int8
# store of `ber_sweep` uses the same scales and levels as the quantized model.

# %%
for key, q in qms.items():
    mods = dict(q.model.named_modules())
    for n in q.layers:
        w = mods[n].weight.detach()
        assert torch.allclose(bl.Int(8).calibrate(w), q.weight_scales[n], rtol=1e-6)
        assert torch.equal(bl.Int(8).encode(w, q.weight_scales[n]), q.weight_int(n) & 0xFF)

wgt = pd.concat([bl.ber_sweep(q.model, data.test, RATES, trials=TRIALS, fmt=bl.Int(8), seed=seed,
                              params=[n + ".weight" for n in q.layers], label=name, progress=False)
                 for (name, seed), q in qms.items()])
wgt_res = resilience(wgt)
ax = bl.plot.accuracy_vs_ber(wgt, hue="model", title=f"int8 {RESNET}, bit flips in the weights")
mean_sd(wgt_res, ["resilience"])

# %% [markdown]
# ## 7. The mechanism: sign-bit flips
#
# If the scale factor decided the damage, a fixed number of sign-bit flips per inference would hurt the
# model with the larger activation scales more. `mode="flips"` flips exactly `k` sign bits per test image,
# spread over all quantized layers.

# %%
sign = pd.concat([activation_sweep(q, data.test, SIGN_FLIPS, trials=TRIALS, mode="flips", bits="sign",
                                   seed=seed, progress=False, label=name) for (name, seed), q in qms.items()])
sign_table = sign.groupby(["model", "seed", "rate"], sort=False)["accuracy"].mean().unstack("rate")
sign_table.columns = [f"accuracy, {k} sign flips" for k in sign_table.columns]
mean_sd(sign_table.reset_index(), list(sign_table.columns))

# %% [markdown]
# Eight sign-bit flips per image cost the vanilla models about 20 points (0.941 → 0.737) and the adversarial
# ones about 13 (0.947 → 0.818), although each of those flips injects a ~20% larger error into the adversarial models. A larger
# scale factor makes each flip *bigger*; how much a perturbation of a given size hurts depends on how
# sensitive the rest of the network is, and adversarial training (against input perturbations) also
# seems to make this ResNet-20 less sensitive to perturbations of its inner activations. At this scale
# the second effect wins (the sign-flip claim of section 9 checks it over the seeds).

# %% [markdown]
# ## 8. Scale factors and resilience across models, PTQ and QAT
#
# Does the scale-factor story hold beyond one ResNet? We repeat the vanilla/adversarial comparison on three
# models of `bl.models`: the digits **MLP** (64-32-10), the **small CNN** (two conv layers) and the
# **ResNet** of the sections above, each quantized in two ways:
# - **PTQ** (post-training quantization): trained in float, then `quantize_model` as above;
# - **QAT** (quantization-aware training): trained with every conv/linear weight and input activation
#   fake-quantized to int8 in the forward pass, gradients passed straight through the rounding
#   (straight-through estimator), then deployed with the same `quantize_model`. bitlab has no QAT trainer;
#   the few lines below build one from `fake_quantize` (a weight parametrization and a forward pre-hook per
#   layer, the activation scale taken from each batch's `max|x|`) around `bl.train.fit`.
#
# The MLP and the small CNN train for `XEPOCHS` epochs; the ResNet PTQ models are those of seed 0 above. One
# seed per configuration (n = 1), so each row of the table is one run. Since the two models of a pair can
# differ in clean accuracy by several points, the resilience here is **relative**: `resilience_auc(...,
# relative=True)`, the mean accuracy over the BER grid divided by the model's fault-free int8 accuracy.

# %%
class FakeQuantWeight(nn.Module):   # a parametrization: the layer computes with its int8 weight
    def forward(self, w):
        return fake_quantize(w, weight_scale(w.detach()))   # straight-through gradient

def fake_quant_input(module, args):   # the int8 input activation, scale from the batch's max|x|
    x = args[0]
    return (fake_quantize(x, x.detach().abs().amax().clamp_min(1e-12) / 127), *args[1:])

def fit_qat(m, data, **kw):
    """bl.train.fit with the int8 fake quantizers in the loop; the trained float weights are kept."""
    layers = [mod for mod in m.modules() if isinstance(mod, (nn.Conv2d, nn.Linear))]
    hooks = [mod.register_forward_pre_hook(fake_quant_input) for mod in layers]
    for mod in layers:
        parametrize.register_parametrization(mod, "weight", FakeQuantWeight())
    try:
        return bl.train.fit(m, data, **kw)
    finally:   # a plain model again, deployed by quantize_model like the PTQ ones
        for h in hooks:
            h.remove()
        for mod in layers:
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=False)

XSEED, TRAININGS = SEEDS[0], ["vanilla", "adversarial"]
rows = []
for arch, make in XMODELS.items():
    for quant in ["PTQ", "QAT"]:
        for training in TRAININGS:
            if arch == RESNET and quant == "PTQ":   # trained and measured in sections 2-5
                a = acc[(acc["model"] == training) & (acc["seed"] == XSEED)].iloc[0]
                sw = act[(act["model"] == training) & (act["seed"] == XSEED)]
                clean, robust, s = a["clean int8"], a["robust (PGD)"], a["mean act. scale"]
            else:
                m = train(XSEED, training == "adversarial", make=make, epochs=EPOCHS if arch == RESNET else XEPOCHS,
                          fit=fit_qat if quant == "QAT" else bl.train.fit)
                qm = quantize_model(m, calib)
                clean, robust = bl.train.accuracy(qm, data.test), robust_accuracy(m, data.test, EPS, EVAL_STEPS)
                s = scale_report(qm)["act_scale"].mean()
                sw = activation_sweep(qm, data.test, RATES, trials=TRIALS, seed=XSEED, progress=False)
            rows.append({"model": arch, "quantization": quant, "training": training, "clean int8": clean,
                         "robust (PGD)": robust, "mean act. scale": s, "resilience": resilience_auc(sw),
                         "relative resilience": resilience_auc(sw, relative=True, clean=clean)})
xres = pd.DataFrame(rows)
pair = xres.set_index(["model", "quantization", "training"])
v, a = pair.xs("vanilla", level="training"), pair.xs("adversarial", level="training")
xtable = pd.DataFrame({
    "clean int8: vanilla / adv.": [f"{x:.3f} / {y:.3f}" for x, y in zip(v["clean int8"], a["clean int8"])],
    "robust: vanilla / adv.": [f"{x:.3f} / {y:.3f}" for x, y in zip(v["robust (PGD)"], a["robust (PGD)"])],
    "act. scale: vanilla / adv.": [f"{x:.4f} / {y:.4f}" for x, y in zip(v["mean act. scale"], a["mean act. scale"])],
    "act. scale ratio adv. / vanilla": a["mean act. scale"] / v["mean act. scale"],
    "rel. resilience: vanilla / adv.": [f"{x:.3f} / {y:.3f}" for x, y in
                                        zip(v["relative resilience"], a["relative resilience"])],
    "resilience ratio vanilla / adv.": v["relative resilience"] / a["relative resilience"],
}, index=v.index).round(3).reset_index()
xtable["n (seeds)"] = 1
xtable

# %%
fig, ax = plt.subplots(figsize=(7, 4.4))
markers = dict(zip(XMODELS, ["o", "^", "s"]))
for (arch, quant), g in xres.groupby(["model", "quantization"], sort=False):
    g = g.set_index("training").loc[TRAININGS]
    ax.plot(g["mean act. scale"], g["relative resilience"], color="0.6", lw=1, zorder=1,
            ls="-" if quant == "PTQ" else "--")
    for training, r in g.iterrows():
        c = bl.plot.method_color(training)
        ax.scatter(r["mean act. scale"], r["relative resilience"], marker=markers[arch], s=70, zorder=2,
                   color=c if quant == "PTQ" else "white", edgecolors=c, linewidths=1.8)
handles = ([Line2D([], [], ls="", marker=mk, color="0.4", label=arch) for arch, mk in markers.items()]
           + [Line2D([], [], ls="", marker="o", color=bl.plot.method_color(t), label=t) for t in TRAININGS]
           + [Line2D([], [], ls="-", color="0.6", marker="o", mfc="0.4", mec="0.4", label="PTQ (filled)"),
              Line2D([], [], ls="--", color="0.6", marker="o", mfc="white", mec="0.4", label="QAT (hollow)")])
ax.legend(handles=handles, fontsize="small", loc="best")
ax.set_xscale("log")
ax.set_xlabel("mean activation scale factor s (over the quantized layers)")
ax.set_ylabel("relative activation fault resilience")
ax.set_title("scale factor vs resilience: vanilla → adversarial, per model (n = 1 each)");

# %% [markdown]
# Three observations; the directions are checked in section 9, the sizes are read off the table. In the MLP and the small CNN adversarial training *shrinks*
# the mean activation scale (by about a fifth and a third); only in the ResNet does it grow (about +14%).
# QAT and PTQ agree on the direction in every model, and their scale ratios differ by about 1% at most: at 8
# bits the rounding noise a QAT model sees during training is too small to change what it learns. The relative
# resilience barely moves in the MLP and the small CNN (ratios 0.98-1.01) and rises in the ResNet, the one
# model whose scales grow. The scale factor alone does not predict the activation fault resilience here.

# %% [markdown]
# ## 9. Paper vs. this notebook
#
# Each claim of the paper becomes one effect per seed of the ResNet experiment (sections 4-7), oriented so
# that the paper predicts a value beyond "no effect" (a ratio of 1, a difference of 0); the claims of the
# cross-model experiment (section 8) take one value per model (n = 3, one seed each). First the per-seed
# effects of the ResNet experiment (the last column is ours, not a claim of the paper):

# %%
per_seed = act_res.pivot(index="seed", columns="model", values="resilience")
wper_seed = wgt_res.pivot(index="seed", columns="model", values="resilience")
sc, rob, c8 = (acc.pivot(index="seed", columns="model", values=col)
               for col in ["mean act. scale", "robust (PGD)", "clean int8"])
last_sign = sign_table[f"accuracy, {SIGN_FLIPS[-1]} sign flips"].unstack("model")
effects = pd.DataFrame({
    "act. resilience: vanilla / adversarial": per_seed["vanilla"] / per_seed["adversarial"],
    "act. scale: adversarial / vanilla": sc["adversarial"] / sc["vanilla"],
    "act. scale: adv. + WD / adversarial": sc[WDN] / sc["adversarial"],
    "act. resilience: adv. + WD / adversarial": per_seed[WDN] / per_seed["adversarial"],
    "clean int8: adv. + WD − adversarial": c8[WDN] - c8["adversarial"],
    "robust: adv. + WD − adversarial": rob[WDN] - rob["adversarial"],
    f"accuracy at {SIGN_FLIPS[-1]} sign flips: vanilla − adversarial": last_sign["vanilla"] - last_sign["adversarial"],
    "weight resilience: adv. + WD / adversarial (ours)": wper_seed[WDN] / wper_seed["adversarial"],
})
effects.round(3)

# %% [markdown]
# The claims, with the verdict of `bl.report.RULE` (printed below). The paper's +25% is the only number it
# gives; it is the band of the weight-decay claim, although the paper's resilience metric is not public and
# ours (the mean accuracy over a log grid of bit error rates) may not be the same.

# %%
P, R = "Fasfous et al. 2022", f"int8 {RESNET}"
def xvalues(col, quant, num, den):   # one value per model of section 8: num's over den's
    t = xres[xres["quantization"] == quant].pivot(index="model", columns="training", values=col)
    return (t[num] / t[den]).to_numpy()

K = {   # short keys for the checks below
    "resilience": Claim(
        notebook="03", paper=P, statement="adversarial training lowers the activation fault resilience",
        paper_value="lower (ResNet-56, CIFAR-10)", values=effects.iloc[:, 0], log=True,
        unit="× (vanilla / adversarial)", note=f"{R}; resilience = mean accuracy over the log BER grid (our reading)"),
    "scale": Claim(
        notebook="03", paper=P, statement="adversarial training enlarges the activation scale factors",
        paper_value="larger (no number)", values=effects.iloc[:, 1], log=True, unit="× (adversarial / vanilla)",
        note=f"{R}; mean over the quantized layers, max calibration"),
    "wd scale": Claim(
        notebook="03", paper=P,
        statement="a stronger weight decay shrinks the activation scale factors of the adversarial model",
        paper_value="smaller (the remedy)", values=effects.iloc[:, 2], log=True, direction="less",
        unit="× (adv. + WD / adversarial)", note=f"{R}; WD = {WD:g} chosen on validation data"),
    "wd resilience": Claim(
        notebook="03", paper=P, statement="... and restores the activation fault resilience",
        paper_value="+25% (ResNet-56)", values=effects.iloc[:, 3], log=True, band=(1.25, np.inf),
        unit="× (adv. + WD / adversarial)",
        note="the paper's +25% is in its own resilience metric (not public); ours is the mean accuracy over the BER grid"),
    "wd clean": Claim(
        notebook="03", paper=P, statement="... with slightly better clean accuracy", paper_value="slightly better",
        values=effects.iloc[:, 4], unit="accuracy (adv. + WD − adversarial)", note=f"{R}, test set"),
    "wd robust": Claim(
        notebook="03", paper=P, statement="... and slightly better adversarial robustness",
        paper_value="slightly better", values=effects.iloc[:, 5], unit="accuracy (adv. + WD − adversarial)",
        note=f"PGD, {EVAL_STEPS} steps, radius {EPS:g}, float model"),
    "mechanism": Claim(
        notebook="03", paper=P,
        statement="mechanism: with larger scale factors each flipped high bit hurts the adversarial model more",
        paper_value="more damage per flip (no number)", values=effects.iloc[:, 6],
        unit=f"accuracy at {SIGN_FLIPS[-1]} sign-bit flips (vanilla − adversarial)",
        note="our test: a fixed number of sign-bit flips per inference"),
}
for quant in ["PTQ", "QAT"]:
    K[quant, "scale"] = Claim(
        notebook="03", paper=P, statement=f"across models ({quant}): adversarial training enlarges the activation "
        "scale factors", paper_value="larger (ResNet-56 only)", log=True, unit="× (adversarial / vanilla)",
        values=xvalues("mean act. scale", quant, "adversarial", "vanilla"), note=f"{', '.join(XMODELS)}; one seed each")
    K[quant, "resilience"] = Claim(
        notebook="03", paper=P, statement=f"across models ({quant}): adversarially trained int8 models are less "
        "resilient to activation flips", paper_value="lower (ResNet-56 only)", log=True,
        unit="× (vanilla / adversarial)", values=xvalues("relative resilience", quant, "vanilla", "adversarial"),
        note=f"{', '.join(XMODELS)}; relative resilience; one seed each")
claims = list(K.values())
bl.report.save_claims(claims, bl.report.results_dir(SCALE, SMOKE, root="results") / "03_claims.csv")
print(bl.report.RULE)
pd.set_option("display.max_colwidth", 300)
bl.report.claims_table(claims)

# %% [markdown]
# The checks. At every scale (not in a smoke run) the premise: PGD training gives robustness (the 95% interval
# of the robust-accuracy gain lies above 0). At the small scale, what the text of this notebook says; at the
# paper scale, the paper's claims.

# %%
if not SMOKE:
    assert bl.report.interval(rob["adversarial"] - rob["vanilla"])[1] > 0, "PGD training gives robustness"
if SCALE == "small" and not SMOKE:
    K["scale"].expect("reproduced")                    # section 4: larger activation scales ...
    K["wd scale"].expect("reproduced")                 # ... which weight decay shrinks again
    K["resilience"].expect("opposite")                 # section 5: yet the adversarial models are MORE resilient
    K["mechanism"].expect("opposite")                  # section 7: also to a fixed number of sign-bit flips
    K["wd resilience"].expect("partly")                # weight decay helps, but short of +25%
    K["wd clean"].expect("not reproduced")             # accuracy and robustness kept, not improved
    K["wd robust"].expect("not reproduced")
    for quant in ["PTQ", "QAT"]:                       # section 8: neither claim holds across the three models
        K[quant, "scale"].expect("not reproduced")
        K[quant, "resilience"].expect("not reproduced")
    # the "every seed" statements of sections 4-5 and the text below
    assert (effects.iloc[:, 1] > 1).all() and (effects.iloc[:, 2] < 1).all(), "scale changes on every seed"
    assert (effects.iloc[:, 0] < 1).all() and (effects.iloc[:, 3] > 1).all(), "resilience changes on every seed"
    # section 8: the scales shrink in the MLP and the small CNN, grow in the ResNet, under PTQ and QAT alike;
    # the ResNet is the model that becomes more resilient
    ratio = xtable.set_index(["model", "quantization"])["act. scale ratio adv. / vanilla"].unstack()
    assert (ratio.drop(index=RESNET) < 1).all().all() and (ratio.loc[RESNET] > 1).all()
    assert (xtable[xtable["model"] == RESNET]["resilience ratio vanilla / adv."] < 1).all()
elif not SMOKE:   # the paper's claims on ResNet-56 / CIFAR-10
    for key in ["scale", "wd scale", "resilience"]:
        K[key].expect("reproduced")
    K["wd resilience"].expect("reproduced", "partly")  # its direction (the +25% is in the paper's own metric)
    K["wd clean"].expect("reproduced", "not reproduced")   # accuracy and robustness kept
    K["wd robust"].expect("reproduced", "not reproduced")

# %% [markdown]
# **Reading the table.** Two of the paper's mechanisms show up on 8×8 digits with a width-8 ResNet-20:
# adversarial training enlarges the activation scale factors (about +20%), and a stronger weight decay shrinks
# them (about −11%) while keeping clean accuracy and PGD robustness (kept, not improved: both intervals
# contain 0). The paper's central claim comes out **opposite** at this scale: the adversarially trained int8
# ResNets are *more* resilient to activation bit flips than the vanilla ones (the interval of the resilience
# ratio lies entirely below 1), also to a fixed number of sign-bit flips, so a larger scale factor is not the
# whole story. The weight-decay remedy helps in the right direction on every seed, but by about +5%: **partly**,
# short of the paper's +25% (in a metric that may differ from the paper's). Across three models, with PTQ or
# QAT, neither the growth of the scale factors nor the loss of resilience holds: adversarial training shrinks
# the scales of the MLP and the small CNN, and their resilience barely moves.
#
# Our metric (the mean accuracy over a log grid of bit error rates), the fault model (every bit of every stored
# conv/linear input activation, i.i.d. per inference), Adam's L2 penalty as "weight decay", the choice of WD
# (validation sweep) and the QAT recipe (8-bit fake quantization with a straight-through estimator, batch-max
# activation scales) are our readings. The paper's ResNet-56 on CIFAR-10 (32×32 RGB, eps = 8/255, long
# training) may sit in a regime where the scale-factor effect dominates. Set `SCALE = "paper"` on a GPU to test
# that.
#
# ## Exercises
#
# 1. **Bit position.** Run `activation_sweep(..., bits="magnitude")` and `bits="sign"` at the same rate. How
#    much of the damage comes from the sign bit alone? Relate it to `128 · s` per layer.
# 2. **Percentile calibration.** Quantize with `act_method="percentile"` (e.g. 99.9): the scales shrink, the
#    largest activations saturate. Does resilience improve for every recipe, and does the ranking change?
# 3. **Which layer?** Restrict the campaign to one layer at a time (`layers=[name]`). Are the faults in the
#    first conv (the image itself), in the residual stages or in the classifier input the most harmful?
# 4. **A larger radius.** Retrain with `EPS = 0.3` and 3 PGD steps, or at `WIDTH = 16`. Do the activation scales
#    of the adversarial model grow now, and does its resilience drop below the vanilla model's?
# 5. **Decoupled decay.** Replace Adam's L2 penalty by AdamW
#    (`optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=...)`) or exclude BatchNorm from the decay.
#    Which parameters must be decayed to shrink the activation scales?
# 6. **QAT at 4 bits.** Change the 127 of `fake_quant_input` and the quantizers of `fit_qat` to 4 bits
#    (`weight_scale(w, bits=4)`, `fake_quantize(..., bits=4)`) and deploy with `quantize_model(m, calib, bits=4)`.
#    Does QAT now differ from PTQ, in accuracy and in the scale factors?
