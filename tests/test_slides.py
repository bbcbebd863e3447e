"""Lecture mode (scripts/slides.py): the slide structure follows the headings, the decks build offline,
and a real browser (headless Chromium, driven over the DevTools protocol) opens, advances and renders them,
both the static decks and the live RISE slideshow inside JupyterLab.

The browser tests need Chromium (Debian: `apt-get install chromium`; another binary: CHROMIUM=/path) and
skip without it; the DevTools client is websocket-client, a jupyter_server dependency. No browser download.
"""
import base64
import copy
import functools
import http.server
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import slides  # noqa: E402

NOTEBOOKS = slides.NOTEBOOKS
REMOTE = re.compile(r"^\s*(https?:)?//", re.I)


_ids = itertools.count()


def md(text):
    return {"cell_type": "markdown", "id": f"m{next(_ids)}", "metadata": {}, "source": text}


def code(text, outputs=()):
    return {"cell_type": "code", "id": f"c{next(_ids)}", "metadata": {}, "source": text,
            "outputs": list(outputs), "execution_count": None}


FIGURE = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}


# --- the structure --------------------------------------------------------------------------------

def test_slide_types_follow_the_headings():
    cells = [md("# 01 · Título\n\nTiempo de CPU: ..."),
             code("# NBVAL_IGNORE_OUTPUT\nimport course_utils\ncfg = course_utils.setup(seed=0)"),
             code("import math\nimport torch\nfrom course_utils import clip\nN = 3"),
             md("## 1. La pérdida"), md("Texto que sigue al título."),
             code("x = torch.ones(3)\nprint(x)"), md("Lectura del resultado."),
             code("import json\nshow(x)", [FIGURE]),          # an import, but it draws a figure: shown
             md("### Un detalle"), code("y = 2"),
             code("def f(s):\n    ### BEGIN SOLUTION\n    return s\n    ### END SOLUTION"),
             {**code("answer = 4"), "metadata": {"jupyter": {"source_hidden": True}}},
             md("```python\n# not a heading\n```\nTexto."),
             md("## Resumen")]
    assert slides.slide_types(cells) == ["slide", "skip", "skip", "slide", "-", "fragment", "fragment",
                                         "fragment", "subslide", "fragment", "skip", "skip", "fragment", "slide"]


def test_a_cell_with_several_headings_becomes_several_slides_in_the_deck():
    nb = {"cells": [md("# Título"), md("## Resumen\n\n- uno\n\n## Ejercicios\n\n1. algo\n\n### Pista\n\nx"),
                    code("z = 1")]}
    cells = slides.deck_cells(nb)
    assert [c["source"].splitlines()[0] for c in cells[:4]] == ["# Título", "## Resumen", "## Ejercicios", "### Pista"]
    assert [c["metadata"]["slideshow"]["slide_type"] for c in cells] == ["slide", "slide", "slide", "subslide", "fragment"]
    assert len({c["id"] for c in cells}) == len(cells)
    assert slides.expected_counts(nb) == (3, 1)
    assert nb["cells"][1]["source"].count("##") == 3, "the notebook itself is not changed"


def test_tag_writes_only_the_slideshow_key_and_is_idempotent(tmp_path):
    src = NOTEBOOKS[0]
    path = tmp_path / src.name
    shutil.copyfile(src, path)
    before = json.loads(src.read_text(encoding="utf-8"))
    assert slides.tag(path) is (slides.stored_types(before) != slides.slide_types(before["cells"]))
    raw = path.read_bytes()
    assert slides.tag(path) is False and path.read_bytes() == raw, "a second --tag changes nothing"
    after = json.loads(raw)
    assert slides.stored_types(after) == slides.slide_types(before["cells"])
    for cell in after["cells"]:
        cell["metadata"].pop("slideshow")
    for cell in (stripped := copy.deepcopy(before))["cells"]:
        cell["metadata"].pop("slideshow", None)
    assert after == stripped, "outputs, ids and other metadata are untouched"
    assert slides.main(["--check", str(path)]) == 0


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_tags_are_up_to_date(path):
    nb = json.loads(path.read_text(encoding="utf-8"))
    stored = slides.stored_types(nb)
    assert any(stored), (f"{path.name} has no slide tags: RISE would show it as one slide; run "
                         f"`python scripts/slides.py --tag {path.relative_to(ROOT)}`")
    assert stored == slides.slide_types(nb["cells"]), \
        f"{path.name}: slide tags differ from the headings; run `python scripts/slides.py --tag {path.relative_to(ROOT)}`"


# --- the static decks -----------------------------------------------------------------------------

class Deck(HTMLParser):
    """The sections (slides, subslides) and every resource reference of a built deck."""

    def __init__(self, text):
        super().__init__()
        self.depth, self.slides, self.subslides, self.refs, self.scripts = 0, 0, 0, [], []
        self._in_script = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self.depth += 1
            self.slides += self.depth == 1
            self.subslides += self.depth == 2
        for key in ("src", "data-src"):
            if a.get(key):
                self.refs.append(a[key])
        if tag == "link" and a.get("href"):
            self.refs.append(a["href"])
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self.depth -= tag == "section"
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


@pytest.fixture(scope="module")
def decks(tmp_path_factory):
    out = tmp_path_factory.mktemp("slides")

    def no_network(*args, **kwargs):
        raise AssertionError(f"the slides build tried to connect: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        t0 = time.perf_counter()
        written = slides.build(NOTEBOOKS, out)
        print(f"built {len(written)} decks in {time.perf_counter() - t0:.1f} s")
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_builds_offline_with_one_slide_per_heading(decks, path):
    html = (decks / f"{path.stem}.slides.html").read_text(encoding="utf-8")
    deck = Deck(html)
    remote = [r for r in deck.refs if REMOTE.match(r)]
    assert not remote, f"the deck loads from the network: {remote}"
    for ref in deck.refs:
        if not ref.startswith("data:"):
            assert (decks / ref.split("?")[0]).is_file(), f"{ref} is not next to the deck"
    inline = "\n".join(deck.scripts)
    assert not re.search(r"https?://", inline), "an inline script names a URL"
    assert not re.search(r"\b(require|requirejs)\s*\(|cdnjs|unpkg|jsdelivr", html), "CDN loaders remain"
    assert any("_static/reveal.js/dist/reveal.js" in r for r in deck.refs)
    assert any(r.startswith("_static/mathjax/MathJax.js") for r in deck.refs)
    # nbconvert wraps each slide in <section><section>; a subslide adds a sibling inner section
    n_slides, n_subslides = slides.expected_counts(json.loads(path.read_text(encoding="utf-8")))
    assert (deck.slides, deck.subslides) == (n_slides, n_slides + n_subslides)


def test_deck_assets_are_the_vendored_reveal_and_the_packaged_mathjax(decks):
    static = decks / "_static"
    assert (static / "reveal.js/dist/reveal.js").read_bytes() == (slides.VENDOR / "reveal.js").read_bytes()
    assert (static / "mathjax/config" / f"{slides.MATHJAX_CONFIG}.js").is_file()
    assert "Permission is hereby granted, free of charge" in (slides.VENDOR / "LICENSE").read_text(), "MIT"
    assert (static / "reveal.js/LICENSE").is_file()


def test_unknown_slide_type_is_a_clear_error():
    nb = {"cells": [{**md("# T"), "metadata": {"slideshow": {"slide_type": "slid"}}}]}
    with pytest.raises(ValueError, match="unknown slide types.*slid"):
        slides.deck_cells(nb)


# --- a real browser -------------------------------------------------------------------------------

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--mute-audio", "--window-size=1280,720", "--remote-debugging-port=0"]


class Browser:
    """Headless Chromium over the DevTools protocol (websocket-client comes with jupyter_server)."""

    def __init__(self, profile: Path):
        import websocket

        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file, deadline = profile / "DevToolsActivePort", time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError(f"{CHROMIUM} did not start (exit code {self.proc.returncode})")
            time.sleep(0.1)
        port = port_file.read_text().split()[0]
        pages = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        page = next(p for p in pages if p["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60, suppress_origin=True)
        self.next_id, self.events = 0, []

    def send(self, method, **params):
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]
            self.events.append(msg)

    def js(self, expression):
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait(self, expression, timeout=30.0):
        deadline = time.monotonic() + timeout
        while not self.js(expression):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for: {expression}")
            time.sleep(0.1)

    def key(self, key, keycode):
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=keycode,
                      nativeVirtualKeyCode=keycode)

    def screenshot(self, path: Path):
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"]))

    def close(self):
        if getattr(self, "ws", None):
            self.ws.close()
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)   # the launcher script and the browser it started
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser(tmp_path_factory, decks):
    if not CHROMIUM:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium): the in-browser check of the slides "
                    "is skipped; the offline build is still tested")
    pytest.importorskip("websocket", reason="websocket-client (a jupyter_server dependency) is missing")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=decks))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    b.base = f"http://127.0.0.1:{server.server_address[1]}/"
    b.send("Network.enable")
    b.send("Page.enable")
    b.send("Emulation.setDeviceMetricsOverride", width=1280, height=720, deviceScaleFactor=1, mobile=False)
    yield b
    b.close()
    server.shutdown()


def open_deck(browser, name):
    browser.events.clear()
    browser.send("Page.navigate", url=browser.base + f"{name}.slides.html")
    browser.wait("window.Reveal !== undefined && Reveal.isReady()")
    browser.wait("window.MathJax !== undefined && MathJax.isReady === true")
    browser.wait("new Promise(done => MathJax.Hub.Queue(() => done(true)))")   # the first typeset is over
    # every request the page made stayed on the local server
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    remote = [u for u in urls if not u.startswith((browser.base, "data:", "about:"))]
    assert urls and not remote, f"{name}: requests left the machine: {remote}"
    failed = {e["params"]["requestId"]: e["params"]["errorText"] for e in browser.events
              if e.get("method") == "Network.loadingFailed"}
    # MathJax 2 probes web-font loading with a font at about:blank (its "MathJax_Blank"), which fails by design
    failed = [(e["params"]["request"]["url"][:120], failed[e["params"]["requestId"]]) for e in browser.events
              if e.get("method") == "Network.requestWillBeSent" and e["params"]["requestId"] in failed
              and e["params"]["request"]["url"] != "about:blank"]
    assert not failed, f"{name}: failed loads: {failed}"
    missing = [e["params"]["response"]["url"] for e in browser.events if e.get("method") == "Network.responseReceived"
               and e["params"]["response"]["status"] >= 400 and not e["params"]["response"]["url"].endswith("/favicon.ico")]
    assert not missing, f"{name}: not found on the local server: {missing}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_deck_opens_offline_in_chromium(browser, path):
    open_deck(browser, path.stem)
    n_slides, _ = slides.expected_counts(json.loads(path.read_text(encoding="utf-8")))
    assert browser.js("Reveal.getTotalSlides()") >= n_slides
    assert browser.js("Reveal.getHorizontalSlides().length") == n_slides


def _first_slide_with(browser, selector):
    """(h, v) of the first slide holding ``selector``, or None."""
    return browser.js(f"""(() => {{
        const hs = Reveal.getHorizontalSlides();
        for (let h = 0; h < hs.length; h++) {{
            const vs = hs[h].querySelectorAll(':scope > section');
            for (let v = 0; v < vs.length; v++) if (vs[v].querySelector({json.dumps(selector)})) return [h, v];
        }}
        return null;
    }})()""")


def test_deck_advances_renders_math_and_shows_the_slider_fallback(browser, tmp_path):
    name = "04_llama3"
    if not (slides.ROOT / "notebooks" / f"{name}.ipynb").exists():
        pytest.skip(f"{name}.ipynb is not in this checkout")
    open_deck(browser, name)
    assert browser.js("[Reveal.getIndices().h, Reveal.getIndices().v]") == [0, 0]
    browser.key("ArrowRight", 39)
    browser.wait("Reveal.getIndices().h === 1", timeout=5)

    # math: the first slide whose source has LaTeX, typeset by MathJax (no raw $...$ left)
    where = browser.js(r"""(() => {
        const hs = Reveal.getHorizontalSlides();
        for (let h = 0; h < hs.length; h++) if (hs[h].querySelector('.MathJax, .MathJax_Display')) return h;
        return null; })()""")
    assert where is not None, "no slide has MathJax output"
    browser.js(f"Reveal.slide({where}, 0)")
    browser.wait("new Promise(done => MathJax.Hub.Queue(() => done(true)))")
    math = browser.js("""(() => { const s = Reveal.getCurrentSlide();
        return {n: s.querySelectorAll('.MathJax, .MathJax_Display').length,
                visible: [...s.querySelectorAll('.MathJax')].some(e => e.getBoundingClientRect().width > 0),
                raw: /\\$[^$\\s][^$]*\\$/.test(s.innerText)}; })()""")
    assert math["n"] > 0 and math["visible"] and not math["raw"], math
    browser.screenshot(tmp_path / f"{name}_math.png")

    # the slider cell (widgets.interact) shows its stored static figure once its fragment is revealed
    hv = browser.js(r"""(() => {
        const hs = Reveal.getHorizontalSlides();
        for (let h = 0; h < hs.length; h++) {
            const vs = hs[h].querySelectorAll(':scope > section');
            for (let v = 0; v < vs.length; v++)
                for (const cell of vs[v].querySelectorAll('.jp-CodeCell'))
                    if (/interact\(/.test(cell.textContent) && cell.querySelector('img')) return [h, v];
        }
        return null; })()""")
    assert hv is not None, "no slide holds a slider cell with its figure"
    browser.js(f"Reveal.slide({hv[0]}, {hv[1]}, 1000)")   # past the last fragment: all revealed
    browser.wait(r"""(() => { const cell = [...Reveal.getCurrentSlide().querySelectorAll('.jp-CodeCell')]
        .find(c => /interact\(/.test(c.textContent)); const img = cell && cell.querySelector('img');
        return img && img.complete && img.naturalWidth > 0 && img.getBoundingClientRect().width > 0
               && getComputedStyle(cell.closest('.fragment') || cell).opacity === '1'; })()""", timeout=10)
    browser.wait("new Promise(done => MathJax.Hub.Queue(() => done(true)))")
    browser.js(r"""[...Reveal.getCurrentSlide().querySelectorAll('.jp-CodeCell')].find(c => /interact\(/.test(c.textContent))
                   .querySelector('img').scrollIntoView({block: 'end'})""")
    browser.screenshot(tmp_path / f"{name}_slider.png")
    print(f"screenshots in {tmp_path}")


# --- the live slideshow: RISE inside JupyterLab ---------------------------------------------------

@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    """JupyterLab (with jupyterlab-rise) on a tagged copy of a notebook with math, on a free local port."""
    pytest.importorskip("jupyterlab_rise", reason="jupyterlab-rise is not installed (make install)")
    root = tmp_path_factory.mktemp("lab")
    source = next((p for p in NOTEBOOKS if p.stem == "04_llama3"), NOTEBOOKS[0])
    shutil.copyfile(source, root / source.name)
    slides.tag(root / source.name)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = "course-slides-test"
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(root / ".config"), "JUPYTERLAB_SETTINGS_DIR": str(root / ".settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(root / ".workspaces"), "JUPYTER_RUNTIME_DIR": str(root / ".runtime")}
    log = open(root / "lab.log", "w")
    lab = subprocess.Popen([sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
                            f"--ServerApp.port={port}", f"--IdentityProvider.token={token}",
                            f"--ServerApp.root_dir={root}", *(["--allow-root"] if os.geteuid() == 0 else [])],
                           stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base, deadline = f"http://127.0.0.1:{port}/", time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{base}api/status?token={token}", timeout=2)
            break
        except OSError:
            if lab.poll() is not None or time.monotonic() > deadline:
                os.killpg(lab.pid, signal.SIGTERM)
                raise RuntimeError(f"JupyterLab did not start; see {root / 'lab.log'}")
            time.sleep(0.2)
    yield base, token, root / source.name
    os.killpg(lab.pid, signal.SIGTERM)
    try:
        lab.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(lab.pid, signal.SIGKILL)
    log.close()


def test_live_rise_slideshow_follows_the_tags(browser, jupyterlab, tmp_path):
    base, token, notebook = jupyterlab
    types = slides.stored_types(json.loads(notebook.read_text(encoding="utf-8")))
    browser.events.clear()
    # what the RISE button (or Alt+R) in the notebook's toolbar opens
    browser.send("Page.navigate", url=f"{base}rise/{notebook.name}?token={token}")
    browser.wait("document.querySelectorAll('.reveal .slides > section').length > 0", timeout=120)
    browser.wait("document.querySelectorAll('mjx-container').length > 0", timeout=60)   # JupyterLab's MathJax 3
    present = "[...document.querySelectorAll('.reveal .slides > section')].findIndex(s => s.classList.contains('present'))"
    assert browser.js("document.querySelectorAll('.reveal .slides > section').length") == types.count("slide")
    browser.wait(f"{present} === 0", timeout=30)   # Reveal is initialised on the first slide
    browser.js("document.querySelector('.reveal').focus()")
    browser.key("ArrowRight", 39)
    browser.wait(f"{present} > 0", timeout=10)
    browser.screenshot(tmp_path / "rise_live.png")
    # reveal.js and MathJax come from the local server; only RISE's default theme ("simple") asks for two
    # Google web fonts, which fail offline and fall back to local fonts
    urls = [e["params"]["request"]["url"] for e in browser.events if e.get("method") == "Network.requestWillBeSent"]
    hosts = {re.match(r"^[a-z]+://([^/:]+)", u).group(1) for u in urls if u.startswith(("http:", "https:"))}
    assert hosts <= {"127.0.0.1", "fonts.googleapis.com"}, hosts
