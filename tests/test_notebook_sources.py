"""Every notebook is built from its percent-format source: ``notebooks/src/NN_topic.py`` parsed by
scripts/py2nb.py (``parse``) gives the cells of ``notebooks/NN_topic.ipynb`` in the same order, with the same
cell type, source text and tags (outputs, execution counts and other metadata are not compared). Every
notebook has a source and every source a notebook. A notebook edited in Jupyter without its source (or the
other way round) fails here: rebuild it with ``python scripts/py2nb.py notebooks/src/NN_topic.py --execute``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
SOURCES = sorted((NOTEBOOKS / "src").glob("[0-9][0-9]_*.py"))
IPYNBS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _py2nb():
    spec = importlib.util.spec_from_file_location("py2nb", ROOT / "scripts" / "py2nb.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def cells(nb: nbformat.NotebookNode) -> list[tuple[str, str, list[str]]]:
    """(cell type, source text, tags) of every cell, in order."""
    out = []
    for c in nb.cells:
        src = c.source if isinstance(c.source, str) else "".join(c.source)
        out.append((c.cell_type, src, list(c.get("metadata", {}).get("tags", []))))
    return out


def test_every_notebook_has_a_source_and_every_source_a_notebook():
    assert SOURCES, "no notebooks/src/NN_*.py"
    sources, notebooks = {p.stem for p in SOURCES}, {p.stem for p in IPYNBS}
    assert not notebooks - sources, f"notebooks without a source in notebooks/src/: {sorted(notebooks - sources)}"
    assert not sources - notebooks, f"sources without a notebook in notebooks/: {sorted(sources - notebooks)}"


@pytest.mark.parametrize("src", SOURCES, ids=[p.stem for p in SOURCES])
def test_notebook_holds_the_cells_of_its_source(src):
    ipynb = NOTEBOOKS / f"{src.stem}.ipynb"
    if not ipynb.exists():
        pytest.fail(f"{src.name} has no notebook {ipynb.name}")
    want = cells(_py2nb().parse(src.read_text(encoding="utf-8")))
    have = cells(nbformat.read(ipynb, as_version=4))
    for i, (w, h) in enumerate(zip(want, have)):
        assert h[0] == w[0], f"{ipynb.name} cell {i}: a {h[0]} cell, the source has a {w[0]} cell"
        if h[1] != w[1]:
            wl, hl = w[1].splitlines(), h[1].splitlines()
            n = next((k for k, (a, b) in enumerate(zip(wl, hl)) if a != b), min(len(wl), len(hl)))
            pytest.fail(
                f"{ipynb.name} cell {i} ({w[0]}) differs from {src.name} at its line {n + 1}:\n"
                f"source:   {(wl[n : n + 1] or ['<end>'])[0]!r}\nnotebook: {(hl[n : n + 1] or ['<end>'])[0]!r}"
            )
        assert h[2] == w[2], f"{ipynb.name} cell {i}: tags {h[2]}, the source says {w[2]}"
    assert len(have) == len(want), f"{ipynb.name} has {len(have)} cells, {src.name} gives {len(want)}"
