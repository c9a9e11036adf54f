"""The HTML book renders: built from the committed notebooks (``build_book.py --no-execute``, no execution) and
opened in headless Chromium, driven through the DevTools protocol over a pipe (stdlib only).

Checks: every chapter page loads and shows its notebook's first heading; every <img> on every page has a
``src`` that is a file of the build and actually decoded (natural width > 0); each chapter shows at least as
many images as its notebook has figure outputs; every relative link resolves to a file of the build and every
``#anchor`` exists on its target page; the front page links every chapter and the API reference. The API
reference (``api/*.html``, generated from the package): every public module of this tree's ``bitlab`` has its
section, the index links every API page, known public names are shown with the parameters of their real
signature and the start of their docstring, the ``bitlab`` page links what ``import bitlab as bl`` exposes to
where it is documented, and autodoc imported every module. A screenshot of the front page is saved to
``build/book-check/screenshot.png``.
"""

from __future__ import annotations

import base64
import fcntl
import importlib
import inspect
import json
import os
import pkgutil
import re
import select
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import ClassVar
from urllib.parse import unquote, urldefrag, urljoin, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb") if not p.name.startswith("."))
OUT = ROOT / "build" / "book-check"
CHROMIUM = shutil.which("chromium")
FIGURE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
API = "api"  # the API reference's folder in the build

pytestmark = [
    pytest.mark.book,
    pytest.mark.skipif(CHROMIUM is None, reason="chromium is not on PATH (Debian: apt-get install -y chromium)"),
    pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/ yet"),
]


class Chromium:
    """Headless Chromium driven by the Chrome DevTools protocol over --remote-debugging-pipe (fds 3 and 4)."""

    FLAGS: ClassVar[list[str]] = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--window-size=1280,900",
        "--remote-debugging-pipe",
    ]

    def __init__(self, exe: str, profile: Path, timeout: float = 30.0):
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # park the child's ends above 9 so that moving them to 3 and 4 cannot overwrite one with the other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (to_chrome_r, from_chrome_w)]
        os.close(to_chrome_r)
        os.close(from_chrome_w)

        def wire():  # in the child, before the descriptors not in pass_fds are closed
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        profile.mkdir(parents=True, exist_ok=True)
        self.log = profile.parent / "chromium.log"  # a file, not a pipe nobody drains
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [exe, *self.FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                preexec_fn=wire,
                pass_fds=(3, 4),
            )
        for fd in high:
            os.close(fd)
        self.timeout, self._buf, self._id, self.events = timeout, b"", 0, []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)

    def _read(self, deadline: float) -> dict:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._r], [], [], left)[0]:
                raise TimeoutError("no answer from chromium")
            chunk = os.read(self._r, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium exited: {self.log.read_text(errors='replace')[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if session:
            msg["sessionId"] = self.session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        deadline = time.monotonic() + self.timeout
        while True:
            for i, ev in enumerate(self.events):
                if ev.get("method") == method:
                    return self.events.pop(i)
            self.events.append(self._read(deadline))

    def open(self, url: str) -> None:
        self.events.clear()
        result = self.call("Page.navigate", session=True, url=url)
        assert "errorText" not in result, f"{url}: {result['errorText']}"
        self.wait_event("Page.loadEventFired")

    def location(self, timeout: float = 10.0) -> str:
        """The page's URL once it stays put (a redirect page navigates again after its load event)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.evaluate("location.href")
            except RuntimeError as e:  # the page navigated away while asked: ask the new one
                if "navigated" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)
        assert "exceptionDetails" not in result, result["exceptionDetails"]
        return result["result"]["value"]

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"]))

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


PAGE_STATE = """JSON.stringify({
  title: document.title,
  h1: Array.from(document.querySelectorAll('article h1, main h1')).map(e => e.textContent),
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), url: i.currentSrc || i.src,
           loaded: i.complete && i.naturalWidth > 0, output: !!i.closest('.cell_output, .output')})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.getAttribute('href')),
  ids: Array.from(document.querySelectorAll('[id], a[name]')).map(e => e.id || e.getAttribute('name')),
  sigs: Array.from(document.querySelectorAll('dl.py > dt.sig[id]')).map(d => ({id: d.id, text: d.innerText,
           doc: (d.nextElementSibling ? d.nextElementSibling.innerText : '').slice(0, 400)})),
})"""


def first_heading(nb_path: Path) -> str:
    """The first markdown heading of a notebook, read independently of scripts/render_book.py."""
    for cell in json.loads(nb_path.read_text())["cells"]:
        if cell["cell_type"] == "markdown":
            src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
            for line in src.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    pytest.fail(f"{nb_path.name} has no markdown heading: the book needs one as the chapter title")


def figure_count(nb_path: Path) -> int:
    return sum(
        any(t in out.get("data", {}) for t in FIGURE_TYPES)
        for cell in json.loads(nb_path.read_text())["cells"]
        for out in cell.get("outputs", [])
    )


class IdParser(HTMLParser):
    """The ids (and <a name>) of a page that was not opened in the browser."""

    def __init__(self):
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.ids.update(v for k, v in attrs.items() if k == "id" or (tag == "a" and k == "name") if v)


@pytest.fixture(scope="module")
def book():
    """Render the book from the committed notebooks (no execution) and visit every page in Chromium."""
    if OUT.exists():
        shutil.rmtree(OUT)
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "build_book.py"),
            *map(str, NOTEBOOKS),
            "--no-execute",
            "--out",
            str(OUT),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(*[ln for ln in proc.stderr.splitlines() if ln.startswith("Sphinx:")], sep="\n")
    html = OUT / "_build" / "html"
    browser = Chromium(CHROMIUM, OUT / "chromium-profile")
    pages = {}
    try:  # pages are keyed by their path in the build: "intro.html", "api/codecs.html"
        for page in sorted([*html.glob("*.html"), *html.glob(f"{API}/*.html")]):
            if page.name == "index.html" and page.parent == html:  # Jupyter Book's redirect, checked below
                continue
            browser.open(page.as_uri())
            key = page.relative_to(html).as_posix()
            assert browser.location() == page.as_uri(), f"{key} navigated away"
            pages[key] = json.loads(browser.evaluate(PAGE_STATE))
        browser.open((html / "index.html").as_uri())
        deadline = time.monotonic() + 10
        while (landed := browser.location()) != (html / "intro.html").as_uri() and time.monotonic() < deadline:
            time.sleep(0.1)
        pages["index.html"] = {"landed": landed}
        browser.open((html / "intro.html").as_uri())
        browser.screenshot(OUT / "screenshot.png")
    finally:
        browser.close()
    print(f"book built and visited in {time.perf_counter() - start:.1f} s; screenshot {OUT / 'screenshot.png'}")
    return html, pages


def test_index_leads_to_the_front_page(book):
    html, pages = book
    assert pages["index.html"]["landed"] == (html / "intro.html").as_uri()


def test_front_page_links_every_chapter(book):
    _, pages = book
    assert "intro.html" in pages and (OUT / "screenshot.png").stat().st_size > 10_000
    assert pages["intro.html"]["h1"], "the front page has no title"
    links = {urldefrag(h)[0] for h in pages["intro.html"]["links"]}
    for nb in NOTEBOOKS:
        assert f"{nb.stem}.html" in links, f"the front page does not link chapter {nb.stem}"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_chapter_loads_with_title_and_figures(book, nb):
    _, pages = book
    page = pages.get(f"{nb.stem}.html")
    assert page is not None, f"no page for {nb.name}"
    title = first_heading(nb)
    assert any(title in h for h in page["h1"]), f"{nb.stem}: title {title!r} not among headings {page['h1']}"
    assert page["title"].startswith(title)
    shown = [im for im in page["images"] if im["output"] and im["loaded"]]
    assert len(shown) >= figure_count(nb), f"{nb.stem}: {figure_count(nb)} figures in the notebook, {len(shown)} shown"


def test_every_image_is_a_file_of_the_build(book):
    html, pages = book
    for name, page in pages.items():
        for im in page.get("images", []):
            assert im["loaded"], f"{name}: image {im['src']} did not load"
            url = urlsplit(im["url"])
            if url.scheme == "data":
                continue
            assert url.scheme == "file", f"{name}: image {im['src']} is not part of the book"
            path = Path(unquote(url.path)).resolve()
            assert path.is_file() and path.is_relative_to(html.resolve()), f"{name}: {im['src']} missing"


def test_no_broken_internal_links(book):
    html, pages = book
    base = html.resolve()
    ids = {name: set(page["ids"]) for name, page in pages.items() if "ids" in page}
    checked = 0
    for name, page in pages.items():
        for href in page.get("links", []):
            if href in ("", "#") or urlsplit(href).scheme in ("http", "https", "mailto", "javascript"):
                continue
            target, frag = urldefrag(urljoin((html / name).as_uri(), href))
            path = Path(unquote(urlsplit(target).path)).resolve()
            assert path.is_relative_to(base) and path.exists(), f"{name}: link {href!r} points to a missing file"
            key = path.relative_to(base).as_posix()
            if frag and path.suffix == ".html":
                if key not in ids:
                    parser = IdParser()
                    parser.feed(path.read_text(encoding="utf-8"))
                    ids[key] = parser.ids
                assert unquote(frag) in ids[key], f"{name}: link {href!r}: no #{frag} in {key}"
            checked += 1
    assert checked >= len(NOTEBOOKS), "suspiciously few internal links"


def public_modules() -> list[str]:
    """The public modules of this tree's ``bitlab``, found here by walking it (not by scripts/api_pages.py)."""
    if str(ROOT) not in sys.path[:1]:
        sys.path.insert(0, str(ROOT))
    bitlab = importlib.import_module("bitlab")
    assert Path(bitlab.__file__).resolve().is_relative_to(ROOT), f"bitlab imported from {bitlab.__file__}"
    return [
        "bitlab",
        *(
            m.name
            for m in pkgutil.walk_packages(bitlab.__path__, "bitlab.")
            if not any(part.startswith("_") for part in m.name.split("."))
        ),
    ]


def api_pages(pages: dict) -> dict:
    return {name: page for name, page in pages.items() if name.startswith(f"{API}/")}


def test_front_page_links_the_api_reference(book):
    _, pages = book
    links = {urldefrag(urljoin("intro.html", h))[0] for h in pages["intro.html"]["links"]}
    assert f"{API}/index.html" in links, "the front page does not link the API reference"
    assert f"{API}/bitlab.html" in links


def test_api_index_links_every_api_page(book):
    _, pages = book
    index = pages.get(f"{API}/index.html")
    assert index is not None and any("API reference" in h for h in index["h1"])
    links = {urldefrag(urljoin(f"{API}/index.html", h))[0] for h in index["links"]}
    api = api_pages(pages)
    assert len(api) >= 10, f"only {sorted(api)} in the API reference"
    for name in api:
        assert name in links, f"the API index does not link {name}"


def test_every_public_module_has_its_section(book):
    _, pages = book
    anchors = {i: name for name, page in api_pages(pages).items() for i in page["ids"]}
    for mod in public_modules():
        assert f"module-{mod}" in anchors, f"no section for {mod} in the API reference"
    assert "module-bitlab.train" not in anchors, "an old alias is documented instead of the real module"


# (page, top-level module the object lives under, name): the object is looked up in the working tree
KNOWN = [
    ("inject", "bitlab.inject", "corrupted"),
    ("codecs", "bitlab.codecs", "WeightScaling"),
    ("campaigns", "bitlab.campaigns", "ber_sweep"),
    ("campaigns", "bitlab.campaigns", "bit_census"),
    ("training", "bitlab.training", "fit"),
    ("formats", "bitlab.formats", "Q"),
    ("faults", "bitlab.faults", "BitErrorRate"),
]


@pytest.mark.parametrize("page,package,name", KNOWN, ids=[k[2] for k in KNOWN])
def test_api_page_shows_name_with_signature_and_docstring(book, page, package, name):
    _, pages = book
    shown = pages.get(f"{API}/{page}.html")
    assert shown is not None, f"no API page {page}"
    public_modules()
    obj = getattr(importlib.import_module(package), name)
    where = f"{obj.__module__}.{name}"  # documented where it is defined (not where it is re-exported)
    assert where.startswith(package + "."), f"{name} is defined in {obj.__module__}, not under {package}"
    sigs = [s for s in shown["sigs"] if s["id"] == where]
    assert len(sigs) == 1, f"{name}: expected one description {where} on {page}, found {len(sigs)}"
    text = " ".join(sigs[0]["text"].split())
    assert re.search(rf"\b{name}\s*\(", text), f"{name}: no signature in {text!r}"
    for p in inspect.signature(obj).parameters.values():
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            assert p.name in text, f"{name}: parameter {p.name} missing from the signature {text!r}"
    first = re.findall(r"\w+", inspect.getdoc(obj))[:4]  # words only: the page typesets quotes and markup
    doc = re.findall(r"\w+", sigs[0]["doc"])
    assert any(doc[i : i + len(first)] == first for i in range(len(doc))), (
        f"{name}: docstring {' '.join(first)!r}... not shown, got {sigs[0]['doc'][:100]!r}"
    )


def test_bitlab_page_links_what_bl_exposes(book):
    _, pages = book
    page = pages[f"{API}/bitlab.html"]
    targets = {urldefrag(urljoin(f"{API}/bitlab.html", h))[1] for h in page["links"]}
    public_modules()
    import bitlab

    for name in bitlab.__all__:
        obj = getattr(bitlab, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert f"{obj.__module__}.{name}" in targets, f"bl.{name}: no link to {obj.__module__}.{name}"
        elif inspect.ismodule(obj):
            assert f"module-{obj.__name__}" in targets, f"bl.{name}: no link to module {obj.__name__}"


def test_autodoc_imported_every_module(book):
    warnings = (OUT / "sphinx-warnings.txt").read_text(encoding="utf-8")
    failed = [ln for ln in warnings.splitlines() if "failed to import" in ln.lower() or "autodoc" in ln.lower()]
    assert not failed, "\n".join(failed)
