# bitlab: `make book` runs the notebook series into build/book/ and renders it as an HTML book
# (build/book/_build/html/index.html), with an API reference generated from bitlab's docstrings;
# `make book-render` renders the committed notebooks without running them;
# `make test` runs the tests.
# Both first build a local virtualenv in .venv (once; again only when pyproject.toml or constraints.txt change).

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NOTEBOOKS ?= notebooks
PIP_ARGS ?=

.PHONY: install lint test unit nbval book book-render clean distclean

install: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# constraints.txt pins torch==2.13.0 for every requirement, so nothing can pull in another torch.
$(STAMP): pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/python -m pip install $(PIP_ARGS) -c constraints.txt "torch==2.13.0"
	$(BIN)/python -m pip install $(PIP_ARGS) -c constraints.txt -e ".[dev]"
	@touch $@

# ruff (lint + format) and mypy, as configured in pyproject.toml
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: unit nbval

unit: install
	$(BIN)/pytest tests/

# pytest exits with 5 when it collects nothing: no notebooks yet is not a failure.
# Two notebooks run at a time (pytest-xdist, one file per worker), one torch thread each: the small
# digits models gain little from a second thread, so this nearly halves the wall time on 2 cores.
nbval: install
	@if ls $(NOTEBOOKS)/*.ipynb >/dev/null 2>&1; then \
	  rc=0; OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadfile --nbval-lax --nbval-current-env $(NOTEBOOKS)/ || rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "nbval: no notebook cells collected"; \
	  elif [ $$rc -ne 0 ]; then exit $$rc; fi; \
	else echo "nbval: no notebooks in $(NOTEBOOKS)/ yet, skipped"; fi

book: install
	$(BIN)/python scripts/build_book.py $(NOTEBOOKS) --out build/book

# the same book from the notebooks' committed outputs: nothing is executed (seconds instead of minutes)
book-render: install
	$(BIN)/python scripts/build_book.py $(NOTEBOOKS) --no-execute --out build/book

clean:
	rm -rf build dist .pytest_cache .hypothesis *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

# also removes the virtualenv (the next make install rebuilds it)
distclean: clean
	rm -rf $(VENV)
