"""Generate the book's API reference from the ``bitlab`` package itself (called by scripts/render_book.py).

    python scripts/api_pages.py --out /tmp/api     # write the pages alone, to look at them

Nothing here names bitlab's modules: they are found by walking the package (``pkgutil.walk_packages``) in
the working tree this script belongs to (imported from there, never from an installed copy), private
modules (``_version``) skipped. Each child of ``bitlab`` gets one ``.rst`` page holding it and all its
submodules (``bitlab.campaigns`` with ``sweep``, ``census``, ``census.engine``, ...); a few small modules
share a page (:data:`JOIN`). Every module section starts with the module's docstring (``automodule``) and
documents, through autodoc, each name of its ``__all__`` that the module defines itself; a name it only
re-exports is listed with a link to the module that defines it, so every object is described once. The
top-level ``api/bitlab.rst`` lists what ``import bitlab as bl`` exposes, each name linked to its real module.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import inspect
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "bitlab"
#: preferred page order (the pipeline's, as in bitlab's docstring); modules not named here follow, by name
ORDER = [
    "formats",
    "codecs",
    "faults",
    "params",
    "inject",
    "evaluate",
    "campaigns",
    "training",
    "curvature",
    "zoo",
    "defenses",
    "plot",
]
#: small modules that share a page with another (child of ``bitlab`` -> the child whose page it joins)
JOIN = {"rescale": "defenses", "progress": "plot"}
#: an ``autodata`` value longer than this is left out of the page (registries, tables)
MAX_VALUE = 100


def import_package(root: Path = ROOT, name: str = PACKAGE) -> ModuleType:
    """``name`` imported from ``root`` (put first on ``sys.path``); refuses a copy from anywhere else."""
    if str(root) not in sys.path[:1]:
        sys.path.insert(0, str(root))
    pkg = importlib.import_module(name)
    where = Path(pkg.__file__ or "").resolve()
    if not where.is_relative_to(root.resolve()):
        raise SystemExit(f"api_pages: {name} was imported from {where}, not from the tree being built ({root})")
    return pkg


def discover(pkg: ModuleType) -> list[str]:
    """The public modules of ``pkg`` (itself first), by walking its folders; an import error stops the build."""
    errors: list[str] = []
    names = [pkg.__name__]
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".", onerror=errors.append):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    if errors:
        raise SystemExit(f"api_pages: could not import {', '.join(errors)}")
    for n in names:
        importlib.import_module(n)
    return names


def defined_names(module: ModuleType) -> set[str]:
    """Names bound at the top level of the module's own source (def, class, assignment), not imported."""
    try:
        tree = ast.parse(inspect.getsource(module))
    except (OSError, TypeError):
        return set()
    out: set[str] = set()

    def visit(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out.add(node.name)
            elif isinstance(node, ast.Assign):
                for t in node.targets:
                    out.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
                out.add(node.target.id)
            elif hasattr(ast, "TypeAlias") and isinstance(node, ast.TypeAlias):
                out.add(node.name.id)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for h in getattr(node, "handlers", []):
                    visit(h.body)

    visit(tree.body)
    return out


def public(module: ModuleType) -> list[str]:
    """The module's ``__all__``; without one, the names its own source defines that do not start with ``_``."""
    names = getattr(module, "__all__", None)
    if names is None:
        return sorted(n for n in defined_names(module) if not n.startswith("_"))
    return list(names)


@dataclass
class Api:
    """Where each public object is documented: ``owner[(module, name)]`` -> the module that defines it."""

    modules: list[str]
    owned: dict[str, list[str]] = field(default_factory=dict)  # module -> names it defines and documents
    home: dict[int, str] = field(default_factory=dict)  # id(object) -> "module.name" documented

    @classmethod
    def build(cls, names: list[str]) -> Api:
        api = cls(names)
        for m in names:
            mod = sys.modules[m]
            mine = defined_names(mod)
            api.owned[m] = [n for n in public(mod) if n in mine and not inspect.ismodule(getattr(mod, n, None))]
            for n in api.owned[m]:
                api.home.setdefault(id(getattr(mod, n)), f"{m}.{n}")
        return api

    def target(self, module: str, name: str) -> str | None:
        """The documented full name of ``module.name`` (where it is defined), or None if nowhere."""
        obj = getattr(sys.modules[module], name)
        if inspect.ismodule(obj):
            return obj.__name__
        return self.home.get(id(obj))


def role(obj: object) -> str:
    if inspect.ismodule(obj):
        return "mod"
    if inspect.isclass(obj):
        return "class"
    if callable(obj):
        return "func"
    return "data"


def heading(text: str, char: str) -> str:
    return f"{text}\n{char * len(text)}\n"


def first_line(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    para = doc.split("\n\n", 1)[0]
    return " ".join(para.split())


def entry(module: str, name: str, obj: object) -> str:
    """The autodoc directive for one object defined in ``module``."""
    full = f"{module}.{name}"
    if inspect.isclass(obj):
        return f".. autoclass:: {full}\n   :members:\n   :show-inheritance:\n"
    if inspect.isfunction(obj) or inspect.isbuiltin(obj):
        return f".. autofunction:: {full}\n"
    value = repr(obj)
    hide = len(value) > MAX_VALUE or " at 0x" in value or "\n" in value
    return f".. autodata:: {full}\n" + ("   :no-value:\n" if hide else "")


def summary(api: Api, module: str, names: list[str]) -> str:
    """An autosummary table of ``module.<names>``, each linked to where it is documented."""
    rows, mods = [], []
    mod = sys.modules[module]
    for n in names:
        obj = getattr(mod, n, None)
        if inspect.ismodule(obj):
            mods.append(
                f"* :mod:`{obj.__name__}` -- ``{module}.{n}``"
                if obj.__name__ != f"{module}.{n}"
                else f"* :mod:`{obj.__name__}`"
            )
            continue
        tgt = api.target(module, n)
        if tgt is not None:  # relative to the section's module (autosummary refuses it as a prefix)
            rows.append(f"   ~{tgt.removeprefix(module + '.')}")
    out = ""
    if rows:
        out += ".. autosummary::\n\n" + "\n".join(rows) + "\n\n"
    if mods:
        out += "Modules:\n\n" + "\n".join(mods) + "\n\n"
    return out


def module_section(api: Api, m: str, level: str | None) -> str:
    """One module: its docstring, then its own public objects; re-exports linked, not repeated."""
    mod = sys.modules[m]
    out = heading(m, level) + "\n" if level else ""
    out += f".. automodule:: {m}\n\n"
    owned = api.owned[m]
    others = [n for n in public(mod) if n not in owned]
    if others and (hasattr(mod, "__path__") or not owned):
        out += ".. rubric:: Public names\n\n" + summary(api, m, public(mod))
    elif others:
        links = []
        for n in others:
            obj = getattr(mod, n, None)
            tgt = api.target(m, n)
            if tgt:
                links.append(f":{role(obj)}:`~{tgt}`")
        if links:
            out += f"Also exported here: {', '.join(links)}.\n\n"
    for n in owned:
        out += entry(m, n, getattr(mod, n)) + "\n"
    return out


def ordered(api: Api, modules: list[str]) -> list[str]:
    """``modules`` (one package and its submodules) as a tree, each package's children in the order of the
    package's ``__all__`` (the first name each child defines or is), the others after them by name."""

    def children(parent: str) -> list[str]:
        kids = [m for m in modules if m.rpartition(".")[0] == parent]
        names = public(sys.modules[parent]) if hasattr(sys.modules[parent], "__path__") else []

        def rank(kid: str) -> tuple[int, str]:
            for i, n in enumerate(names):
                tgt = api.target(parent, n) if hasattr(sys.modules[parent], n) else None
                if tgt is not None and (tgt == kid or tgt.startswith(kid + ".")):
                    return i, kid
            return len(names), kid

        return sorted(kids, key=rank)

    def tree(m: str) -> list[str]:
        return [m] + [d for k in children(m) for d in tree(k)]

    heads = [m for m in modules if m.rpartition(".")[0] not in modules]
    return [d for h in heads for d in tree(h)]


def page_groups(api: Api, modules: list[str]) -> list[tuple[str, list[str]]]:
    """``(slug, modules)`` per page: bitlab itself, then each child with its submodules (and joined ones)."""
    top = modules[0]
    children = sorted(
        {m.split(".")[1] for m in modules[1:]}, key=lambda c: (ORDER.index(c) if c in ORDER else len(ORDER), c)
    )
    groups: list[tuple[str, list[str]]] = [(top, [top])]
    for c in children:
        if c in JOIN and JOIN[c] in children:
            continue
        members = [c] + [j for j, host in JOIN.items() if host == c and j in children]
        groups.append(
            (
                c,
                [
                    m
                    for k in members
                    for m in ordered(api, [m for m in modules if m == f"{top}.{k}" or m.startswith(f"{top}.{k}.")])
                ],
            )
        )
    return groups


def top_page(api: Api, pkg: ModuleType) -> str:
    """What ``import bitlab as bl`` exposes, each name linked to the module that defines it."""
    name = pkg.__name__
    out = heading(f"{name} (import {name} as bl)", "=") + "\n"
    out += f".. automodule:: {name}\n\n"
    objs, mods, other = [], [], []
    for n in public(pkg):
        obj = getattr(pkg, n)
        if inspect.ismodule(obj):
            mods.append((n, obj))
        elif (tgt := api.target(name, n)) is not None:
            objs.append(f"   ~{tgt.removeprefix(name + '.')}")
        else:
            other.append(f"* ``bl.{n}`` = ``{obj!r}``")
    if objs:
        out += heading("Functions, classes and formats", "-") + "\n"
        out += "Each of these is ``bl.<name>``; the link goes to the module that defines it.\n\n"
        out += ".. autosummary::\n\n" + "\n".join(objs) + "\n\n"
    if mods:
        out += heading("Modules", "-") + "\n" + ".. list-table::\n   :header-rows: 1\n\n"
        out += "   * - name\n     - module\n     - about\n"
        for n, obj in mods:
            out += f"   * - ``bl.{n}``\n     - :mod:`{obj.__name__}`\n     - {first_line(obj)}\n"
        out += "\n"
    if other:
        out += heading("Other names", "-") + "\n" + "\n".join(other) + "\n"
    return out


def write(out: Path, root: Path = ROOT) -> list[tuple[str, str]]:
    """Write ``out/index.rst`` and one page per group; returns ``(docname relative to out, title)`` in order."""
    pkg = import_package(root)
    modules = discover(pkg)
    api = Api.build(modules)
    out.mkdir(parents=True, exist_ok=True)
    pages: list[tuple[str, str, list[str]]] = []
    for slug, members in page_groups(api, modules):
        if slug == pkg.__name__:
            text, title = top_page(api, pkg), f"{pkg.__name__}"
        else:
            heads = [m for m in members if m.count(".") == 1]
            title = " and ".join(heads)
            text = heading(title, "=") + "\n"
            if len(heads) > 1:
                text += "".join(f"* :mod:`{h}` -- {first_line(sys.modules[h])}\n" for h in heads) + "\n"
            for m in members:  # a lone head is the page itself; submodules are sections, one level per depth
                depth = m.count(".") - 1 + (len(heads) > 1)
                text += module_section(api, m, "-~^"[depth - 1] if depth else None) + "\n"
        (out / f"{slug}.rst").write_text(text, encoding="utf-8")
        pages.append((slug, title, members))
    index = heading("API reference", "=") + "\n"
    index += (
        f"Every public name of ``{pkg.__name__}``, with its signature and docstring, generated from the "
        f"package by ``scripts/api_pages.py`` when the book is built. Modules are listed by pipeline "
        f"stage; names are documented under the module that defines them (the short names of "
        f"``import {pkg.__name__} as bl`` are on the :doc:`{pkg.__name__}` page).\n\n"
    )
    index += ".. list-table::\n   :header-rows: 1\n\n   * - page\n     - modules\n"
    for slug, _title, members in pages:
        index += f"   * - :doc:`{slug}`\n     - {', '.join(f':mod:`{m}`' for m in members)}\n"
    (out / "index.rst").write_text(index, encoding="utf-8")
    return [("index", "API reference"), *((slug, title) for slug, title, _ in pages)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True, help="folder for the .rst pages")
    args = ap.parse_args(argv)
    for doc, title in write(args.out):
        print(f"{args.out / doc}.rst  {title}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
