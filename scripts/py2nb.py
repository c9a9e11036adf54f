"""Build a notebook from a percent-format Python source (``# %%`` cells), so that notebooks
are written and reviewed as plain text, then executed in place with their outputs kept.

    python scripts/py2nb.py notebooks/src/01_storage_media_errors.py            # -> notebooks/01_....ipynb
    python scripts/py2nb.py notebooks/src/01_storage_media_errors.py --execute  # and run it (outputs kept)

Cell markers: ``# %%`` (code), ``# %% [markdown]`` (markdown: each line starts with ``# ``),
``# %% tags=["parameters"]`` (a tagged code cell; several tags may be listed).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import nbformat

MARK = re.compile(r"^# %%(?P<md> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def parse(text: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    cells: list[tuple[bool, list[str], list[str]]] = []
    for line in text.splitlines():
        m = MARK.match(line)
        if m:
            cells.append((bool(m["md"]), json.loads(m["tags"]) if m["tags"] else [], []))
        elif cells:
            cells[-1][2].append(line)
    for md, tags, lines in cells:
        while lines and not lines[-1].strip():
            lines.pop()
        while lines and not lines[0].strip():
            lines.pop(0)
        if md:
            src = "\n".join(re.sub(r"^# ?", "", ln) for ln in lines)
            cell = nbformat.v4.new_markdown_cell(src)
        else:
            cell = nbformat.v4.new_code_cell("\n".join(lines))
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def execute(nb: nbformat.NotebookNode, cwd: Path, timeout: int = 900) -> float:
    import os

    from nbclient import NotebookClient

    os.environ.setdefault("CI", "true")  # committed outputs without progress bars
    start = time.perf_counter()
    NotebookClient(nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}).execute()
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="default: notebooks/<stem>.ipynb next to src/")
    ap.add_argument("--execute", action="store_true")
    args = ap.parse_args()
    out = args.out or args.source.parent.parent / f"{args.source.stem}.ipynb"
    nb = parse(args.source.read_text())
    if args.execute:
        seconds = execute(nb, out.parent)
        print(f"{out.name}: executed in {seconds:.1f} s")
    nbformat.write(nb, out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
