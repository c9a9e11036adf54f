"""Memory budgets of the census's vectorized steps, and the allocator set-up they assume (speed only,
never a result)."""

from __future__ import annotations

import torch

__all__ = ["CACHE_ELEMENTS", "ELEMENTS_PER_CHUNK", "RECHECK_ELEMENTS", "heap_headroom"]

ELEMENTS_PER_CHUNK = 1 << 24  # memory budget of one vectorized step (float64 elements)
CACHE_ELEMENTS = 1 << 19  # float64 elements per vectorized screen / row step (4 MB: stays in the heap
#                           that heap_headroom keeps; fresh pages cost several times the arithmetic)
RECHECK_ELEMENTS = 1 << 21  # float32 elements of the widest activation per step of the recheck's rerun


def heap_headroom(nbytes: int = 30 << 20) -> None:
    """Allocate and free one block of ``nbytes``. glibc's malloc then serves blocks up to that size from
    its heap and keeps up to twice as much free memory there (its dynamic mmap and trim thresholds
    follow the largest block freed, up to 32 MB), instead of mapping fresh pages for every
    temporary over 128 kB: on a small CPU the page faults cost several times the arithmetic of
    the census's temporaries. Elsewhere it is a harmless allocation."""
    torch.empty(nbytes // 4, dtype=torch.float32)  # freed as soon as it is made
