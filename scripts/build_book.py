"""Execute every notebook at small scale and render the executed copies as an HTML book (``make book``).

    python scripts/build_book.py                         # notebooks/*.ipynb -> build/book/
    python scripts/build_book.py /tmp/nbs --out /tmp/bk  # another folder (or single .ipynb files)
    python scripts/build_book.py -p SCALE=paper          # papermill parameters (default: SCALE="small")
    python scripts/build_book.py --no-execute            # the book from the committed outputs (make book-render)

Executed notebooks go to ``<out>/``, standalone HTML pages to ``<out>/html/`` (with an ``index.html``), and a
table of run times and pass/fail to ``<out>/summary.csv`` and the terminal. Then scripts/render_book.py makes
the Jupyter Book of the executed notebooks: ``<out>/_build/html/index.html``, one chapter per notebook.
With ``--no-execute`` nothing runs: the book is rendered from the notebooks as they are (seconds, not minutes).
Exits non-zero if any notebook failed or the book did not build.
The kernel is this interpreter's (``python3`` resolves to ``sys.executable``), run in the notebook's folder,
with ``CI=true`` unless set (bitlab then shows no progress bars).
"""

from __future__ import annotations

import argparse
import ast
import csv
import html
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import render_book

find_notebooks = render_book.find_notebooks


def parse_params(items: list[str]) -> dict[str, object]:
    """``KEY=VALUE`` pairs; VALUE is a Python literal when it parses as one, else a string."""
    params: dict[str, object] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise SystemExit(f"build_book: parameter must look like NAME=VALUE, got {item!r}")
        try:
            params[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            params[key] = value
    return params


def execute(src: Path, dst: Path, params: dict[str, object], timeout: int) -> tuple[bool, float, str]:
    """Run ``src`` with papermill into ``dst``; returns (passed, seconds, error summary)."""
    import papermill as pm

    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(src),
            str(dst),
            parameters=params,
            kernel_name="python3",
            language="python",
            cwd=str(src.parent),
            progress_bar=False,
            execution_timeout=timeout,
        )
        ok, err = True, ""
    except Exception as e:
        ok = False
        lines = str(getattr(e, "evalue", "") or e).strip().splitlines()
        err = f"{getattr(e, 'ename', type(e).__name__)}: {lines[0][:200] if lines else ''}"
    return ok, time.perf_counter() - start, err


def render(nb_path: Path, html_path: Path) -> None:
    """The executed notebook as a standalone HTML page (figures embedded)."""
    import nbformat
    from nbconvert import HTMLExporter

    body, _ = HTMLExporter().from_notebook_node(nbformat.read(nb_path, as_version=4))
    html_path.write_text(body, encoding="utf-8")


def write_index(rows: list[dict[str, object]], path: Path) -> None:
    """A page linking every rendered notebook, with its status and run time."""
    lines = []
    for r in rows:
        name = html.escape(str(r["notebook"]))
        link = f'<a href="{html.escape(str(r["html"]))}">{name}</a>' if r["html"] else name
        lines.append(
            f"<tr><td>{link}</td><td>{'pass' if r['passed'] else 'FAIL'}</td>"
            f"<td>{float(r['seconds']):.1f}</td><td>{html.escape(str(r['error']))}</td></tr>"
        )
    path.write_text(
        "<!doctype html><meta charset='utf-8'><title>bitlab notebooks</title>"
        "<h1>bitlab notebooks</h1><table border=1 cellpadding=4>"
        "<tr><th>notebook</th><th>status</th><th>seconds</th><th>error</th></tr>\n" + "\n".join(lines) + "</table>\n",
        encoding="utf-8",
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "paths",
        nargs="*",
        type=Path,
        default=[Path("notebooks")],
        help="notebook folders or .ipynb files (default: notebooks)",
    )
    ap.add_argument("--out", type=Path, default=Path("build/book"), help="output folder (default: build/book)")
    ap.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help='papermill parameter (repeatable; default: SCALE="small")',
    )
    ap.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell (default: 900)")
    ap.add_argument(
        "--no-execute",
        action="store_true",
        help="do not run the notebooks: render the book from their committed outputs",
    )
    ap.add_argument("--no-book", action="store_true", help="skip the Jupyter Book (executed notebooks and pages only)")
    args = ap.parse_args(argv)

    notebooks = find_notebooks(args.paths)
    if not notebooks:
        print(f"build_book: no notebooks in {', '.join(map(str, args.paths))}")
        return 0
    if args.no_execute:
        return 0 if args.no_book else book(notebooks, args.out)
    params = {"SCALE": "small", **parse_params(args.param)}
    os.environ.setdefault("CI", "true")  # the kernels inherit it: no progress bars in the pages
    html_dir = args.out / "html"
    html_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, object]] = []
    for i, src in enumerate(notebooks, 1):
        print(f"[{i}/{len(notebooks)}] {src} ...", flush=True)
        dst = args.out / src.name
        dst.unlink(missing_ok=True)  # a copy from an earlier run must not pass for this run's output
        ok, seconds, err = execute(src.resolve(), dst.resolve(), params, args.timeout)
        page = html_dir / (src.stem + ".html")
        page.unlink(missing_ok=True)
        if dst.exists():
            try:
                render(dst, page)
            except Exception as e:
                ok, err = False, err or f"HTML rendering failed: {type(e).__name__}: {e}"
        print(f"    {'pass' if ok else 'FAIL'} in {seconds:.1f} s" + (f"  ({err})" if err else ""), flush=True)
        rows.append(
            {
                "notebook": src.name,
                "passed": ok,
                "seconds": round(seconds, 2),
                "error": err,
                "html": page.name if page.exists() else "",
            }
        )
    write_index(rows, html_dir / "index.html")
    with open(args.out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["notebook", "passed", "seconds", "error", "html"])
        w.writeheader()
        w.writerows(rows)

    width = max(len(str(r["notebook"])) for r in rows)
    print(f"\n{'notebook':<{width}}  status  seconds")
    for r in rows:
        print(f"{r['notebook']:<{width}}  {'pass' if r['passed'] else 'FAIL':<6}  {float(r['seconds']):7.1f}")
    failed = [r for r in rows if not r["passed"]]
    print(f"{'total':<{width}}  {len(rows) - len(failed)}/{len(rows)}  {sum(float(r['seconds']) for r in rows):8.1f}")
    print(f"\nExecuted notebooks: {args.out}/\nHTML pages:         {(html_dir / 'index.html').resolve()}")
    rc = 0
    if not args.no_book:  # failed notebooks stay in the book: their pages show the error
        rc = book([args.out / src.name for src in notebooks if (args.out / src.name).exists()], args.out)
    if failed:
        print(f"{len(failed)} notebook(s) failed: {', '.join(str(r['notebook']) for r in failed)}", file=sys.stderr)
        return 1
    return rc


def book(notebooks: list[Path], out: Path) -> int:
    """Render ``notebooks`` (already executed) as the Jupyter Book in ``out/_build/html``; 0 on success."""
    print(f"\nRendering the book ({len(notebooks)} chapters) with Jupyter Book ...", flush=True)
    start = time.perf_counter()
    try:
        index = render_book.render(notebooks, out)
    except SystemExit as e:
        print(f"build_book: {e}", file=sys.stderr)
        return 1
    print(f"Book:               {index.resolve()}  ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
