"""Every notebook's paper path, executed end to end in smoke mode: ``SCALE = "paper"`` and
``SMOKE = True`` through papermill (the notebook built from its source in ``notebooks/src/``), on tiny
synthetic data written in the real on-disk formats (MNIST's idx files, CIFAR-10's binary batches, an
ImageFolder tree), on the CPU. Where the paper path needs torchvision (ResNet-50's pretrained weights), the
notebook replaces only that part and says so in its output; the test checks that it does."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

papermill = pytest.importorskip("papermill")

ROOT = Path(__file__).resolve().parents[1]
PAPER_NOTEBOOKS = sorted(p.stem for p in (ROOT / "notebooks" / "src").glob("0[1-6]_*.py"))


def _build(name: str, out: Path) -> Path:
    """The notebook ``name`` built from its percent-format source by scripts/py2nb.py, unexecuted."""
    spec = importlib.util.spec_from_file_location("py2nb", ROOT / "scripts" / "py2nb.py")
    assert spec and spec.loader
    py2nb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(py2nb)
    path = out / f"{name}.src.ipynb"
    nbformat.write(py2nb.parse((ROOT / "notebooks" / "src" / f"{name}.py").read_text()), path)
    return path


def _outputs(nb: dict) -> str:
    text = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            text.append("".join(out.get("text", "")))
            text.append("".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def test_the_paper_notebooks_are_all_here():
    assert len(PAPER_NOTEBOOKS) == 6, PAPER_NOTEBOOKS


@pytest.mark.slow
@pytest.mark.parametrize("name", PAPER_NOTEBOOKS)
def test_paper_path_runs_end_to_end_in_smoke_mode(name, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / f"{name}.ipynb"
    papermill.execute_notebook(
        str(_build(name, tmp_path)),
        str(out),
        parameters={"SCALE": "paper", "SMOKE": True},
        kernel_name="python3",
        cwd=str(tmp_path),
        progress_bar=False,
        log_output=False,
    )
    nb = json.loads(out.read_text())
    text = _outputs(nb)
    assert "GPU minutes (estimate)" in text, "the notebook prints its paper run's GPU time at the top"
    injected = [c for c in nb["cells"] if "injected-parameters" in c.get("metadata", {}).get("tags", [])]
    assert injected and "SMOKE = True" in "".join(injected[0]["source"])
    if "imagenet_resnet50(" in (ROOT / "notebooks" / "src" / f"{name}.py").read_text():
        assert "SMOKE: ResNet-50 with random weights" in text, "the smoke run says what it replaced"
    assert not list(tmp_path.glob("data")), "a smoke run downloads nothing"


def test_smoke_mode_is_refused_below_paper_scale():
    from bitlab.zoo.scale import check_scale

    check_scale("paper", True)
    with pytest.raises(ValueError, match="needs SCALE='paper'"):
        check_scale("small", True)
    with pytest.raises(ValueError, match="allowed"):
        check_scale("huge", False)
    with pytest.raises(TypeError, match="SMOKE"):
        check_scale("small", "yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "notebooks" / "src").glob("0*.py")))
def test_papermill_reads_every_parameter(name, tmp_path):
    """Each assignment of a notebook's ``parameters`` cell is a parameter papermill can see (an ``=`` in a
    comment once made it skip SMOKE with a warning), and the paper notebooks have SCALE and SMOKE."""
    import re

    from papermill.inspection import inspect_notebook

    path = _build(name, tmp_path)
    nb = nbformat.read(path, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    assigned = re.findall(r"^([A-Z_][A-Z0-9_]*) =", cell.source, flags=re.M)
    assert list(inspect_notebook(str(path))) == assigned
    if name in PAPER_NOTEBOOKS:
        assert assigned[:2] == ["SCALE", "SMOKE"]
