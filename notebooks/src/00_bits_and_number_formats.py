# %% [markdown]
# # 00 · Bits and number formats
#
# *A primer for the series.* Every experiment in this book flips bits of stored numbers and asks what the
# network does next. Before we break networks, we need to know exactly how a weight is stored, and what a
# single flipped bit does to it.
#
# **What you will learn**
# - how FP32, FP16, BF16, the fixed-point format Q2.5 and symmetric int8 store the same weight, bit by bit;
# - what a flip at each bit position does to a typical trained weight (a table and a figure);
# - why a flip of the exponent's most significant bit is catastrophic for floats, and harmless-looking
#   formats such as int8 are not immune either;
# - how much a single flip costs a trained digits classifier, measured bit position by bit position.

# %% tags=["parameters"]
SCALE = "small"      # this primer has one scale: digits, seconds on a CPU (notebooks 01-06 have a paper scale)
SEEDS = [0, 1, 2]
N_WEIGHTS = 10       # weights sampled per parameter tensor for the measured census (all 32 bits each)

# %%
import numpy as np
import pandas as pd
import matplotlib.pyplot as plt
import torch

import bitlab as bl
from bitlab.zoo.scale import check_scale

check_scale(SCALE, False, ("small",))
bl.plot.style()
FORMATS = [bl.FP32, bl.FP16, bl.BF16, bl.Q(2, 5), bl.Int(8)]

# %% [markdown]
# ## 1. One weight, five formats
#
# A format turns a float into an unsigned integer *word* and back. `fmt.encode` returns the words,
# `fmt.decode` reads them, and `fmt.fields` names the bit fields. Bit 0 is the least significant bit.
# Int8 needs a scale factor: here the weight belongs to a tensor whose largest magnitude is 0.5,
# so one integer step is 0.5 / 127.

# %%
# NBVAL_CHECK_OUTPUT
w = torch.tensor([-0.1234])
scale = torch.tensor(0.5 / 127)

def pattern(fmt, word):
    """The word as a bit string, fields separated by '|' (sign | exponent | mantissa ...)."""
    bits = format(int(word), f"0{fmt.width}b")
    cuts = sorted({fmt.width - 1 - max(pos) for name, pos in fmt.fields.items()
                   if name in ("sign", "exponent", "integer")} | {fmt.width - 1 - min(pos) + 1
                   for name, pos in fmt.fields.items() if name in ("sign", "exponent", "integer")})
    out, last = [], 0
    for c in cuts:
        if 0 < c < fmt.width:
            out.append(bits[last:c]); last = c
    return "|".join(out + [bits[last:]])

rows = []
for fmt in FORMATS:
    s = scale if fmt.needs_scale else None
    word = fmt.encode(w, s)
    rows.append({"format": fmt.name, "bits": fmt.width, "word": pattern(fmt, word.item()),
                 "fields": ", ".join(f"{k} {len(v)}" for k, v in fmt.fields.items() if k not in ("msb", "exponent_msb")),
                 "reads back as": f"{fmt.decode(word, s).item():.7f}"})
pd.DataFrame(rows).set_index("format")

# %% [markdown]
# Floats spend most bits on the mantissa (precision) and a few on the exponent (range). Q2.5 is an
# integer in two's complement counted in steps of 2⁻⁵ = 1/32, so −0.1234 is stored as −4/32 = −0.125.
# Int8 counts in steps of the tensor's scale. The formats differ in how much *rounding* they add, and,
# as we will see, in how much damage one flipped bit can do.
#
# ## 2. What a flip at each bit position does to a typical weight
#
# We train a small MLP on the 8×8 digits (the default data set of the book) and take its median weight
# magnitude as "a typical weight".

# %%
data = bl.data.digits(seed=0)
torch.manual_seed(SEEDS[0])   # the initial weights too: torch seeds its generator afresh in every process
mlp = bl.models.mlp()
history = bl.train.fit(mlp, data.train, epochs=30, seed=SEEDS[0])
clean_acc = bl.train.accuracy(mlp, data.test)
weights = torch.cat([p.detach().reshape(-1) for p in mlp.parameters()])
typical = weights.abs().median().item()
print(f"MLP 64-32-10: test accuracy {clean_acc:.3f}; {weights.numel()} parameters; "
      f"median |w| = {typical:.4f}; max |w| = {weights.abs().max().item():.3f}")

# %% [markdown]
# ### A bit flip, from scratch
#
# For FP32 there is nothing to convert: the 32 bits of a float32 tensor *are* an int32 tensor, seen through
# `.view(torch.int32)` (no copy of the values, no rounding). Flipping bit `b` is an XOR with the mask
# `1 << b`, and viewing the result as float32 again reads the corrupted weight. Here it is on seven weights
# of the MLP's first layer, one bit each, from the mantissa LSB (bit 0) to the sign (bit 31):

# %%
def flip_bits(x, index, bit):
    """Flip bit bit[j] of element index[j] (distinct elements) of a float32 tensor, through its int32 view."""
    ints = x.detach().clone().reshape(-1).view(torch.int32)   # the same 32 bits, read as integers
    mask = torch.ones_like(bit, dtype=torch.int32) << bit     # 1 << b (b = 31: -2**31, the sign bit)
    ints[index] ^= mask                                       # XOR flips exactly the masked bit
    return ints.view(torch.float32).reshape(x.shape)          # the same bits, read as floats again

W = mlp.get_parameter("1.weight")
before = W.detach().clone()
index, bit = torch.tensor([0, 1, 2, 3, 4, 5, 6]), torch.tensor([0, 11, 22, 23, 29, 30, 31])
ours = flip_bits(W, index, bit)
pd.DataFrame({"weight": index, "bit": bit, "before": before.reshape(-1)[index],
              "after": ours.reshape(-1)[index]}).set_index("weight")

# %% [markdown]
# The library does the same through its general path: the format encodes the weights into words
# (`bl.FP32.encode`), a fault model picks the sites (`bl.FlipList` of (parameter, index, bit) triples, or
# `bl.SingleBitFlip` for one), and `bl.corrupted` holds the model with the faulty weights inside a `with`
# block, restoring them bit for bit on exit. The two agree bit for bit (compared as integers, so that a NaN
# would compare too), and so does Python's `struct`, which packs a float into its IEEE-754 bytes:

# %%
import struct

with bl.corrupted(mlp, bl.FlipList([("1.weight", i, b) for i, b in zip(index.tolist(), bit.tolist())]),
                  fmt=bl.FP32):
    theirs = mlp.get_parameter("1.weight").detach().clone()
assert torch.equal(ours.view(torch.int32), theirs.view(torch.int32)), "from scratch == bl.corrupted, bit for bit"
assert torch.equal(W.detach().view(torch.int32), before.view(torch.int32)), "restored on exit, bit for bit"
words = bl.FP32.encode(before.reshape(-1)[index])            # unsigned words in int64: 1 << 31 fits
assert torch.equal(bl.FP32.decode(words ^ (1 << bit)).view(torch.int32), ours.reshape(-1)[index].view(torch.int32))
for i, b in zip(index.tolist(), bit.tolist()):                 # struct: float -> 4 bytes -> unsigned int
    word = struct.unpack("<I", struct.pack("<f", before.reshape(-1)[i].item()))[0] ^ (1 << b)
    assert ours.reshape(-1)[i].view(torch.int32).item() & 0xFFFFFFFF == word, (i, b)
print(f"{len(index)} flips: from scratch, bl.corrupted, FP32.encode/decode and struct agree bit for bit")

# %%
def flip_table(value, fmt, scale=None):
    """Every single-bit flip of one stored value: the value read back and the absolute change."""
    x = torch.tensor([value])
    word = fmt.encode(x, scale)
    clean = fmt.decode(word, scale).item()
    rows = []
    for b in range(fmt.width):
        v = fmt.decode(word ^ (1 << b), scale).item()
        field = next((k for k, pos in fmt.fields.items() if b in pos and k not in ("msb", "exponent_msb")), "")
        rows.append({"format": fmt.name, "bit": b, "field": field, "flipped value": v,
                     "abs change": abs(v - clean) if np.isfinite(v) else np.inf})
    return pd.DataFrame(rows)

int8_scale = weights.abs().max() / 127
flips = pd.concat([flip_table(typical, f, int8_scale if f.needs_scale else None) for f in FORMATS])
flips.pivot_table(index="bit", columns="format", values="abs change").iloc[::-1].style.format("{:.3g}")

# %%
fig, ax = plt.subplots(figsize=(8, 4))
for fmt in FORMATS:
    t = flips[flips.format == fmt.name]
    ax.plot(t["bit"], np.log10(t["abs change"].clip(lower=1e-12).replace(np.inf, 1e39)), marker="o", ms=3,
            label=fmt.name)
ax.axhline(np.log10(typical), color="k", ls=":", lw=1)
ax.text(0, np.log10(typical) + 0.6, "the weight itself", fontsize="small")
ax.set_xlabel("flipped bit (0 = LSB)")
ax.set_ylabel("log10 |change of the weight|")
ax.set_title(f"One flip of a typical trained weight (w = {typical:.4f})")
ax.legend(fontsize="small");

# %% [markdown]
# Read the figure from left to right. Low mantissa bits change the weight by less than a millionth of
# itself. The change grows by ×2 per bit. Then come the exponent bits: each one *squares* the factor,
# and the exponent MSB of FP32 and BF16 multiplies the weight by 2¹²⁸ ≈ 3·10³⁸. For FP16 the same
# bit turns the weight into a value of about 10⁴, or into Inf/NaN. Fixed point and int8 are bounded:
# their worst flip (the sign bit of two's complement) moves the weight by the whole range of the format
# (4 for Q2.5, 128 steps for int8): large compared with the weight, but finite.
#
# ## 3. Why the exponent MSB is the dangerous bit
#
# A float is ±1.m · 2^(e − bias). Every trained weight here has |w| < 2, so its biased exponent is below
# the bias (127 for FP32) and its most significant exponent bit is **0**. A flip sets it to 1 and adds
# 128 to the exponent: the weight is multiplied by 2¹²⁸. The next activations become astronomically
# large, the logits overflow to Inf or NaN, and the prediction is garbage.

# %%
words = bl.FP32.encode(weights)
exponent = (words >> 23) & 0xFF
msb_set = int(((words >> 30) & 1).sum())
print(f"biased exponents of the {weights.numel()} MLP weights: min {int(exponent.min())}, "
      f"max {int(exponent.max())} (bias 127)")
print(f"weights whose FP32 exponent MSB is already 1: {msb_set}")
fig, ax = plt.subplots(figsize=(7, 3))
ax.hist(exponent.numpy(), bins=np.arange(exponent.min().item() - 0.5, 128.5), color="0.5")
ax.axvline(127.5, color="r", ls="--")
ax.text(127.8, ax.get_ylim()[1] * 0.8, "exponent MSB = 1\nfrom here on", color="r", fontsize="small")
ax.set_xlabel("biased FP32 exponent of the weight")
ax.set_ylabel("count");

# %%
assert msb_set == 0, "every trained weight has |w| < 2, so the exponent MSB is 0"
t = flips[(flips.format == "FP32")].set_index("bit")["flipped value"]
assert abs(t[30]) > 1e30 and abs(t[30] / typical) == 2.0 ** 128

# %% [markdown]
# ## 4. Measured: what one flip costs a trained classifier, bit by bit
#
# The *relative accuracy drop* of a flip is RAD = (acc_clean − acc_flipped) / acc_clean (Pranto et al.
# 2025). We flip every bit of a sample of weights in each tensor, one at a time (flip, evaluate on the
# test set, restore), for three training seeds, and plot RAD by bit position.

# %%
censuses = []
for seed in SEEDS:
    torch.manual_seed(seed)
    model = bl.models.mlp()
    bl.train.fit(model, data.train, epochs=30, seed=seed)
    c = bl.campaign.naive_bit_census(model, data.test, bits="all", n_weights=N_WEIGHTS, seed=seed)
    c["seed"] = seed
    censuses.append(c)
census = pd.concat(censuses, ignore_index=True)
ax = bl.plot.bit_position_effect(census, thresholds=(0.1, 0.5),
                                title="MLP on digits, FP32: single flips by bit position (3 seeds)")

# %%
CHANCE = 1 / 10 + 0.01   # "down to chance": accuracy at most one point above 1/10 for ten classes
by_bit = census.groupby("bit").agg(mean_rad=("rad", "mean"), share_rad_10=("rad", lambda v: (v > 0.1).mean()),
                                   share_rad_50=("rad", lambda v: (v > 0.5).mean()),
                                   share_rad_90=("rad", lambda v: (v > 0.9).mean()),
                                   share_chance=("accuracy", lambda v: (v <= CHANCE).mean()))
by_bit.loc[[30, 31, 29, 23, 22, 0]].round(3)

# %%
worst = census.groupby("bit")["rad"].mean().idxmax()
msb = census[census.bit == 30]
share_msb = (msb["rad"] > 0.5).mean()
share_mantissa = (census[census.bit < 23]["rad"] > 0.1).mean()
print(f"most harmful bit on average: {worst}; exponent-MSB flips with RAD > 50%: {share_msb:.0%}, "
      f"down to chance: {(msb.accuracy <= CHANCE).mean():.0%}, RAD > 90%: {(msb.rad > 0.9).mean():.0%}; "
      f"mantissa flips with RAD > 10%: {share_mantissa:.1%}")
assert worst == 30
assert share_msb > 0.3 and share_mantissa < 0.01

# %% [markdown]
# One bit position dominates: flipping the exponent MSB of a weight often sends the classifier down to
# chance level, while the 23 mantissa bits practically never matter. Note a detail that matters for
# notebook 05: with ten balanced classes a broken network that predicts one class still scores about 10%,
# i.e. a relative drop of (0.95 − 0.10)/0.95 ≈ 89%. A flip only crosses RAD = 90% when accuracy falls
# *below* chance, typically because the logits become NaN or Inf (counted as wrong). So "down to chance"
# and "RAD > 90%" are different counts on a 10-class task. The sign bit and the lower exponent bits sit in
# between. This is why the papers in this book look so closely at the exponent (Pranto et al. flip only
# the exponent bits for CIFAR-10 and only the exponent MSB for ImageNet), and why the simple tricks of
# notebooks 01 and 02 (range checks, scaling the weights up so that this bit is already set) work.
#
# ## Paper vs. this notebook
#
# This primer reproduces background facts the papers build on (Hong et al. 2019, *Terminal Brain Damage*).

# %%
def seed_stats(c):
    rad = c.groupby("bit")["rad"].mean()           # mean RAD per bit position, one seed
    return {"msb_margin": rad[30] - rad.drop(30).max(), "mant10": (c[c.bit < 23].rad > 0.1).mean()}

per_seed = pd.DataFrame({seed: seed_stats(c) for seed, c in census.groupby("seed")}).T
claims = [
    bl.report.Claim(notebook="00", paper="Hong et al. 2019", statement="the worst flips are exponent-MSB 0→1 flips",
                    paper_value="the exponent MSB", values=per_seed["msb_margin"], unit="RAD",
                    note="mean RAD of bit 30 minus that of the next worst bit, per seed"),
    bl.report.Claim(notebook="00", paper="Hong et al. 2019", statement="mantissa flips are harmless",
                    paper_value="(implied)", values=per_seed["mant10"], unit="share", direction="less",
                    null=0.01, note="share of mantissa flips with RAD > 10%, per seed; 'harmless' is our "
                                    "threshold: under 1 in 100"),
]
if SCALE == "small":   # what the text above says
    for c in claims:
        c.expect("reproduced")
bl.report.claims_table(claims)

# %% [markdown]
# The verdicts are computed from the three seeds by the rule that every claim of the book follows (stated
# in notebook 01, where the first paper's claims are checked).

# %% [markdown]
# ## Exercises
# 1. Repeat section 2 for a weight with |w| > 2 (multiply one by 3). What does the exponent-MSB flip do now?
# 2. FP16 has only 5 exponent bits. Which of its bits is most harmful for the MLP? Run the census with
#    `fmt=bl.FP16`.
# 3. Int8 with per-channel scales (`bl.Int(8, per_channel=True)`): is the worst flip better or worse than
#    with one scale per tensor? Why?
# 4. Change `N_WEIGHTS` to cover every weight of the MLP. How long does the naive loop take? (Notebook 05
#    builds an exact census that is much faster.)
