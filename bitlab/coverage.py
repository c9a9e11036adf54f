"""What a quantizer, an attack or a codec covered, and what it left alone and why (design notes: "nothing
silent").

A :class:`Coverage` has one row per parameter (or per layer input, for activation quantization) with a
status:

* ``"covered"`` -- the tool handled it (quantized, attackable, scaled);
* ``"by design"`` -- left alone on purpose, as documented (a bias kept in float for the int32
  accumulator, a normalization layer, a name outside the caller's selection);
* ``"unsupported"`` -- left alone because bitlab cannot handle it there (a module type it does not
  know, an input it cannot observe). These are the ones :func:`enforce` warns about, or refuses with
  ``strict=True``.

Print it (``print(cov)``) or take :meth:`Coverage.frame` for a DataFrame.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pandas as pd

__all__ = ["Coverage", "STATUSES", "CoverageWarning", "enforce"]

STATUSES = ("covered", "by design", "unsupported")
COLUMNS = ["name", "part", "module", "kind", "status", "reason"]


class CoverageWarning(UserWarning):
    """A tool left something the caller did not exclude unhandled (see :func:`enforce`)."""


@dataclass
class Coverage:
    """Rows ``name, part, module, kind, status, reason`` of what ``tool`` covered (see the module notes).

    ``part`` is ``"weight"`` for a parameter row and ``"input"`` for a layer's input activation;
    ``module`` the owning submodule's name and ``kind`` its type."""

    tool: str
    rows: list[dict[str, str]] = field(default_factory=list)

    def add(self, name: str, part: str, module: str, kind: str, status: str, reason: str = "") -> None:
        """Append one row (``status`` one of :data:`STATUSES`)."""
        if status not in STATUSES:
            raise ValueError(f"status: {status!r}; allowed {STATUSES}")
        self.rows.append(
            {"name": name, "part": part, "module": module, "kind": kind, "status": status, "reason": reason}
        )

    def names(self, status: str = "covered", part: str | None = None) -> list[str]:
        """Names with ``status`` (and ``part``, if given), in row order."""
        if status not in STATUSES:
            raise ValueError(f"status: {status!r}; allowed {STATUSES}")
        return [r["name"] for r in self.rows if r["status"] == status and part in (None, r["part"])]

    @property
    def covered(self) -> list[str]:
        """Names covered (weights and inputs)."""
        return self.names("covered")

    @property
    def skipped(self) -> dict[str, str]:
        """Name -> reason for everything left alone, by design or unsupported."""
        return {r["name"]: f"{r['status']}: {r['reason']}" for r in self.rows if r["status"] != "covered"}

    @property
    def unsupported(self) -> dict[str, str]:
        """Name -> reason for what was left alone because it is not supported."""
        return {r["name"]: r["reason"] for r in self.rows if r["status"] == "unsupported"}

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with columns ``name, part, module, kind, status, reason``."""
        return pd.DataFrame(self.rows, columns=COLUMNS)

    def __str__(self) -> str:
        counts = {s: sum(r["status"] == s for r in self.rows) for s in STATUSES}
        head = f"{self.tool} coverage: " + ", ".join(f"{n} {s}" for s, n in counts.items())
        lines = [head] + [
            f"  {r['status']:<11} {r['part']:<6} {r['name']} ({r['kind']})"
            + (f": {r['reason']}" if r["reason"] else "")
            for r in self.rows
        ]
        return "\n".join(lines)


def enforce(cov: Coverage, strict: bool) -> Coverage:
    """Warn (:class:`CoverageWarning`) naming every unsupported row, or with ``strict=True`` raise a
    ``ValueError`` naming them; returns ``cov``."""
    if not isinstance(strict, bool):
        raise TypeError(f"strict: expected a bool, got {type(strict).__name__}")
    bad = cov.unsupported
    if bad:
        listing = "; ".join(f"{n}: {why}" for n, why in bad.items())
        message = f"{cov.tool} left {len(bad)} unsupported: {listing}"
        if strict:
            raise ValueError(f"strict: {message} (pass strict=False to accept and get a warning)")
        warnings.warn(message, CoverageWarning, stacklevel=3)
    return cov
