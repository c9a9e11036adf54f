# %% [markdown]
# # 08 · A campaign on a cluster
#
# *An appendix for researchers who scale out.* A fault-injection study is thousands of independent trials:
# at paper scale (ResNets on CIFAR-10 or ImageNet, many bit error rates, many seeds) it is days of GPU time.
# This chapter runs the same BER sweep three ways, in this process, on a process pool and on a Dask
# cluster, shows that the three frames are equal bit for bit, and resumes a sweep from its checkpoint.
#
# **What you will learn**
# - why every trial of a bitlab campaign gives the same row wherever and whenever it runs (counter-based
#   randomness: a trial's faults depend on the seed, the rate and the trial index only);
# - how `executor=` sends a campaign to a `concurrent.futures` pool or a `dask.distributed.Client`, and
#   the two lines to change to use a real cluster;
# - how `checkpoint=` makes a campaign resumable and extensible (more trials later, same first rows).

# %% tags=["parameters"]
SCALE = "small"   # this appendix has one scale: the point is the plumbing, not the model
SEED = 0
TRIALS = 40       # draws per bit error rate

# %%
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

import matplotlib.pyplot as plt
import pandas as pd
import torch
from distributed import Client

import bitlab as bl
from bitlab.zoo.scale import check_scale

check_scale(SCALE, False, ("small",))
bl.plot.style()
torch.set_num_threads(1)  # the serial reference runs with one torch thread, like each worker (see section 3)
_ = torch.manual_seed(SEED)

# %% [markdown]
# ## 1. The campaign, in this process
#
# The small CNN of the book, trained on the 8×8 digits, and a sweep of FP32 bit error rates.

# %%
data = bl.data.digits(seed=0)
torch.manual_seed(SEED)   # the initial weights: torch seeds its global generator afresh in every process
model = bl.models.small_cnn()
bl.train.fit(model, data.train, epochs=15, seed=SEED)
model.eval()
BERS = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4]

t0 = time.perf_counter()
serial = bl.campaign.ber_sweep(model, data.test, BERS, trials=TRIALS, seed=SEED, progress=False)
t_serial = time.perf_counter() - t0
print(f"{len(serial)} trials in {t_serial:.2f} s; clean accuracy {serial.attrs['clean_accuracy']:.4f}")
serial.head()

# %% [markdown]
# **Why the rows do not depend on the schedule.** Trial `t` at rate `ber` draws its faults from a
# generator seeded by a hash of `(seed, "ber", ber, t)` (`bitlab.campaigns.seeds.trial_generator`), not
# from one generator shared by the whole sweep. So rate `3e-5` run alone, or trials 0-9 run on one machine
# and 10-39 on another, give exactly the rows of the full sweep:

# %%
alone = bl.campaign.ber_sweep(model, data.test, [3e-5], trials=10, seed=SEED, progress=False)
same_rows = alone.equals(serial[(serial.ber == 3e-5) & (serial.trial < 10)].reset_index(drop=True))
print("rate 3e-5, trials 0-9 alone == the same rows of the full sweep:", same_rows)
assert same_rows

# %% [markdown]
# ## 2. A process pool and a Dask cluster
#
# `executor=` takes any `concurrent.futures.Executor`. A process pool must *spawn* its workers (a worker
# forked after torch has started its thread pool can hang, so bitlab refuses a forking pool by name), and
# each worker should run torch with one thread, like the serial reference.
#
# For Dask, `bl.campaign.local_cluster(2)` starts a `LocalCluster` of two worker processes on this machine,
# set up for torch (section 3). The model and the test data are *scattered* to the workers once; the trials
# travel as small tasks that refer to them, and the scheduler's dashboard (`client.dashboard_link`, when
# `bokeh` is installed) shows them as they run.

# %%
pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn"),
                           initializer=torch.set_num_threads, initargs=(1,))
t0 = time.perf_counter()
on_pool = bl.campaign.ber_sweep(model, data.test, BERS, trials=TRIALS, seed=SEED, progress=False, executor=pool)
t_pool = time.perf_counter() - t0
pool.shutdown()

cluster = bl.campaign.local_cluster(2)   # on a real cluster:  client = Client("tcp://scheduler:8786")
client = Client(cluster)                 #                     (and no local_cluster line)
t0 = time.perf_counter()
on_dask = bl.campaign.ber_sweep(model, data.test, BERS, trials=TRIALS, seed=SEED, progress=False, executor=client)
t_dask = time.perf_counter() - t0
client.close()
cluster.close()

frames = {"in process": serial, "process pool (2)": on_pool, "Dask LocalCluster (2)": on_dask}
check = pd.DataFrame({name: {"rows": len(df), "equal to in process, bit for bit": df.equals(serial),
                             "seconds": round(t, 2)}
                      for (name, df), t in zip(frames.items(), [t_serial, t_pool, t_dask])}).T
check

# %%
for name, df in frames.items():
    pd.testing.assert_frame_equal(df, serial, check_exact=True)  # every column, every float, bit for bit
fig, ax = plt.subplots(figsize=(6, 3.6))
for (name, df), marker in zip(frames.items(), ["o", "s", "^"]):
    mean = df.groupby("ber")["accuracy"].mean()
    ax.plot(mean.index, mean.to_numpy(), marker=marker, ms=8 - 2 * len(ax.lines), label=name)
ax.set_xscale("log"); ax.set_xlabel("bit error rate"); ax.set_ylabel(f"mean accuracy ({TRIALS} trials)")
ax.set_title("the same sweep, three executors: the curves coincide"); ax.legend(fontsize="small");

# %% [markdown]
# On this 2-core machine the sweep above is too short for the workers to pay off: their first campaign
# also pays for starting the pool's processes, importing torch and bitlab on the workers and shipping the
# model. `benchmarks/scaleout.py` measures longer sweeps (1,200 trials of this CNN, 180 of ResNet-20):
# two single-threaded Dask workers give 1.6-1.9× the in-process trials per second, a ratio that moves
# by that much from run to run on this shared machine.
#
# **On a real cluster** the only change is where the client points:
#
# ```python
# from distributed import Client
# client = Client("tcp://scheduler:8786")          # instead of Client(bl.campaign.local_cluster(2))
# df = bl.campaign.ber_sweep(model, test, bers, trials=1000, executor=client, checkpoint="sweep.jsonl")
# ```
#
# The workers need bitlab installed (`pip install "bitlab[dask]"`) and the model's class importable (a
# class defined in a notebook travels by value, through cloudpickle).

# %% [markdown]
# ## 3. Two things that make runs differ, and what bitlab does about them
#
# - **Thread counts.** A sum split over several threads is added in another order, so the last bits of a
#   gradient or of a large dot product can change with `torch.get_num_threads()`. Bit-for-bit equality
#   holds when the items run with the same number of torch threads as the reference: Dask's workers use
#   one thread each by default, and the pool above was given `initializer=torch.set_num_threads`.
# - **Dask's memory trimming.** Dask starts its workers with `MALLOC_TRIM_THRESHOLD_=65536`, which makes
#   every forward pass map and unmap its activations; on this machine a trial of this CNN then took 1.6×
#   as long. `local_cluster` starts workers without it; on a real cluster, unset
#   `distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_` in the Dask configuration.

# %% [markdown]
# ## 4. Resuming and extending a campaign
#
# `checkpoint=` names a file where every finished trial is saved as it arrives (JSON lines, each with a
# checksum, under a fingerprint of the model, the data and every setting: no pickle). A campaign that dies
# is resumed by running it again; a longer one reuses the trials it already has. Here the first run stands
# for one that was killed after 10 trials per rate.

# %%
path = os.path.join(tempfile.mkdtemp(), "sweep.jsonl")
first = bl.campaign.ber_sweep(model, data.test, BERS, trials=10, seed=SEED, progress=False, checkpoint=path)
resumed = bl.campaign.ber_sweep(model, data.test, BERS, trials=TRIALS, seed=SEED, progress=False,
                                checkpoint=path)
print(f"first run: {len(first)} trials; resumed run: {len(resumed)} trials, "
      f"{resumed.attrs['from_checkpoint']} of them read from the checkpoint")
assert resumed.attrs["from_checkpoint"] == len(first)
pd.testing.assert_frame_equal(resumed, serial, check_exact=True)
print("the resumed sweep equals the uninterrupted one:", resumed.equals(serial))

# %% [markdown]
# ## Paper vs. this notebook
#
# The papers of the book estimate each point of their curves as an average over many independent fault
# trials, which at their scale run on several GPUs or machines. What that needs from a campaign, and what
# this notebook measured; each verdict is computed from the numbers above by the rule in its row.

# %%
low, high = (float(serial.loc[serial.ber == b, "accuracy"].mean()) for b in (BERS[0], BERS[-1]))
equal = [df.equals(serial) for df in frames.values()]
rows = [
    {"claim": "accuracy falls as the bit error rate grows",
     "paper": "Qin et al. 2017: accuracy collapses above a tolerable BER (mean over trials)",
     "ours": f"mean accuracy {low:.3f} at BER {BERS[0]:g}, {high:.3f} at {BERS[-1]:g}",
     "rule": "holds if the mean is lower at the highest rate than at the lowest",
     "verdict": "holds" if high < low else "does not hold here"},
    {"claim": "a campaign split over workers gives the same trials",
     "paper": "needed to run the papers' trial counts on several GPUs or machines",
     "ours": f"{sum(equal)} of {len(equal)} executors gave the in-process frame bit for bit; rate alone: {same_rows}",
     "rule": "holds if every executor's frame and the rate run alone equal the in-process rows",
     "verdict": "holds" if all(equal) and same_rows else "does not hold here"},
    {"claim": "an interrupted campaign resumes without changing a row",
     "paper": "needed for campaigns of days of GPU time",
     "ours": f"{resumed.attrs['from_checkpoint']} of {len(resumed)} trials from the checkpoint, "
             f"frame equal: {resumed.equals(serial)}",
     "rule": "holds if the resumed frame equals the uninterrupted one and reused the saved trials",
     "verdict": "holds" if resumed.equals(serial) and resumed.attrs["from_checkpoint"] == len(first)
                else "does not hold here"},
]
pd.set_option("display.max_colwidth", 200)
pd.DataFrame(rows).set_index("claim")

# %% [markdown]
# ## Summary
#
# - A bitlab campaign is a list of work items whose faults depend only on (seed, point, trial): any subset,
#   in any order, on any worker, gives the same rows.
# - `executor=` runs the items on a spawning process pool or a Dask client (model and data scattered
#   once); the frames above are equal bit for bit to the in-process one.
# - `checkpoint=` saves each finished item; a rerun resumes, a longer run extends, nothing is repeated.
# - The same holds for `activation_sweep`, `sweep_t`, the single-bit census (its chunks) and repeated
#   attacks (`bl.campaign.bit_flip_attacks`).
