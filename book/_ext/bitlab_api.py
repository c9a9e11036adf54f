"""Sphinx extension of the bitlab book's API reference (the pages scripts/api_pages.py generates).

* autodoc imports ``bitlab`` from the working tree being built: scripts/render_book.py sets
  ``BITLAB_BOOK_TREE`` to that tree's root; it goes first on ``sys.path`` before autodoc imports anything,
  and the build stops if ``bitlab`` still resolves elsewhere (an installed or editable copy of another
  checkout).
* a module-level constant or alias without a ``#:`` comment is shown without the docstring of its type (a
  ``dict`` registry or a ``dict[str, Tensor]`` alias would otherwise read as the docstring of ``dict``);
  a class or function as a default value is shown by its name (its ``<class ...>`` repr breaks the
  signature);
* markup docutils could not read (``|W|``, an unclosed ``**``) is shown as literal text, not as a link to
  an error message that is not on the page;
* a reference Sphinx cannot find by name (a name re-exported by a package, an old alias such as
  ``bitlab.train.fit``) links where the object it imports as is documented; a bare name out of its
  module's context (a summary line in a table) links the one documented ``bitlab`` object of that name;
* Google-style ``Args:`` sections are read (napoleon) in the docstrings of functions, methods and classes.
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
from pathlib import Path

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.ext.napoleon import Config, GoogleDocstring


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


def _no_type_docstring(app, what, name, obj, options, lines):  # autodoc-process-docstring handler
    """Drop a constant's docstring when it is only the docstring of its type (or of an alias' origin)."""
    if what not in ("data", "attribute") or isinstance(obj, type):
        return
    shown = [ln.strip() for ln in lines if ln.strip()]
    for source in (type(obj), getattr(obj, "__origin__", None)):
        doc = inspect.getdoc(source) if source is not None else None
        if shown and doc and shown == [ln.strip() for ln in doc.splitlines() if ln.strip()]:
            lines.clear()
            return


_REPR = re.compile(r"<(?:class|function) '?([\w.<>]+?)'?(?: at 0x[0-9a-f]+)?>")


def _plain_defaults(app, what, name, obj, options, signature, return_annotation):  # autodoc-process-signature handler
    """``<class 'bitlab.codecs.base.Identity'>`` as a default (a dataclass field holding a class or function)
    becomes ``Identity``: Sphinx cannot parse the repr and would print the signature as raw text."""
    if signature and "<" in signature:
        signature = _REPR.sub(lambda m: m.group(1).rpartition(".")[2], signature)
    return signature, return_annotation


_GOOGLE = Config(napoleon_numpy_docstring=False)


def _google_sections(app, what, name, obj, options, lines):  # autodoc-process-docstring handler
    """Napoleon's ``Args:`` / ``Returns:`` sections, for functions, methods and classes only: on a
    constant's ``#:`` comment napoleon would read the text before its first colon as the constant's type."""
    if what in ("function", "method", "class", "exception", "classmethod", "staticmethod"):
        lines[:] = GoogleDocstring(lines, _GOOGLE, app, what, name, obj, options).lines()


def _plain_problems(app, doctree, docname):  # doctree-resolved handler
    """Markup docutils could not read (``|W|`` taken for a substitution) is shown as the text it was, not as a
    link to an error message the page leaves out (the warning is still counted by scripts/render_book.py)."""
    for node in list(doctree.findall(nodes.problematic)):
        node.replace_self(nodes.literal(node.astext(), node.astext()))


def _python_object(path: str) -> object | None:
    """The object at dotted ``path`` (longest importable module prefix, then attributes), or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except Exception:  # not a module (or not importable): try a shorter prefix
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr, None)
            if obj is None:
                return None
        return obj
    return None


def _through_python(app, env, node, contnode):  # missing-reference handler
    """A ``bitlab`` reference Sphinx cannot find by name (``:class:`Codec``` in the package that re-exports
    it, ``:func:`bitlab.train.fit``` through an old alias) is resolved by importing what it names and linking
    the object's documented home (its defining module)."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    module = node.get("py:module") or ""
    candidates = [target] if target.startswith("bitlab") else []
    while module:
        candidates.append(f"{module}.{target}")
        module = module.rpartition(".")[0]
    domain = env.get_domain("py")
    for path in candidates:
        obj = _python_object(path)
        if obj is None:
            continue
        if inspect.ismodule(obj):
            home, typ = obj.__name__, "mod"
        else:
            owner, qual = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
            if not (isinstance(owner, str) and isinstance(qual, str)):
                continue
            home, typ = f"{owner}.{qual}", node["reftype"]
        if home != path or home in domain.objects:
            ref = domain.resolve_xref(env, node["refdoc"], app.builder, typ, home, node, contnode)
            if ref is not None:
                return ref
    # out of its module's context (a summary line in a table): the one documented bitlab object of that name
    named = [k for k in domain.objects if k.startswith("bitlab.") and k.endswith("." + target)]
    if "." not in target and len(named) == 1:
        return domain.resolve_xref(env, node["refdoc"], app.builder, node["reftype"], named[0], node, contnode)
    return None


def setup(app):  # the Sphinx extension entry point
    _use_tree()
    app.connect("autodoc-process-docstring", _no_type_docstring)
    app.connect("autodoc-process-docstring", _google_sections)
    app.connect("autodoc-process-signature", _plain_defaults)
    app.connect("doctree-resolved", _plain_problems)
    app.connect("missing-reference", _through_python)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
