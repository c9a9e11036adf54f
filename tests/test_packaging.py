"""The install routes agree: pyproject.toml, environment.yml and constraints.txt list the same packages and pin
the same torch; the README and CI name the test command; the book builder finds and runs notebooks."""

import importlib.util
import os
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TORCH_PIN = "torch==2.13.0"


def norm(requirement: str) -> str:
    """PEP 503 normalized project name of a requirement string (``scikit_learn>=1`` -> ``scikit-learn``)."""
    name = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement).group(1)
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def conda_env():
    yaml = pytest.importorskip("yaml")
    return yaml.safe_load((ROOT / "environment.yml").read_text())


def conda_requirements(env):
    conda, pip = [], []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep["pip"]
        else:
            conda.append(dep)
    return conda, pip


def test_environment_lists_the_same_packages(pyproject, conda_env):
    proj = pyproject["project"]
    wanted = {norm(r) for r in proj["dependencies"] + proj["optional-dependencies"]["dev"]}
    conda, pip = conda_requirements(conda_env)
    have = {norm(r) for r in conda + pip} - {"python", "pip"}
    assert have == wanted, f"only in environment.yml: {have - wanted}; only in pyproject.toml: {wanted - have}"


def test_torch_pinned_everywhere(pyproject, conda_env):
    assert TORCH_PIN in [r.replace(" ", "") for r in pyproject["project"]["dependencies"]]
    conda, pip = conda_requirements(conda_env)
    assert TORCH_PIN in pip and not any(norm(r) == "torch" for r in conda)
    constraints = [
        ln.strip()
        for ln in (ROOT / "constraints.txt").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert constraints == [TORCH_PIN]
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.count("-c constraints.txt") >= 2 and f'"{TORCH_PIN}"' in makefile


def test_python_version_and_extras(pyproject, conda_env):
    assert pyproject["project"]["requires-python"] == ">=3.11"
    assert "python=3.11" in conda_requirements(conda_env)[0]
    assert [norm(r) for r in pyproject["project"]["optional-dependencies"]["vision"]] == ["torchvision"]
    assert "slow" in " ".join(pyproject["tool"]["pytest"]["ini_options"]["markers"])


def test_readme_and_ci_name_the_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make book" in readme
    assert 'pip install "bitlab[vision]"' in readme and "conda env create -f environment.yml" in readme
    ci = ROOT / ".ci" / "run"
    text = ci.read_text()
    assert "set -euo pipefail" in text and re.search(r"^make test$", text, re.M)
    assert os.access(ci, os.X_OK)


def test_makefile_targets():
    makefile = (ROOT / "Makefile").read_text()
    for target in ("install", "test", "book", "clean"):
        assert re.search(rf"^{target}:", makefile, re.M), target


@pytest.fixture(scope="module")
def build_book():
    spec = importlib.util.spec_from_file_location("build_book", ROOT / "scripts" / "build_book.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_build_book_helpers(build_book, tmp_path):
    assert build_book.parse_params(["SCALE=paper", "SEEDS=[0, 1]", "N=3"]) == {
        "SCALE": "paper",
        "SEEDS": [0, 1],
        "N": 3,
    }
    with pytest.raises(SystemExit):
        build_book.parse_params(["no-equals"])
    for name in ("02_b.ipynb", "01_a.ipynb", "notes.txt"):
        (tmp_path / name).write_text("{}")
    assert [p.name for p in build_book.find_notebooks([tmp_path])] == ["01_a.ipynb", "02_b.ipynb"]
    with pytest.raises(SystemExit):
        build_book.find_notebooks([tmp_path / "notes.txt"])


@pytest.mark.slow
def test_build_book_runs_notebooks(build_book, tmp_path, capsys):
    nbformat = pytest.importorskip("nbformat")
    pytest.importorskip("papermill")
    src = tmp_path / "nbs"
    src.mkdir()
    ok = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('SCALE = "paper"')
    params.metadata["tags"] = ["parameters"]
    ok.cells = [params, nbformat.v4.new_code_cell("assert SCALE == 'small'\nprint('ran', SCALE)")]
    bad = nbformat.v4.new_notebook()
    bad.cells = [nbformat.v4.new_code_cell("raise ValueError('broken on purpose')")]
    nbformat.write(ok, src / "01_ok.ipynb")
    nbformat.write(bad, src / "02_bad.ipynb")
    out = tmp_path / "book"
    assert build_book.main([str(src), "--out", str(out)]) == 1
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[1].startswith("01_ok.ipynb,True,") and summary[2].startswith("02_bad.ipynb,False,")
    assert "broken on purpose" in summary[2]
    assert (out / "html" / "01_ok.html").exists() and (out / "html" / "index.html").exists()
    executed = nbformat.read(out / "01_ok.ipynb", as_version=4)
    assert any("ran small" in o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    table = capsys.readouterr().out
    assert re.search(r"^01_ok.ipynb +pass +\d+\.\d$", table, re.M) and re.search(r"^02_bad.ipynb +FAIL", table, re.M)
