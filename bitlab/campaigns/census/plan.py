"""What a census visits: the weights of each chosen parameter (all, or a seeded sample) and what each
reads back as with each selected bit flipped through the format and codec.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...codecs.base import Codec, subset_state
from ...formats import NATIVE, FloatFormat, Format
from ...validate import check_int

__all__ = ["census_format", "flipped_values", "weight_plan"]

#: the format a parameter of each dtype is stored in when ``fmt=None`` (the store's own table)
OWN_FORMAT: dict[torch.dtype, FloatFormat] = NATIVE
#: the dtypes whose values each float format's values are among (FP16 and BF16 are not nested)
_HOLDS: dict[torch.dtype, tuple[torch.dtype, ...]] = {
    torch.float32: (torch.float32, torch.float64),
    torch.float16: (torch.float16, torch.float32, torch.float64),
    torch.bfloat16: (torch.bfloat16, torch.float32, torch.float64),
}


def census_format(chosen: list[tuple[str, nn.Parameter]], fmt: Format | None) -> Format:
    """The format the census flips the chosen parameters in: ``fmt``, or with ``fmt=None`` the
    parameters' own dtype (FP32 for float32, FP16 for float16, BF16 for bfloat16). Shared by the
    naive and the fast census. Refused by name: ``fmt=None`` on parameters of mixed or other dtypes,
    and a float format whose flipped values the parameter's dtype cannot hold (FP32 bits of a float16
    weight: most flips would be rounded away when written back)."""
    if fmt is not None and not isinstance(fmt, Format):
        raise TypeError(
            f"fmt: expected a bitlab number format (FP32, FP16, BF16, Q(m, n), Int(bits)) or None, got {fmt!r}"
        )
    if fmt is None:
        dtypes = {p.dtype for _, p in chosen}
        if len(dtypes) > 1:
            shown = ", ".join(f"{name} ({p.dtype})" for name, p in chosen)
            raise ValueError(f"fmt=None: the chosen parameters have mixed dtypes ({shown}); pass fmt= explicitly")
        dtype = dtypes.pop() if dtypes else torch.float32
        if dtype not in OWN_FORMAT:
            name = next(n for n, p in chosen if p.dtype == dtype)
            allowed = ", ".join(str(d) for d in OWN_FORMAT)
            raise ValueError(
                f"fmt=None: parameter {name!r} is {dtype}, which has no bitlab format; allowed dtypes {allowed}"
            )
        return OWN_FORMAT[dtype]
    if isinstance(fmt, FloatFormat):
        for name, p in chosen:
            if p.dtype not in _HOLDS[fmt.dtype]:
                own = OWN_FORMAT[p.dtype].name if p.dtype in OWN_FORMAT else None
                raise ValueError(
                    f"fmt: {fmt.name} values do not fit parameter {name!r} ({p.dtype}): its flips would be "
                    f"rounded when written back; allowed: fmt=None or {own} (its own format), or an integer format"
                )
    return fmt


def weight_plan(chosen: list[tuple[str, nn.Parameter]], n_weights: int | None, seed: int) -> list[tuple[str, Tensor]]:
    """The weights a census visits per parameter: all of them, or ``n_weights`` drawn without
    replacement (seeded) and sorted. Shared by the naive and the fast census."""
    if n_weights is not None:
        check_int("n_weights", n_weights, 1)
    g = torch.Generator().manual_seed(seed)
    plan = []
    for name, p in chosen:
        idx = torch.arange(p.numel())
        if n_weights is not None and n_weights < p.numel():
            idx = torch.randperm(p.numel(), generator=g)[:n_weights].sort().values
        plan.append((name, idx))
    return plan


def flipped_values(orig: Tensor, idx: Tensor, positions: tuple[int, ...], fmt: Format, codec: Codec) -> Tensor:
    """What each selected weight reads back as with each bit flipped: shape (len(idx), n_bits)."""
    flat = orig.detach().reshape(-1)
    state = codec.fit(orig.detach(), fmt)
    sub = subset_state(state, idx, flat.numel())
    words = codec.encode(flat[idx], fmt, sub)
    shifts = torch.tensor(positions, dtype=torch.int64, device=words.device)  # on the weights' device
    masks = torch.ones_like(shifts).bitwise_left_shift(shifts)
    faulty = words[:, None] ^ masks[None, :]
    sub_rep = subset_state(state, idx.repeat_interleave(len(positions)), flat.numel())
    out = codec.decode(faulty.reshape(-1), fmt, sub_rep).to(orig.dtype)
    return out.reshape(len(idx), len(positions))


# ------------------------------------------------------------------------------- chain analysis
