"""Progress bars for long work (training, campaigns, censuses): on by default, quiet when the
``CI`` environment variable is set or when a function is called with ``progress=False``."""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

__all__ = ["enabled", "bar"]


def enabled(progress: bool | None = None) -> bool:
    """``progress`` if given, else on unless the ``CI`` environment variable is set."""
    return (not os.environ.get("CI")) if progress is None else bool(progress)


def bar(iterable: Iterable | None = None, progress: bool | None = None, **kwargs: Any) -> tqdm:
    """A tqdm bar (plain text, so it works in terminals and notebooks alike) that respects :func:`enabled`."""
    kwargs.setdefault("leave", False)
    return tqdm(iterable, disable=not enabled(progress), **kwargs)
