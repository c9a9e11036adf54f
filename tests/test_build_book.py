"""``make book`` (scripts/build_book.py) executes each notebook into build/book: a notebook that fails now
must not be shown with the outputs of an earlier, successful run -- whether it fails while running (papermill
writes the failed run) or before (an unreadable notebook: nothing is written)."""
from __future__ import annotations

import importlib.util
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
    nb.cells = [nbformat.v4.new_code_cell("SCALE = 'small'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("raise RuntimeError('broken on purpose')")]
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
    html = (out / "html" / "07_broken.html")
    assert not html.exists() or "STALE OUTPUT" not in html.read_text()
