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
#   scale factor;
# - how to train vanilla and PGD-adversarial ResNet-20s, and measure their clean and robust accuracy;
# - how to run activation bit-flip campaigns (`bl.campaign.activation_sweep`) and weight bit-flip campaigns
#   on the same integer model, and summarize "fault resilience" in one number (`resilience_auc`);
# - what weight decay does to the scale factors and to resilience, and which of the paper's claims hold
#   on a small problem.
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
BATCH = 128
EPS = 0.2                  # L-inf radius of PGD on [0, 1] inputs (digits are 8x8 with 17 gray levels)
TRAIN_STEPS = 2            # PGD steps during adversarial training
EVAL_STEPS = 5             # PGD steps when measuring robust accuracy
WD_GRID = [3e-2, 1e-1]   # weight decays tried for the adversarially trained model (seed 0, validation data)
RATES = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]   # activation / weight bit error rates
TRIALS = 3                 # fault draws per rate, model and seed
SIGN_FLIPS = [2, 8]    # sign-bit flips per inference (mechanism check)

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import torch

import bitlab as bl
from bitlab.zoo.scale import check_scale, paper_data
from bitlab.training.adversarial import pgd_adversary, robust_accuracy
from bitlab.training.quant import quantize_model, scale_report
from bitlab.campaigns import activation_sweep, resilience_auc

bl.plot.style()
torch.set_num_threads(1)  # small convolutions gain little from a second thread on a busy machine

check_scale(SCALE, SMOKE, ("small", "paper"))
DEVICE = bl.train.pick_device()   # CUDA when available; every campaign runs on the model's device
PAPER_EPOCHS, PAPER_STEPS, PAPER_WD_GRID = 100, 7, [1e-3, 5e-3, 1e-2]
# The paper run trains ResNet-56 with Adam for PAPER_EPOCHS epochs of 45k images; its cost per step is
# estimated from He et al.'s recipe (bitlab.training.recipes), PGD training costing 1 + steps passes:
r56 = bl.train.recipe("resnet56-cifar10", iterations=PAPER_EPOCHS * 45_000 // 128)
print("paper run (SCALE = 'paper'): what it trains, and for how long on one GPU (the fault campaigns not included):")
print(bl.train.paper_plan([("vanilla ResNet-56", r56, len(SEEDS), 1),
                           ("PGD-trained ResNet-56 (+ the weight-decay grid)", r56,
                            2 * len(SEEDS) - 1 + len(PAPER_WD_GRID), 1 + PAPER_STEPS)]).to_string(index=False))

if SCALE == "paper":   # Fasfous et al.: CIFAR-10, ResNet-56, PGD with radius 8/255
    data = paper_data("cifar10", smoke=SMOKE)
    build = lambda: bl.models.resnet56(3, 10)
    EPOCHS, EPS, TRAIN_STEPS, EVAL_STEPS = PAPER_EPOCHS, 8 / 255, PAPER_STEPS, 20
    WD_GRID, TRIALS, SIGN_FLIPS = PAPER_WD_GRID, 50, [1, 10, 100]
    RATES = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4]
else:
    data = bl.data.digits(seed=0)
    build = lambda: bl.models.resnet20(in_channels=1, num_classes=10, width=WIDTH)
if SMOKE:   # the paper configuration, a few steps of everything (PGD cut to 2 steps): the numbers mean nothing
    SEEDS, EPOCHS, TRAIN_STEPS, EVAL_STEPS, WD_GRID, TRIALS, RATES = [0], 1, 2, 2, WD_GRID[:1], 1, RATES[-2:]
calib = data.train.tensors[0][:256].to(DEVICE)   # calibration images for the activation scales

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
# ## 2. Three recipes, three seeds
#
# Our training recipe (the paper's is on CIFAR-10 with ResNet-56): Adam, learning rate 1e-3, batch `BATCH`,
# `EPOCHS` epochs, ResNet-20 at base width `WIDTH`.
# - **vanilla**: no weight decay;
# - **adversarial**: Madry-style PGD training (`TRAIN_STEPS` steps, radius `EPS`, random start), no weight decay;
# - **adversarial + WD**: the same with a stronger weight decay (Adam's L2 penalty on every parameter,
#   BatchNorm's too), chosen by the sweep in section 3.
#
# We first train the vanilla and adversarial models.

# %%
def train(seed, adversarial, wd=0.0):
    torch.manual_seed(seed)
    m = build().to(DEVICE)
    adv = pgd_adversary(EPS, TRAIN_STEPS, seed=seed) if adversarial else None
    bl.train.fit(m, data.train, epochs=EPOCHS, weight_decay=wd, adversary=adv, batch_size=BATCH, seed=seed,
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
                        [val_row("adversarial + WD", wd, m) for wd, m in sweep_models.items()]).set_index("weight decay")
base = wd_table.loc[0.0]
ok = wd_table[(wd_table.index > 0) & (wd_table["clean (val)"] >= base["clean (val)"] - 0.02)
              & (wd_table["robust (val)"] >= base["robust (val)"] - 0.02)]
WD = float(ok["act. resilience (val)"].idxmax()) if len(ok) else float(WD_GRID[0])
print(f"chosen weight decay: {WD:g}")
wd_table.round(3)

# %%
for seed in SEEDS:
    models["adversarial + WD", seed] = sweep_models[WD] if seed == SEEDS[0] else train(seed, True, WD)
NAMES = ["vanilla", "adversarial", "adversarial + WD"]

# %% [markdown]
# ## 4. Accuracy, robustness and scale factors
#
# Clean test accuracy of the float and of the 8-bit model, and robust accuracy under PGD (`EVAL_STEPS`
# steps, radius `EPS`, on the float model).

# %%
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
acc.groupby("model", sort=False).agg(["mean", "std"]).drop(columns="seed").round(4)

# %%
scales = pd.concat([scale_report(q).assign(model=k[0], seed=k[1], index=range(len(q.layers)))
                    for k, q in qms.items()])
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
for ax, col in zip(axes, ["act_scale", "weight_scale"]):
    for name, g in scales.groupby("model", sort=False):
        s = g.groupby("index")[col].agg(["mean", "std"])
        ax.errorbar(s.index, s["mean"], yerr=s["std"], marker="o", ms=3, capsize=2, label=name)
    ax.set_xlabel("quantized layer (0 = first conv, last = classifier)")
    ax.set_ylabel(col.replace("_", " "))
    ax.set_yscale("log")
axes[0].set_title("activation scale s per layer (mean ± sd over seeds)")
axes[1].set_title("weight scale per layer")
axes[0].legend(fontsize="small");

# %% [markdown]
# PGD training works: the adversarial models keep about 19% of the test images under the attack where the
# vanilla ones keep about 1%, at the same clean accuracy (~94-95%). Quantization to int8 costs at most half a point.
# The paper's **scale-factor observation holds here**: the mean activation scale of the adversarial models is
# about 20% larger than the vanilla models' (every seed; the largest layer scale grows by about a third),
# and the stronger weight decay shrinks it again by about 11%. The weight scales barely move, except under
# weight decay (−10%).

# %% [markdown]
# ## 5. Activation bit flips
#
# Every bit of every stored input activation of every quantized layer flips independently with probability
# `rate`, afresh for each test image (`activation_sweep(..., mode="ber")`). **Fault resilience** (our reading)
# is `resilience_auc`: the area under the mean-accuracy vs `log10(rate)` curve over the grid `RATES`, divided
# by the width of the grid, i.e. the mean accuracy over a log-spaced range of fault rates (1 = no loss, 0.1 =
# chance). The relative improvement of one model over another is the ratio of their resilience minus one.

# %%
act = pd.concat([activation_sweep(q, data.test, RATES, trials=TRIALS, seed=seed, progress=False, label=name)
                 for (name, seed), q in qms.items()])
ax = bl.plot.accuracy_vs_ber(act, hue="model", title="int8 ResNet-20, bit flips in the activations")
ax.set_xlabel("activation bit error rate");

# %% [markdown]
# Here the picture turns against the paper: the **adversarial models are the more resilient ones**,
# although their scale factors are larger (resilience about 0.52 vs 0.46, every seed). Weight decay adds a
# little on top (about 0.535).

# %%
def resilience(frame):
    return pd.DataFrame([{"model": name, "seed": seed, "resilience": resilience_auc(g)}
                         for (name, seed), g in frame.groupby(["model", "seed"], sort=False)])

act_res = resilience(act)
act_res.groupby("model", sort=False)["resilience"].agg(["mean", "std"]).round(3)

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
ax = bl.plot.accuracy_vs_ber(wgt, hue="model", title="int8 ResNet-20, bit flips in the weights")
wgt_res.groupby("model", sort=False)["resilience"].agg(["mean", "std"]).round(3)

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
sign_table.groupby("model", sort=False).agg(["mean", "std"]).round(3)

# %% [markdown]
# Eight sign-bit flips per image cost the vanilla models about 21 points and the adversarial ones about
# 12, although each of those flips injects a ~20% larger error into the adversarial models. A larger
# scale factor makes each flip *bigger*; how much a perturbation of a given size hurts depends on how
# sensitive the rest of the network is, and adversarial training (against input perturbations) also
# seems to make this ResNet-20 less sensitive to perturbations of its inner activations. At this scale
# the second effect wins.

# %% [markdown]
# ## 8. What weight decay buys, and what holds here
#
# Relative change of the resilience of the adversarial + WD model over the adversarial one, seed by seed,
# against the paper's +25%.

# %%
per_seed = act_res.pivot(index="seed", columns="model", values="resilience")
wper_seed = wgt_res.pivot(index="seed", columns="model", values="resilience")
acc_seed = acc.pivot(index="seed", columns="model")
gain_wd = per_seed["adversarial + WD"] / per_seed["adversarial"] - 1
gain_adv = per_seed["adversarial"] / per_seed["vanilla"] - 1
wgain_wd = wper_seed["adversarial + WD"] / wper_seed["adversarial"] - 1
scale_ratio = acc_seed["mean act. scale"]["adversarial + WD"] / acc_seed["mean act. scale"]["adversarial"]
adv_scale_ratio = acc_seed["mean act. scale"]["adversarial"] / acc_seed["mean act. scale"]["vanilla"]
d_rob = acc_seed["robust (PGD)"]["adversarial + WD"] - acc_seed["robust (PGD)"]["adversarial"]
d_clean = acc_seed["clean int8"]["adversarial + WD"] - acc_seed["clean int8"]["adversarial"]
pd.DataFrame({"act. resilience: WD vs adversarial": gain_wd, "act. resilience: adversarial vs vanilla": gain_adv,
              "weight resilience: WD vs adversarial": wgain_wd,
              "act. scale: WD / adversarial": scale_ratio, "act. scale: adversarial / vanilla": adv_scale_ratio}).round(3)

# %% [markdown]
# Weight decay improves the activation fault resilience of the adversarial model on every seed, but by about
# **+4%**, not the paper's +25%; the resilience against weight faults improves by a similar amount. The
# checks below hold for the committed seeds with margins taken from the measured spread (the smallest
# per-seed values were: scale ratio adversarial/vanilla 1.13, resilience gain adversarial vs vanilla +8%,
# scale ratio WD/adversarial at most 0.91, resilience gain of WD +2.9%).

# %%
rob = acc_seed["robust (PGD)"]
if not SMOKE:   # at both scales: the paper's premises
    assert (rob["adversarial"] > rob["vanilla"] + 0.1).all(), "PGD training gives robustness"
    assert (adv_scale_ratio > 1).all(), "adversarial training enlarges the activation scales"
    assert (scale_ratio < 1).all(), "weight decay shrinks the activation scales"
if SCALE == "small":   # what the narration above says holds on the digits
    assert (adv_scale_ratio > 1.05).all(), "adversarial training enlarges the activation scales (paper holds)"
    assert (gain_adv > 0.02).all(), "yet the adversarial model is MORE resilient to activation flips (paper does not hold)"
    assert (sign_table.loc["adversarial"][8] > sign_table.loc["vanilla"][8]).all(), "same for sign-bit flips"
    assert (scale_ratio < 0.95).all(), "weight decay shrinks the activation scales"
    assert (gain_wd > 0).all() and gain_wd.max() < 0.15, "weight decay helps, but far less than +25%"
    assert d_rob.mean() > -0.03 and d_clean.mean() > -0.02, "and keeps robustness and accuracy"
elif not SMOKE:   # the paper's claims: adversarial models less resilient; weight decay restores resilience
    assert (gain_adv < 0).all(), "the adversarial model is less resilient to activation flips"
    assert (gain_wd > 0).all(), "weight decay makes the adversarial model more resilient"

# %% [markdown]
# ## Paper vs. this notebook

# %%
def ms(x, fmt="{:+.3f}"):
    return f"{fmt.format(x.mean())} ± {x.std():.3f}"

rows = [
    {"claim": "adversarial training lowers the activation fault resilience of the int8 CNN",
     "paper": "yes (ResNet-56, CIFAR-10)",
     "ours (mean ± sd over seeds)": f"resilience adversarial / vanilla - 1 = {ms(gain_adv)}",
     "verdict": "reproduced" if (gain_adv < 0).all() else
                "not reproduced: the adversarial model is the more resilient one" if (gain_adv > 0).all() else
                "not reproduced: no consistent sign over seeds"},
    {"claim": "adversarial training enlarges the activation scale factors",
     "paper": "large differences between resilient and non-resilient models",
     "ours (mean ± sd over seeds)": f"mean activation scale adversarial / vanilla = {ms(adv_scale_ratio, '{:.3f}')}",
     "verdict": "reproduced" if (adv_scale_ratio > 1.1).all() else "not reproduced (within ±10%)"
                if ((adv_scale_ratio - 1).abs() < 0.1).all() else "mixed over seeds"},
    {"claim": "a stronger weight decay shrinks the scale factors of the adversarial model",
     "paper": "yes (the proposed remedy)",
     "ours (mean ± sd over seeds)": f"mean activation scale WD / adversarial = {ms(scale_ratio, '{:.3f}')} (WD = {WD:g})",
     "verdict": "reproduced" if (scale_ratio < 1).all() else "not reproduced"},
    {"claim": "... and improves activation fault resilience",
     "paper": "+25% (ResNet-56)",
     "ours (mean ± sd over seeds)": f"resilience WD / adversarial - 1 = {ms(gain_wd)}",
     "verdict": ("reproduced in sign, smaller" if gain_wd.mean() < 0.2 else "reproduced")
                if (gain_wd > 0).all() else "not reproduced"},
    {"claim": "... while keeping (slightly improving) accuracy and adversarial robustness",
     "paper": "slightly better accuracy and robustness",
     "ours (mean ± sd over seeds)": f"int8 clean {ms(d_clean)}, PGD robust {ms(d_rob)} (WD minus adversarial)",
     "verdict": ("partly: kept within noise, not clearly improved" if min(d_rob.mean(), d_clean.mean()) < 0.01
                 else "reproduced") if d_rob.mean() > -0.02 and d_clean.mean() > -0.02 else "not reproduced"},
    {"claim": "(ours) weight decay and weight bit flips",
     "paper": "not the paper's headline",
     "ours (mean ± sd over seeds)": f"weight resilience WD / adversarial - 1 = {ms(wgain_wd)}",
     "verdict": "measured"},
]
pd.set_option("display.max_colwidth", 300)
pd.DataFrame(rows).set_index("claim")

# %% [markdown]
# **Reading the table.** Two of the paper's mechanisms show up on 8×8 digits with a width-8 ResNet-20:
# adversarial training enlarges the activation scale factors (~+20%), and a stronger weight decay shrinks
# them (~−11%) while keeping clean accuracy and PGD robustness. The paper's central claim does **not**
# reproduce at this scale: the adversarially trained int8 models are *more* resilient to activation bit
# flips than the vanilla ones (+13% resilience), also to sign-bit flips alone, so a larger scale factor is
# not the whole story. The weight-decay remedy helps in the right direction on every seed, but by about +4%,
# far from +25%. Our metric (the mean accuracy over a log grid of bit error rates), the fault model (every
# bit of every stored conv/linear input activation, i.i.d. per inference), Adam's L2 penalty as "weight
# decay" and the choice WD = 0.03 (validation sweep) are our readings; the paper's ResNet-56 on CIFAR-10
# (32×32 RGB, eps = 8/255, long SGD training) may sit in a regime where the scale-factor effect dominates.
# Set `SCALE = "paper"` on a GPU to test that.
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
