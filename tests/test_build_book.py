"""``make book`` (scripts/build_book.py) executes each notebook into build/book: a notebook that fails now
must not be shown with the outputs of an earlier, successful run -- whether it fails while running (papermill
writes the failed run) or before (an unreadable notebook: nothing is written). The API reference pages
(scripts/api_pages.py) follow the package they are generated from."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _build_book():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("how", ["raises", "unreadable"])
def test_failed_notebook_replaces_the_copy_of_an_earlier_run(tmp_path, how):
    pytest.importorskip("papermill")
    pytest.importorskip("ipykernel")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("SCALE = 'small'", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("raise RuntimeError('broken on purpose')"),
    ]
    src = tmp_path / "07_broken.ipynb"
    nbformat.write(nb, src)
    if how == "unreadable":
        src.write_text("{ not json")
    out = tmp_path / "book"
    out.mkdir()
    stale = nbformat.v4.new_notebook()
    stale.cells = [nbformat.v4.new_markdown_cell("STALE OUTPUT OF AN EARLIER RUN")]
    nbformat.write(stale, out / src.name)
    rc = _build_book().main([str(src), "--out", str(out), "--no-book", "--timeout", "120"])
    assert rc == 1
    text = (out / src.name).read_text() if (out / src.name).exists() else ""
    assert "STALE OUTPUT" not in text
    if how == "raises":
        assert "broken on purpose" in text  # papermill kept the failed run with its error
    html = out / "html" / "07_broken.html"
    assert not html.exists() or "STALE OUTPUT" not in html.read_text()


def _api_pages(monkeypatch):
    spec = importlib.util.spec_from_file_location("api_pages", ROOT / "scripts" / "api_pages.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "api_pages", mod)  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_api_pages_follow_the_package(tmp_path, monkeypatch):
    """The API pages come from walking the package: a new module gets its section without being named
    anywhere, private modules are left out, a re-exported name is documented once (where it is defined)
    and linked from the package that re-exports it."""
    pkg = tmp_path / "src" / "bitlab"
    (pkg / "stage").mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        '"""Top."""\nfrom .stage import thing\n__all__ = ["thing", "stage"]\nfrom . import stage\n'
    )
    (pkg / "_version.py").write_text('__version__ = "0"\n')
    (pkg / "stage" / "__init__.py").write_text('"""Stage."""\nfrom .brand_new import thing\n__all__ = ["thing"]\n')
    (pkg / "stage" / "brand_new.py").write_text(
        '"""A module added today."""\n__all__ = ["thing", "LIMIT"]\n'
        "#: the limit\nLIMIT = 3\n\n"
        'def thing(x: int) -> int:\n    """Doubles."""\n    return 2 * x\n'
    )
    for name in [m for m in sys.modules if m == "bitlab" or m.startswith("bitlab.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "path", list(sys.path))
    api = _api_pages(monkeypatch)
    try:
        docs = api.write(tmp_path / "api", root=tmp_path / "src")
    finally:  # the real bitlab comes back (monkeypatch) once the stand-in's modules are gone
        for name in [m for m in sys.modules if m == "bitlab" or m.startswith("bitlab.")]:
            del sys.modules[name]
    assert [d for d, _ in docs] == ["index", "bitlab", "stage"]
    page = (tmp_path / "api" / "stage.rst").read_text()
    assert ".. automodule:: bitlab.stage.brand_new" in page
    assert page.count(".. autofunction:: bitlab.stage.brand_new.thing") == 1
    assert ".. autodata:: bitlab.stage.brand_new.LIMIT" in page
    assert "~brand_new.thing" in page  # the package's summary links the defining module
    top = (tmp_path / "api" / "bitlab.rst").read_text()
    assert "~stage.brand_new.thing" in top and ":mod:`bitlab.stage`" in top
    assert "_version" not in top + page


def _render_book():
    spec = importlib.util.spec_from_file_location("render_book", ROOT / "scripts" / "render_book.py")
    mod = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(ROOT / "scripts"))
    spec.loader.exec_module(mod)
    return mod


def test_front_page_claims_come_from_the_results_files(tmp_path):
    from bitlab.report import Claim, save_claims

    rb = _render_book()
    assert "No results files" in rb.claims_section(tmp_path / "none")
    save_claims([Claim("03", "Fasfous et al. 2022", "a | b", "+25%", [0.1, 0.2, 0.15])], tmp_path / "03_claims.csv")
    save_claims([Claim("01", "Qin et al. 2017", "nulling", "2x", [-1.0, -1.1, -0.9])], tmp_path / "01_claims.csv")
    md = rb.claims_section(tmp_path).splitlines()
    rows = [line for line in md if line.startswith("| 0")]
    assert [r.split(" | ")[0] for r in rows] == ["| 01", "| 03"]
    assert rows[0].endswith("**opposite** |") and rows[1].endswith("**reproduced** |")
    assert "a \\| b" in rows[1]  # a pipe in a claim does not break the table
    assert any("*The rule:*" in line for line in md)
    intro = (ROOT / "book" / "intro.md").read_text()
    assert rb.CLAIMS_MARKER.search(intro), "book/intro.md lost its claims marker"
