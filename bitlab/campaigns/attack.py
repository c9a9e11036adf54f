"""Bit-flip attack by progressive bit search (Rakin, He, Fan 2019, "Bit-Flip Attack: Crushing Neural
Network with Progressive Bit Search", ICCV).

The attacker flips, one at a time, the stored weight bits that raise the loss most on a small batch
of attack data. Each iteration of the progressive bit search (PBS):

1. **Gradient ranking.** The gradient ``g = dL/dw`` of the loss on the attack batch is taken at the
   current (already flipped) weights. Flipping bit ``b`` of a stored word changes the weight by
   ``dw_b = decode(word ^ 2**b) - w``; to first order the loss changes by ``g * dw_b``. For 8-bit
   two's complement weights ``dw_b = +-2**b * scale`` (the sign bit ``-+2**7 * scale``), which is
   Rakin et al.'s ranking of bits by the gradient w.r.t. the bits; for FP32 (our extension) the
   decoded value is used exactly, so exponent flips rank by the huge change they cause.
2. **In-layer search.** In every attacked layer the ``candidates_per_layer`` bits with the largest
   positive first-order gain are flipped one at a time and the real loss on the attack batch measured.
3. **Cross-layer search.** The single flip with the highest real loss over all layers is kept.

Our choices, where the paper leaves room: the weights of Linear, Conv1d/2d/3d, Embedding,
MultiheadAttention (``in_proj_weight`` or ``q/k/v_proj_weight``, ``out_proj.weight``) and LSTM/GRU/RNN
(``weight_ih_l0``, ``weight_hh_l0``, ...) layers are attacked, the layers
:func:`bitlab.training.quant.quantize_model` quantizes (biases and normalization stay float, as in the
paper's 8-bit models; :func:`attack_coverage` lists every parameter with its status and
``AttackResult.coverage`` holds it); a flip is kept only if it raises the
attack loss (otherwise the search has stalled and stops); each stored bit is flipped at most once;
each sample's cross-entropy is capped at ``LOSS_CAP = 1000`` nats, a sample with non-finite logits
counting as the cap (such a sample is misclassified whatever else changes). With 8-bit weights the cap
is never reached in practice, so the objective is Rakin et al.'s mean cross-entropy; with FP32 one
exponent flip can drive the plain loss to ``inf``, after which it can no longer rank flips, while the
capped loss keeps pointing at the samples still classified correctly. Accuracy after each flip is
measured on ``eval_data``.

**Chance level.** :meth:`AttackResult.flips_to` counts the flips needed to bring the accuracy down to
``1 / num_classes + margin`` (``margin = 0.02`` by default: 12% on 10 classes), the accuracy of
random guessing plus a little room for the class balance of a finite test set.

The model handed in is never left corrupted: its weights are restored bit for bit when the attack
returns or raises. :meth:`AttackResult.applied` re-applies the flips found (through
:func:`bitlab.corrupted` and :class:`bitlab.faults.FlipList`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import pandas as pd
import torch
from torch import Tensor, nn

from ..codecs.base import Codec, Identity
from ..coverage import Coverage, enforce
from ..evaluate import Output, call, concat, eval_mode, gather, materialize, model_device, pick, take
from ..faults import FlipList
from ..formats import Format, Int, check_storable
from ..inject import InjectionReport, corrupted
from ..metrics import MetricSpec, frame_attrs, resolve_metric, signed
from ..params import ParamSelection, select_params
from ..progress import bar as progress_bar
from ..training.qlayers import NORMS, quantizable_layers, unit_weights
from ..validate import check_int
from .pbs import (
    LOSS_CAP,
    LossFn,
    alternatives,
    attack_loss,
    finite_rows,
    measure,
    objective_value,
    rank_flips,
)
from .trial_runs import refresh, trial_run, tried_values

__all__ = [
    "bit_flip_attack",
    "AttackResult",
    "attack_params",
    "attack_coverage",
    "attack_loss",
    "CHANCE_MARGIN",
    "LOSS_CAP",
]

#: accuracy above random guessing still counted as "at chance" by :meth:`AttackResult.flips_to`
CHANCE_MARGIN = 0.02
#: the attack's default store: 8-bit two's complement with a per-tensor scale (Rakin et al. 2019)
INT8 = Int(8)

Target = None | float | str


@dataclass
class AttackResult:
    """The flips a bit-flip attack committed, in order, and what each did.

    ``flips`` has one row per flip: ``step`` (1, 2, ...), ``param``, ``index`` (flat), ``bit``,
    ``old`` and ``new`` (the weight before and after), ``estimate`` (first-order loss gain ``g * dw``),
    ``loss`` (attack-batch loss after the flip) and the metric (column ``metric``, ``accuracy`` by
    default; on the evaluation data after it). ``clean_loss``/``clean_accuracy`` (the clean value of
    the metric) are those of the model stored in ``fmt`` before any flip.
    ``stopped`` says why the search ended: ``"budget"``, ``"target"`` or ``"stalled"``.
    ``coverage`` (:func:`attack_coverage`) lists which parameters the attack could flip and which it left alone.
    """

    flips: pd.DataFrame
    fmt: Format
    names: list[str]
    clean_loss: float
    clean_accuracy: float
    num_classes: int
    stopped: str
    seconds: float
    metric: str = "accuracy"
    higher_is_better: bool = True
    coverage: Coverage | None = None

    def __len__(self) -> int:
        return len(self.flips)

    def chance_level(self, margin: float = CHANCE_MARGIN) -> float:
        """Random-guess accuracy ``1 / num_classes`` plus ``margin``."""
        return 1.0 / self.num_classes + margin

    def flips_to(self, accuracy: float | None = None) -> int | None:
        """Number of flips after which the accuracy is at most ``accuracy`` (default: the chance
        level, :meth:`chance_level`); 0 if the clean model already is; ``None`` if never reached."""
        if accuracy is None and self.metric != "accuracy":
            raise ValueError(f"accuracy: give the level of metric {self.metric!r} (the chance level is for accuracy)")
        level = self.chance_level() if accuracy is None else float(accuracy)
        sign = 1.0 if self.higher_is_better else -1.0
        if sign * self.clean_accuracy <= sign * level:
            return 0
        at = signed(level, self.higher_is_better)  # signed(): a NaN value (broken outputs) is past any level
        hit = self.flips.index[[signed(v, self.higher_is_better) <= at for v in self.flips[self.metric]]]
        return int(self.flips.loc[hit[0], "step"]) if len(hit) else None

    def curve(self) -> pd.DataFrame:
        """Loss and the metric against the number of flips, starting from 0 (the clean store)."""
        head = pd.DataFrame([{"step": 0, "loss": self.clean_loss, self.metric: self.clean_accuracy}])
        return pd.concat([head, self.flips[["step", "loss", self.metric]]], ignore_index=True)

    def fault(self, n: int | None = None) -> FlipList:
        """The first ``n`` flips (default: all) as a fault for :func:`bitlab.corrupted`."""
        rows = self.flips if n is None else self.flips.iloc[:n]
        return FlipList(tuple(zip(rows["param"], rows["index"].astype(int), rows["bit"].astype(int))))

    @contextmanager
    def applied(self, model: nn.Module, n: int | None = None, codec: Codec | None = None) -> Iterator[InjectionReport]:
        """Hold ``model`` (the clean model attacked) with its weights stored in ``fmt`` and the first
        ``n`` flips (default: all) applied; restored bit for bit on exit. ``codec`` reads the store
        through a protection (e.g. :class:`bitlab.GroupChecksum`): the same flips hit the same words."""
        with corrupted(model, self.fault(n), fmt=self.fmt, codec=codec, params=self.names) as report:
            yield report


def _attackable(model: nn.Module) -> dict[int, str]:
    """``id(weight)`` -> the owning layer's kind, for every weight of a supported layer."""
    modules = dict(model.named_modules())
    kinds: dict[int, str] = {}
    for u in quantizable_layers(model):
        for _, w in unit_weights(u, modules[u]):
            kinds.setdefault(id(w), type(modules[u]).__name__)
    return kinds


def attack_coverage(model: nn.Module, params: ParamSelection = None) -> Coverage:
    """Every floating parameter of ``model`` (tied aliases too) and whether the bit-flip attack targets it:
    ``"covered"`` (a weight of a Linear, Conv*d, Embedding, MultiheadAttention or LSTM/GRU/RNN layer, among
    ``params``), ``"by design"`` (a bias or normalization parameter the caller did not select, or a name
    outside ``params``) or ``"unsupported"`` (a parameter of another module kind, or a bias/normalization
    parameter the caller selected by name)."""
    cov = Coverage("bit_flip_attack")
    chosen = {id(p) for _, p in select_params(model, params)}
    weights = _attackable(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    first: dict[int, str] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        if not p.is_floating_point():
            continue
        owner = n.rpartition(".")[0]
        kind = type(modules[owner]).__name__
        if id(p) not in chosen:
            cov.add(n, "weight", owner, kind, "by design", "not selected by params=")
        elif id(p) in weights:
            tied = first.setdefault(id(p), n)
            why = f"{weights[id(p)]} weight" if tied == n else f"tied: the same tensor as {tied!r}, attacked once"
            cov.add(n, "weight", owner, kind, "covered", why)
        else:
            layer = any(n.startswith(f"{u}.") or not u for u in quantizable_layers(model))
            plain = layer or isinstance(modules[owner], NORMS)
            status = "by design" if plain and params is None else "unsupported"
            why = "bias or normalization: stays float" if plain else f"{kind} is not an attacked layer kind"
            cov.add(n, "weight", owner, kind, status, why)
    return cov


def attack_params(model: nn.Module, params: ParamSelection = None) -> list[tuple[str, nn.Parameter]]:
    """The weights a bit-flip attack targets: the weights of every supported layer (see the module notes)
    among the parameters ``params`` selects (default: all), each tensor once."""
    weights = _attackable(model)
    chosen = [(n, p) for n, p in select_params(model, params) if id(p) in weights]
    if not chosen:
        raise ValueError(
            f"params: {params!r} selects no attackable weight; the bit-flip attack targets the weights of "
            "Linear or Conv1d/2d/3d, Embedding, MultiheadAttention and LSTM/GRU/RNN layers"
        )
    return chosen


def _attack_batch(data: object, size: int, seed: int, device: torch.device) -> tuple[object, Tensor]:
    """``size`` samples drawn (seeded, without replacement, on the CPU) from ``data``, on ``device``."""
    batches = materialize(data, device=device)
    x = concat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    chosen = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:size]
    return gather(x, chosen), y[chosen.to(y.device)]


def _target(target_accuracy: Target, num_classes: int) -> float | None:
    """The accuracy at which the attack stops: a number, chance (+ margin) for ``"chance"``, or none."""
    if target_accuracy == "chance":
        return 1.0 / num_classes + CHANCE_MARGIN
    return None if target_accuracy is None else float(target_accuracy)


def bit_flip_attack(
    model: nn.Module,
    data: object,
    fmt: Format = INT8,
    budget: int = 20,
    attack_batch: int = 128,
    eval_data: object | None = None,
    params: ParamSelection = None,
    candidates_per_layer: int = 8,
    target_accuracy: Target = None,
    seed: int = 0,
    progress: bool | None = None,
    metric: MetricSpec = "accuracy",
    output: Output = None,
    loss: LossFn | None = None,
    strict: bool = False,
) -> AttackResult:
    """Progressive bit search (Rakin et al. 2019, Sec. 3): up to ``budget`` flips, each the best of an
    in-layer search (``candidates_per_layer`` gradient-ranked flips per layer, tried by real loss)
    followed by a cross-layer search, on ``attack_batch`` samples drawn from ``data`` with ``seed``.

    ``fmt`` is the storage format of the attacked Linear/Conv weights (default ``Int(8)``: per-tensor
    symmetric quantization with the scale of the clean weights, two's complement words; ``FP32``
    works too). Accuracy after each flip is measured on ``eval_data`` (default: ``data``).
    ``target_accuracy`` stops the search once the accuracy is at most that value (``"chance"``: the
    chance level ``1/num_classes + CHANCE_MARGIN``); ``None`` spends the whole budget unless the search
    stalls. ``model`` is restored bit for bit on return and on error.

    ``metric`` is what is measured after each flip (accuracy by default; column and ``target_accuracy``
    then refer to it, in its direction, a NaN value counting as past any target; ``"chance"`` needs
    accuracy; ``metric="loss"`` is written as ``eval_loss``, next to the attack objective's ``loss``),
    ``output`` picks the scored tensor
    from a tuple/dict output, and ``loss`` is the objective the attack increases, ``(outputs, targets)
    -> scalar`` (default :func:`attack_loss`, the capped cross-entropy; a regression model needs e.g.
    an MSE). Batches may hold tensor, tuple or dict inputs.

    ``result.coverage`` (:func:`attack_coverage`) lists what the attack could flip; a parameter left alone
    as unsupported gives a :class:`~bitlab.coverage.CoverageWarning` naming it, or with ``strict=True``
    a ``ValueError``.
    """
    m = resolve_metric(metric)
    col = "eval_loss" if m.name == "loss" else m.name  # "loss" is the attack objective's column
    if loss is not None and not callable(loss):
        raise TypeError(f"loss: expected None or a callable (outputs, targets) -> scalar, got {type(loss).__name__}")
    loss_fn: LossFn = attack_loss if loss is None else loss
    if target_accuracy == "chance" and m.name != "accuracy":
        raise ValueError(f"target_accuracy: 'chance' needs metric='accuracy', got metric {m.name!r}; give a number")
    if not isinstance(fmt, Format):
        raise TypeError(f"fmt: expected a bitlab number format (Int(8), FP32, ...), got {type(fmt).__name__}")
    check_int("budget", budget, 1)
    check_int("attack_batch", attack_batch, 1)
    check_int("candidates_per_layer", candidates_per_layer, 1)
    if not (
        target_accuracy is None
        or target_accuracy == "chance"
        or (
            isinstance(target_accuracy, (int, float))
            and not isinstance(target_accuracy, bool)
            and (0.0 <= target_accuracy <= 1.0 or not m.counts)
        )
    ):
        raise ValueError(f"target_accuracy: {target_accuracy!r}; allowed None, 'chance' or a number in [0, 1]")
    layers = attack_params(model, params)
    coverage = enforce(attack_coverage(model, params), strict)
    for name, p in layers:
        check_storable(fmt, p.dtype, name)
        if not p.is_contiguous():
            raise ValueError(
                f"model: {name!r} is not stored contiguously (e.g. a channels_last model); the attack indexes the "
                "flat weights: call model.to(memory_format=torch.contiguous_format) first"
            )
    device = model_device(model)
    x, y = _attack_batch(data, attack_batch, seed, device)
    if loss is None and (y.is_floating_point() or y.is_complex()):
        raise ValueError(
            f"loss: the default objective is the cross-entropy of class labels, but the targets are {y.dtype} "
            "(regression); pass loss=, e.g. torch.nn.functional.mse_loss"
        )
    eval_batches = materialize(data if eval_data is None else eval_data, device=device)
    codec = Identity()
    saved = [(p, p.data.clone(), p.requires_grad) for _, p in layers]
    start = time.perf_counter()
    with eval_mode(model):
        try:
            states, words = [], []
            with torch.no_grad():
                for _, p in layers:
                    st = codec.fit(p.data, fmt)
                    w = codec.encode(p.data.reshape(-1), fmt, st)
                    p.data.copy_(codec.decode(w, fmt, st).view_as(p.data))
                    states.append(st)
                    words.append(w)
            for _, p in layers:
                p.requires_grad_(True)
            with torch.no_grad():
                first = pick(call(model, take(x, 1)), output)
                num_classes = int(first.shape[1]) if first.dim() == 2 else 0
            clean_loss = objective_value(model, x, y, output, loss_fn)
            run = trial_run(model, x) if isinstance(x, Tensor) else None  # tried flips recompute only their suffix
            clean_acc = measure(model, eval_batches, m, output)
            target = _target(target_accuracy, num_classes)

            # signed(): a NaN metric (a model whose outputs hold NaN) is past any target
            limit = None if target is None else signed(target, m.higher_is_better)

            def worse(v: float) -> bool:
                return limit is not None and signed(v, m.higher_is_better) <= limit

            done: list[set[tuple[int, int]]] = [set() for _ in layers]
            alts: list[Tensor | None] = [None for _ in layers]
            rows: list[dict[str, Any]] = []
            cur_loss, stopped = clean_loss, "budget"
            last: Tensor | None = None  # the parameter of the last kept flip
            bar = progress_bar(total=budget, desc=f"bit-flip attack {fmt.name}", progress=progress)
            for step in range(1, budget + 1):
                if target is not None and worse(rows[-1][col] if rows else clean_acc):
                    stopped = "target"
                    break
                out = pick(call(model, x), output)
                live = finite_rows(out.detach())  # samples with non-finite logits pass no gradient (nor NaNs) back
                if not live.any():
                    stopped = "stalled"
                    break
                if bool(live.all()):  # this forward is the one on the live rows: no second one
                    objective = loss_fn(out, y)
                else:
                    objective = loss_fn(pick(call(model, gather(x, live)), output), y[live])
                grads = torch.autograd.grad(objective, [p for _, p in layers], allow_unused=True)
                best = None  # (loss, layer, index, bit, new, estimate)
                with torch.no_grad():
                    if run is not None and step > 1:  # the trials' clean values after the last kept flip,
                        # without autograd, as the full-forward trials run; a chain from the last flip's layer on
                        run = refresh(run, cast(Tensor, x), last)
                    for li, (_, p) in enumerate(layers):
                        if grads[li] is None:
                            continue
                        grad = grads[li].to_dense() if grads[li].is_sparse else grads[li]  # Embedding(sparse=True)
                        flat = p.data.view(-1)
                        alt = alts[li]
                        if alt is None:  # only the layer flipped last step has new words
                            alt = alts[li] = alternatives(words[li], fmt, states[li])
                        finite = isinstance(fmt, Int) and bool(torch.isfinite(grad).all())  # int words: finite values
                        cands = rank_flips(alt, flat, grad, candidates_per_layer, done[li], finite)
                        if run is not None:  # the tried flips recompute only what follows the layer
                            tried = tried_values(run, p, [(i, new) for _, i, _, new in cands], y, output, loss_fn)
                        else:
                            tried = []
                            for _, i, _, new in cands:
                                old = flat[i].clone()
                                flat[i] = new
                                tried.append(objective_value(model, x, y, output, loss_fn))
                                flat[i] = old
                        for (est, i, b, new), trial in zip(cands, tried):
                            if best is None or trial > best[0]:
                                best = (trial, li, i, b, new, est)
                    if best is None or not best[0] > cur_loss:
                        stopped = "stalled"
                        break
                    trial, li, i, b, new, est = best
                    name, p = layers[li]
                    old_value = float(p.data.view(-1)[i])
                    words[li][i] ^= 1 << b
                    alts[li] = None
                    p.data.view(-1)[i] = new
                    last = p
                    done[li].add((i, b))
                    cur_loss = trial
                    acc = measure(model, eval_batches, m, output)
                rows.append(
                    {
                        "step": step,
                        "param": name,
                        "index": i,
                        "bit": b,
                        "old": old_value,
                        "new": new,
                        "estimate": est,
                        "loss": cur_loss,
                        col: acc,
                    }
                )
                bar.update()
            else:
                if target is not None and rows and worse(rows[-1][col]):
                    stopped = "target"
            bar.close()
        finally:
            with torch.no_grad():
                for p, values, req in saved:
                    p.data.copy_(values)
                    p.requires_grad_(req)
    columns = ["step", "param", "index", "bit", "old", "new", "estimate", "loss", col]
    df = pd.DataFrame(rows, columns=columns)
    df.attrs.update(frame_attrs(m, clean_acc, col))
    df.attrs.update({"clean_loss": clean_loss, "fmt": fmt.name})
    names = [n for n, _ in layers]
    seconds = time.perf_counter() - start
    return AttackResult(
        df, fmt, names, clean_loss, clean_acc, num_classes, stopped, seconds, col, m.higher_is_better, coverage
    )
