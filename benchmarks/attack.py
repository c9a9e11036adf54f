"""Benchmark: bitlab's bit-flip attack against a plain progressive bit search written out here.

Rakin, He, Fan 2019 (ICCV), progressive bit search on 8-bit weights: every step takes the gradient of
the loss on an attack batch, ranks each layer's bit flips by the first-order gain ``g * dw``, tries the
``k`` best of every layer by their real loss, and keeps the best flip of all. The plain version below
implements the same choices as :func:`bitlab.campaigns.bit_flip_attack` for an MLP with int8 weights
(per-tensor symmetric scale ``max|w| / 127``, round half to even, two's complement words; biases float;
each bit flipped at most once; stop when no flip raises the loss or the accuracy is at chance), in
plain torch. Both attack the digits MLP to chance; the flips must be the same, and the median wall time
of ours over the plain one is printed as ``attack time ratio: X`` (target <= 1.0). The same for the
digits small CNN (its Conv2d and Linear weights), printed as ``cnn attack time ratio: X``. Each tried flip
of ours runs only the layers from the flipped one on (both models are ``nn.Sequential`` chains:
:mod:`bitlab.campaigns.trial_runs`), where the plain search runs the whole forward.

    python benchmarks/attack.py [--repeats 7] [--budget 60]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

import bitlab as bl
from bitlab.campaigns import bit_flip_attack


def _signed8(u: torch.Tensor) -> torch.Tensor:
    return torch.where(u >= 128, u - 256, u)


def plain_pbs(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    xe: torch.Tensor,
    ye: torch.Tensor,
    budget: int,
    k: int,
    level: float,
) -> list[tuple[int, int, int]]:
    """Progressive bit search on the int8 weights of ``model``'s Linear and Conv2d layers; returns the
    flips ``(layer, index, bit)`` in order and restores the model."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    saved = [w.detach().clone() for w in weights]
    scales, words = [], []
    with torch.no_grad():
        for w in weights:
            s = w.detach().abs().max() / 127
            q = torch.round(w.detach().double() / s.double()).clamp(-127, 127).to(torch.int64)
            w.copy_(q.float() * s)
            scales.append(s)
            words.append(q.reshape(-1) & 0xFF)  # unsigned 8-bit words
    for w in weights:
        w.requires_grad_(True)

    def loss() -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(x), y, reduction="none").sum() / len(y))

    done: list[set[tuple[int, int]]] = [set() for _ in weights]
    flips: list[tuple[int, int, int]] = []
    current = loss()
    for _ in range(budget):
        objective = F.cross_entropy(model(x), y, reduction="none").sum() / len(y)
        grads = torch.autograd.grad(objective, weights)
        best = None
        with torch.no_grad():
            for li, (w, g) in enumerate(zip(weights, grads)):
                flat = w.data.view(-1)
                alt = torch.stack([_signed8(words[li] ^ (1 << b)).float() * scales[li] for b in range(8)])
                gain = g.reshape(1, -1).double() * (alt.double() - flat.reshape(1, -1).double())
                for i, b in done[li]:
                    gain[b, i] = -float("inf")
                top = torch.topk(gain.reshape(-1), k)
                for v, j in zip(top.values.tolist(), top.indices.tolist()):
                    if v <= 0:
                        break
                    b, i = divmod(j, flat.numel())
                    old = flat[i].clone()
                    flat[i] = alt[b, i]
                    trial = loss()
                    flat[i] = old
                    if best is None or trial > best[0]:
                        best = (trial, li, i, b, float(alt[b, i]))
            if best is None or not best[0] > current:
                break
            current, li, i, b, new = best
            words[li][i] ^= 1 << b
            weights[li].data.view(-1)[i] = new
            done[li].add((i, b))
            flips.append((li, i, b))
            if float((model(xe).argmax(1) == ye).double().mean()) <= level:
                break
    with torch.no_grad():
        for w, s in zip(weights, saved):
            w.copy_(s)
    return flips


def compare(label: str, model: nn.Module, split, args) -> float:
    """Both searches on ``model``: same flips, and the median time ratio."""
    model.eval()
    xe, ye = split.test.tensors
    chosen = torch.randperm(len(ye), generator=torch.Generator().manual_seed(0))[:128]  # the attack's batch
    x, y = xe[chosen], ye[chosen]
    level = 1 / 10 + bl.campaigns.attack.CHANCE_MARGIN

    def ours():
        return bit_flip_attack(
            model,
            split.test,
            budget=args.budget,
            candidates_per_layer=args.candidates,
            target_accuracy="chance",
            seed=0,
            progress=False,
        )

    def plain():
        return plain_pbs(model, x, y, xe, ye, args.budget, args.candidates, level)

    r, p = ours(), plain()
    names = [n for n, q in model.named_parameters() if n.endswith("weight")]
    ours_flips = list(zip(r.flips["param"], r.flips["index"].astype(int), r.flips["bit"].astype(int)))
    plain_flips = [(names[li], i, b) for li, i, b in p]
    same = ours_flips == plain_flips
    print(f"digits {label}: ours {len(ours_flips)} flips ({r.stopped}), plain {len(plain_flips)}; same flips: {same}")
    times: dict[str, list[float]] = {"ours": [], "plain": []}
    for _ in range(args.repeats):
        for name, fn in (("ours", ours), ("plain", plain)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    t_ours, t_plain = statistics.median(times["ours"]), statistics.median(times["plain"])
    print(f"median of {args.repeats}: ours {t_ours:.3f} s, plain progressive bit search {t_plain:.3f} s")
    if not same:
        raise SystemExit("the two searches found different flips")
    return t_ours / t_plain


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--candidates", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(1)
    split = bl.data.digits(seed=0)
    torch.manual_seed(0)
    mlp = bl.models.mlp()
    bl.train.fit(mlp, split.train, epochs=20, progress=False)
    torch.manual_seed(0)
    cnn = bl.models.small_cnn()
    bl.train.fit(cnn, split.train, epochs=10, progress=False)
    ratio_cnn = compare("small CNN", cnn, split, args)
    ratio = compare("MLP", mlp, split, args)
    print(f"cnn attack time ratio: {ratio_cnn:.2f}")
    print(f"attack time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
