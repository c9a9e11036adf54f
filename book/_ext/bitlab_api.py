"""Sphinx extension of the bitlab book's API reference (the pages scripts/api_pages.py generates).

* autodoc imports ``bitlab`` from the working tree being built: scripts/render_book.py sets
  ``BITLAB_BOOK_TREE`` to that tree's root; it goes first on ``sys.path`` before autodoc imports anything,
  and the build stops if ``bitlab`` still resolves elsewhere (an installed or editable copy of another
  checkout).
* a module-level constant or alias without a ``#:`` comment is shown without the docstring of its type (a
  ``dict`` registry or a ``dict[str, Tensor]`` alias would otherwise read as the docstring of ``dict``).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from pathlib import Path

from sphinx.errors import ExtensionError


def _use_tree() -> None:
    tree = os.environ.get("BITLAB_BOOK_TREE")
    if not tree:
        return
    root = Path(tree).resolve()
    if str(root) not in sys.path[:1]:
        sys.path.insert(0, str(root))
    for name in [m for m in sys.modules if m == "bitlab" or m.startswith("bitlab.")]:
        del sys.modules[name]  # an earlier import from elsewhere must not be reused
    bitlab = importlib.import_module("bitlab")
    where = Path(bitlab.__file__ or "").resolve()
    if not where.is_relative_to(root):
        raise ExtensionError(f"bitlab_api: bitlab imports from {where}, not from the tree {root}")


def _no_type_docstring(app, what, name, obj, options, lines):  # noqa: ANN001, ARG001 -- autodoc's signature
    """Drop a constant's docstring when it is only the docstring of its type (or of an alias' origin)."""
    if what not in ("data", "attribute") or isinstance(obj, type):
        return
    shown = [ln.strip() for ln in lines if ln.strip()]
    for source in (type(obj), getattr(obj, "__origin__", None)):
        doc = inspect.getdoc(source) if source is not None else None
        if shown and doc and shown == [ln.strip() for ln in doc.splitlines() if ln.strip()]:
            lines.clear()
            return


def setup(app):  # noqa: ANN001, ANN201 -- the Sphinx extension entry point
    _use_tree()
    app.connect("autodoc-process-docstring", _no_type_docstring)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
