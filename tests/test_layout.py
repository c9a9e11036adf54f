"""The package layout keeps its rules: no import cycles (function-level imports included), no private
names imported across modules, small modules that each open with a docstring, and every name that
``bitlab`` exposes lazily listed in ``__all__`` and ``dir()``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bitlab

ROOT = Path(bitlab.__file__).parent
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, list[str]]]:
    """(imported module, names taken from it) for every import statement anywhere in the file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            names = [a.name for a in node.names]
            found.append((base, names))
            found += [(f"{base}.{n}", []) for n in names if f"{base}.{n}" in MODULES]
    return [(m, n) for m, n in found if m == "bitlab" or m.startswith("bitlab.")]


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, _ in _imports(name, path):
            # importing a submodule also runs its parents' __init__; a module's own parent package is
            # already being imported when the module runs, so that edge is not a cycle
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target != name and not name.startswith(target + "."):
                graph[name].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_no_private_names_across_modules():
    bad = []
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            bad += [f"{name} imports {n} from {target}" for n in names if n.startswith("_") and n != "__version__"]
    assert bad == []


def test_tests_and_benchmarks_use_no_private_names():
    bad = []
    for path in sorted([*ROOT.parent.joinpath("tests").glob("*.py"), *ROOT.parent.joinpath("benchmarks").glob("*.py")]):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bitlab"):
                bad += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                base = node.value
                if isinstance(base, ast.Name) and base.id in ("bl", "bitlab", "census_mod", "bh"):
                    bad.append(f"{path.name}:{node.lineno}: {base.id}.{node.attr}")
    assert bad == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_is_small_and_documented(name):
    path = MODULES[name]
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{name}: {lines} lines; split it by concept (at most about {MAX_LINES})"
    doc = ast.get_docstring(ast.parse(path.read_text()))
    assert doc and doc.strip(), f"{name} has no module docstring saying what it is"


def test_every_lazy_name_is_listed_and_resolves():
    listed = set(bitlab.__all__)
    assert listed <= set(dir(bitlab))
    for name in sorted(listed):
        assert getattr(bitlab, name) is not None, name
    public = {n for n in dir(bitlab) if not n.startswith("_")} - {"annotations", "importlib", "sys"}
    assert public - listed <= {"Any", "ModuleType", "Sequence"}, public - listed


def test_flat_paths_of_bitlab_0_1_still_import():
    import importlib

    from bitlab import campaigns, codecs, training

    assert importlib.import_module("bitlab.train") is training
    assert importlib.import_module("bitlab.campaign") is campaigns
    assert importlib.import_module("bitlab.protect") is codecs
    assert importlib.import_module("bitlab.census").bit_census is campaigns.bit_census
    assert training.__spec__ is not None and training.__spec__.name == "bitlab.training"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("bitlab.no_such_module")


def test_version_has_one_source():
    from importlib.metadata import version

    assert version("bitlab") == bitlab.__version__
    assert "version =" not in (ROOT.parent / "pyproject.toml").read_text().split("[tool.setuptools.dynamic]")[0]
