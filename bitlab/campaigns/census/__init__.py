"""The single-bit census of Pranto et al. 2025: the relative accuracy drop (RAD) of every single-bit
flip, exact and fast (:func:`bit_census`), with the naive loop it is checked against
(:func:`naive_bit_census`). See :mod:`.engine` for how the fast path certifies each outcome, one stage per module.
"""

from __future__ import annotations

from .engine import bit_census, count_above
from .naive import naive_bit_census
from .plan import flipped_values, weight_plan

__all__ = ["bit_census", "count_above", "flipped_values", "naive_bit_census", "weight_plan"]
