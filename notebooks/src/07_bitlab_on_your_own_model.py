# %% [markdown]
# # 07 · bitlab on your own model
#
# *An appendix for researchers.* The chapters before this one break the book's own classifiers. Your
# model is probably something else: a Transformer, a regression head, half-precision weights, a forward
# that takes keyword arguments or returns a dict. This chapter runs the whole pipeline on such a model,
# a small Transformer that predicts a number, and shows the arguments that make it work.
#
# **What you will learn**
# - how `corrupted()` stores each parameter in its own dtype (FP32 here, FP16 after `.half()`), and when
#   it refuses a format;
# - how to score a campaign with another metric (`metric="mse"`) and pick the scored tensor from a dict or
#   tuple output (`output=`);
# - how activation faults reach modules that return tuples (multi-head attention), and why a targeted
#   module that never runs is an error, not a silent no-op;
# - what the single-bit census does for a metric it cannot certify.

# %% tags=["parameters"]
SCALE = "small"   # this appendix has one scale: it runs in seconds on a laptop CPU
SEED = 0
TRIALS = 10       # draws per bit error rate

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd
import torch
from torch import nn

import bitlab as bl
from bitlab.zoo.scale import check_scale

check_scale(SCALE, False, ("small",))
bl.plot.style()
_ = torch.manual_seed(SEED)

# %% [markdown]
# ## 1. A model that is not a classifier
#
# The task: read a sequence of 8 steps of 4 features and predict the mean over the steps of the product
# of the first two features. The model is a linear projection, one stock `nn.TransformerEncoderLayer` and
# a linear head: nothing bitlab has seen before. `bl.train.fit` trains classifiers with cross-entropy, so
# we train with a plain loop of our own, as you would.

# %%
class Regressor(nn.Module):
    def __init__(self, f: int = 4, d: int = 32):
        super().__init__()
        self.proj = nn.Linear(f, d)
        self.layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, 1)

    def forward(self, x):
        return self.head(self.layer(self.proj(x)).mean(dim=1)).squeeze(-1)


def make_data(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, 4, generator=g)
    return x, (x[:, :, 0] * x[:, :, 1]).mean(dim=1)


x_train, y_train = make_data(2048, SEED)
x_test, y_test = make_data(512, SEED + 1)
test = [(x_test[i : i + 256], y_test[i : i + 256]) for i in range(0, 512, 256)]  # (inputs, targets) batches

model = Regressor()
opt = torch.optim.Adam(model.parameters(), lr=3e-3)
for step in range(400):
    i = torch.randint(0, len(x_train), (128,), generator=torch.Generator().manual_seed(step))
    loss = nn.functional.mse_loss(model(x_train[i]), y_train[i])
    opt.zero_grad()
    loss.backward()
    opt.step()
model.eval()

baseline = float(y_test.var(unbiased=False))  # the MSE of always predicting the mean
clean_mse = bl.score(model, test, metric="mse")
print(f"test MSE {clean_mse:.4f}; predicting the mean would give {baseline:.4f}")

# %%
assert clean_mse < 0.5 * baseline, "the regressor should beat the constant prediction clearly"

# %% [markdown]
# ## 2. Injection: each parameter in its own format
#
# `corrupted()` without `fmt=` stores every parameter in the format of its own dtype. The FP32 model is
# flipped as FP32 words; the same model converted with `.half()` is flipped as FP16 words, and the report
# says so. Asking for a format *wider* than the stored dtype (FP32 bits of an FP16 weight) is refused: those
# bits do not exist in the store. A narrower format on purpose (Q2.5, int8 on FP32 weights) is quantizing,
# and is allowed.

# %%
g = torch.Generator().manual_seed(SEED)
with bl.corrupted(model, bl.BitFlips(5), generator=g) as report:
    print(report.fmt, report.flips, "flips -> MSE", round(bl.score(model, test, metric="mse"), 4))

half = Regressor()
half.load_state_dict(model.state_dict())
half = half.half().eval()
test_half = [(x.half(), y) for x, y in test]
with bl.corrupted(half, bl.BitFlips(5), generator=torch.Generator().manual_seed(SEED)) as report:
    print(report.fmt, report.flips, "flips -> MSE", round(bl.score(half, test_half, metric="mse"), 4))

try:
    with bl.corrupted(half, bl.BitFlips(5), fmt=bl.FP32):
        pass
except ValueError as err:
    print("refused:", err)

# %% [markdown]
# ## 3. A BER sweep scored by MSE
#
# `ber_sweep(..., metric="mse")` writes an `mse` column and `rad`, the relative drop generalised to any
# metric: for an error, `(mse - mse_clean) / mse_clean`, so positive is always worse. `metric=` also takes
# `"accuracy"` (the default), `"top5"`, `"loss"` or your own function `(outputs, targets) -> one score per
# sample` (wrap it in `bl.Metric(name, fn, higher_is_better=False)` for an error). A model that returns a
# dict or a tuple takes `output="logits"` (a key, an index or a callable).

# %%
bers = [1e-7, 1e-6, 1e-5, 1e-4]
sweep = bl.ber_sweep(model, test, bers, trials=TRIALS, metric="mse", seed=SEED, progress=False)
# a trial whose outputs hold NaN has a NaN MSE: the mean skips it (n drops), so count those trials as broken
by = sweep.groupby("ber")["mse"]
table = pd.DataFrame({
    "median mse": by.median(),
    "NaN trials": by.apply(lambda s: int(s.isna().sum())),
    "broken (NaN or mse > 2x clean)": by.apply(lambda s: float((~(s <= 2 * clean_mse)).mean())),
})
table

# %%
ax = bl.plot.accuracy_vs_ber(sweep, clean=clean_mse, title="Transformer regressor, FP32 weights")
ax.set_yscale("log")
plt.show()

# %%
broken = table["broken (NaN or mse > 2x clean)"]
assert abs(table["median mse"].iloc[0] / sweep.attrs["clean"] - 1) < 0.05   # the lowest rate barely moves it
assert broken.iloc[-1] > broken.iloc[0]                                     # the highest rate breaks trials

# %% [markdown]
# ## 4. Activation faults in a module that returns a tuple
#
# `nn.MultiheadAttention` returns `(output, weights)`. Activation faults go into the first tensor by
# default. A targeted module whose `forward` never runs raises: `out_proj` inside an attention block is
# applied as a functional call, so a hook on it would never fire, and bitlab says so instead of
# measuring nothing.

# %%
print(sorted(n for n, _ in model.named_modules() if n.startswith("layer.")))
clean_each = bl.evaluate.per_sample(model, test, metric="mse")
for ber in [1e-6, 1e-5, 1e-4]:
    with torch.no_grad(), bl.corrupted_activations(model, bl.BitErrorRate(ber), modules="layer.self_attn",
                                                   generator=torch.Generator().manual_seed(SEED)) as rep:
        each = bl.evaluate.per_sample(model, test, metric="mse")
    hit = ~(each <= 10 * clean_each.mean())   # NaN counts as hit
    print(f"activation BER {ber:g} in layer.self_attn (output[0]): {rep.total_flips:5d} flips, "
          f"{int(hit.sum()):3d} of {len(each)} predictions off by more than 10x the clean MSE")

try:
    with bl.corrupted_activations(model, bl.BitErrorRate(1e-3), modules="layer.self_attn.out_proj"):
        bl.score(model, test, metric="mse")
except (ValueError, RuntimeError) as err:
    print("refused:", err)

# %%
assert rep.total_flips > 0

# %% [markdown]
# ## 5. The single-bit census with a metric it cannot certify
#
# The fast census certifies *accuracy* exactly with error bounds. For MSE there is no such certificate, so
# it recomputes every flip with a full forward (the naive loop) and says so in `attrs["note"]`. Here: every
# exponent bit of the head's weights.

# %%
census = bl.bit_census(model, test, bits="exponent", params="head.weight", metric="mse", progress=False)
print(census.attrs["note"])
worst = census.sort_values("rad", ascending=False).head(5)
worst[["param", "index", "bit", "value", "flipped", "mse", "rad"]]

# %%
share = float((census["rad"] > 0.1).mean())
print(f"{share:.0%} of the head's exponent-bit flips raise the MSE by more than 10%")
assert census["rad"].max() > 1.0 and share < 1.0

# %% [markdown]
# ## Paper vs. this notebook
#
# The papers study classifiers; two of their observations can be checked on this regressor with the same
# tools. Each verdict below is computed from the numbers above by the rule stated in its row.

# %%
top = census.sort_values("rad", ascending=False).head(10)
msb = bl.FP32.fields["exponent_msb"][0]
share_msb = float((top["bit"] == msb).mean())
low, high = float(broken.iloc[0]), float(broken.iloc[-1])
rows = [
    {"claim": "the worst single flips are exponent-MSB flips",
     "paper": "Hong et al. 2019: the worst flips are exponent MSB 0->1 (classifiers)",
     "ours": f"{share_msb:.0%} of the 10 worst head-weight flips are at bit {msb}",
     "rule": "holds if at least 9 of the 10 worst are at the exponent MSB",
     "verdict": "holds" if share_msb >= 0.9 else "does not hold here"},
    {"claim": "unprotected FP32 weights break as the bit error rate grows",
     "paper": "Qin et al. 2017: accuracy collapses above a tolerable BER (classifiers)",
     "ours": f"trials broken (NaN or MSE > 2x clean): {low:.0%} at BER {bers[0]:g}, {high:.0%} at {bers[-1]:g}",
     "rule": "holds if more trials break at the highest rate than at the lowest",
     "verdict": "holds" if high > low else "does not hold here"},
]
pd.set_option("display.max_colwidth", 200)
pd.DataFrame(rows).set_index("claim")

# %% [markdown]
# ## What to take away
#
# - Without `fmt=`, faults hit the bits your parameters really have; `report.fmt` says which.
# - `metric=` and `output=` are the same on every campaign (`ber_sweep`, `bit_census`, `activation_sweep`,
#   `bit_flip_attack`, `sweep_t`, `loss_slice`); batches may hold a tensor, a tuple or a dict of inputs.
# - Anything bitlab cannot do on your model is refused by name; nothing is silently skipped.
#
# **Exercises.** (1) Rerun the sweep with `fmt=bl.FP16` and compare the tolerable BER
# (`bl.tolerable_ber(sweep, drop=0.01)`). (2) Write a metric that scores the absolute error and pass it as
# `bl.Metric("abs", fn, higher_is_better=False)`. (3) Put activation faults in `layer.linear1` and compare.
