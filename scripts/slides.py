"""Lecture mode: every notebook as slides, in the lecture's order, offline (``make slides``).

The slide structure comes from the notebook's own headings, so no cell is tagged by hand:

- a markdown cell that opens with a ``#`` or ``##`` heading starts a slide, one that opens with
  ``###`` a subslide (a vertical slide under it: down arrow, or the right arrow at its end);
- markdown right after a heading stays on its slide ("-"); from the slide's first code cell on, each
  code cell (with its outputs) and each later markdown cell appears on the next key press ("fragment"),
  so the lecturer explains, then shows the code and what it prints;
- setup noise is left out ("skip"): the ``course_utils.setup()`` cell, cells that are mostly imports,
  empty cells, and exercise solutions (hidden source, a ``solution`` tag, nbgrader solution markers).

``--tag`` writes exactly that structure into each cell's ``metadata.slideshow.slide_type`` (the key the
live slideshow, RISE in JupyterLab, reads); nothing else in the file changes, so it is idempotent.
``--build`` writes static reveal.js decks, ``build/slides/NN_name.slides.html``, that load nothing from
the network: reveal.js from ``vendor/revealjs/`` and MathJax 2.7 from the ``jupyter-server-mathjax``
package, both copied to ``build/slides/_static/``. It follows the stored tags when the notebook has
them, else derives them in memory (the same decks for up-to-date tags). The decks show the stored
outputs (the static fallback of the sliders, drawn once). A markdown cell holding several headings
("Resumen", "Ejercicios", "Referencias") becomes several slides in the deck; in RISE it stays one
slide (which scrolls once RISE's "scroll" setting is on).

    python scripts/slides.py --build                       # every notebook -> build/slides/
    python scripts/slides.py --tag notebooks/01_clip.ipynb # write the tags (RISE follows them)
    python scripts/slides.py --check                       # fail if stored tags differ from the headings
"""
from __future__ import annotations

import argparse
import ast
import copy
import json
import re
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUT_DIR = ROOT / "build" / "slides"
VENDOR = ROOT / "vendor" / "revealjs"
# vendored file -> its place in reveal.js's own layout under _static/reveal.js/
REVEAL_FILES = {"reveal.js": "dist/reveal.js", "reveal.css": "dist/reveal.css",
                "theme/white.css": "dist/theme/white.css", "plugin/notes/notes.js": "plugin/notes/notes.js",
                "LICENSE": "LICENSE"}
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full"   # the combined config that jupyter-server-mathjax ships
SLIDE_TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}
# 1280 x 720: the projector size the course's figures are made for
WIDTH, HEIGHT = 1280, 720

_HEADING = re.compile(r"^(#{1,6})\s+\S")
_FENCE = re.compile(r"^\s*(```|~~~)")


def _source(cell) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def heading_lines(text: str) -> list[tuple[int, int]]:
    """(line number, level) of each markdown heading in ``text``, skipping fenced code blocks."""
    found, fenced = [], False
    for k, line in enumerate(text.splitlines()):
        if _FENCE.match(line):
            fenced = not fenced
        elif not fenced and (m := _HEADING.match(line)):
            found.append((k, len(m.group(1))))
    return found


def heading_level(cell) -> int | None:
    """Level of the heading a markdown cell opens with (its first non-blank line), else None."""
    if cell.get("cell_type") != "markdown":
        return None
    lines = [line for line in _source(cell).splitlines() if line.strip()]
    m = _HEADING.match(lines[0]) if lines else None
    return len(m.group(1)) if m else None


def is_noise(cell) -> bool:
    """Setup cells, import cells, empty cells and exercise solutions: not shown in class."""
    meta = cell.get("metadata", {})
    src = _source(cell)
    if meta.get("jupyter", {}).get("source_hidden") or "solution" in meta.get("tags", []) \
            or "BEGIN SOLUTION" in src:
        return True
    if cell.get("cell_type") != "code":
        return False
    # IPython magics and shell escapes are not Python: drop them before parsing
    code = "\n".join(line for line in src.splitlines() if not line.lstrip().startswith(("%", "!")))
    try:
        body = ast.parse(code).body
    except SyntaxError:
        return False
    if not body:
        return True
    shows_figure = any(o.get("output_type") in {"display_data", "execute_result"} and
                       set(o.get("data", {})) - {"text/plain"} for o in cell.get("outputs", []))
    calls_setup = any(isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "setup" and isinstance(node.func.value, ast.Name)
                      and node.func.value.id == "course_utils" for node in ast.walk(ast.Module(body, [])))
    imports = sum(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)
    return calls_setup or (2 * imports > len(body) and not shows_figure)


def slide_types(cells) -> list[str]:
    """The slide type of each cell, from the headings (the rules in the module docstring)."""
    types, revealing = [], False
    for k, cell in enumerate(cells):
        level = heading_level(cell)
        if k == 0 or (level is not None and level <= 2):
            kind, revealing = "slide", False
        elif level == 3:
            kind, revealing = "subslide", False
        elif cell.get("cell_type") == "raw" or is_noise(cell):
            kind = "skip"
        elif cell.get("cell_type") == "code":
            kind, revealing = "fragment", True
        else:
            kind = "fragment" if revealing else "-"
        types.append(kind)
    return types


def split_headings(cell) -> list[dict]:
    """A markdown cell cut before each further ``#``-``###`` heading it holds (copies); else [cell]."""
    text = _source(cell)
    lines = text.splitlines(keepends=True)
    # a cut at the cell's first heading (its title) makes no new part
    cuts = [k for k, level in heading_lines(text) if level <= 3 and any(line.strip() for line in lines[:k])]
    if cell.get("cell_type") != "markdown" or not cuts:
        return [cell]
    parts = []
    for part, (a, b) in enumerate(zip([0] + cuts, cuts + [len(lines)])):
        piece = copy.deepcopy(cell)
        piece["source"] = "".join(lines[a:b]).strip("\n")
        if part and "id" in piece:
            piece["id"] = f"{cell['id']}-{part}"
        parts.append(piece)
    return parts


def expected_counts(nb) -> tuple[int, int]:
    """(slides, subslides) a deck of ``nb`` has: its ``#``/``##`` and its ``###`` headings."""
    levels = [level for cell in nb["cells"] if cell.get("cell_type") == "markdown"
              for _, level in heading_lines(_source(cell))]
    slides = sum(level <= 2 for level in levels)
    if heading_level(nb["cells"][0]) not in (1, 2):
        slides += 1   # a first cell without a heading still opens the first slide
    return slides, sum(level == 3 for level in levels)


def stored_types(nb) -> list[str | None]:
    return [cell.get("metadata", {}).get("slideshow", {}).get("slide_type") for cell in nb["cells"]]


def tag(path: Path) -> bool:
    """Write each cell's ``metadata.slideshow.slide_type``; True when the file changed."""
    raw = path.read_text(encoding="utf-8")
    nb = json.loads(raw)
    for cell, kind in zip(nb["cells"], slide_types(nb["cells"])):
        cell.setdefault("metadata", {}).setdefault("slideshow", {})["slide_type"] = kind
    # the layout nbformat and JupyterLab write, so that only the slideshow keys differ
    new = json.dumps(nb, sort_keys=True, indent=1, ensure_ascii=False) + "\n"
    if new != raw:
        path.write_text(new, encoding="utf-8")
    return new != raw


def deck_cells(nb) -> list[dict]:
    """The cells of the deck, each with its slide type: the stored tag if the notebook has tags (the
    parts of a split cell after the first follow the headings), else derived in memory."""
    stored = stored_types(nb)
    unknown = set(filter(None, stored)) - SLIDE_TYPES
    if unknown:
        raise ValueError(f"unknown slide types {sorted(unknown)}; expected some of {sorted(SLIDE_TYPES)}")
    parts = [(k, p, piece) for k, cell in enumerate(nb["cells"]) for p, piece in enumerate(split_headings(cell))]
    derived = slide_types([piece for _, _, piece in parts])
    out = []
    for (k, p, piece), kind in zip(parts, derived):
        piece = copy.deepcopy(piece)
        piece.setdefault("metadata", {})["slideshow"] = {"slide_type": stored[k] if stored[k] and not p else kind}
        out.append(piece)
    return out


def _mathjax_dir() -> Path:
    try:
        import jupyter_server_mathjax
    except ImportError as err:
        raise RuntimeError("the slides need MathJax from the package jupyter-server-mathjax, a course "
                           "dependency: run `make install` (or pip install jupyter-server-mathjax)") from err
    return Path(jupyter_server_mathjax.__file__).parent / "static"


def install_assets(static: Path) -> None:
    """Copy reveal.js (vendored) and MathJax (from its pip package) next to the decks."""
    for src, dst in REVEAL_FILES.items():
        target = static / "reveal.js" / dst
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(VENDOR / src, target)
    mathjax = static / "mathjax"
    if not (mathjax / "MathJax.js").exists():
        shutil.copytree(_mathjax_dir(), mathjax, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("localization", "SVG", "*.eot", "*.otf"))


# nbconvert's reveal template, minus every network load: no jQuery, require.js or mermaid from a CDN,
# no widget manager from unpkg (the stored outputs are the widgets' static fallback), local MathJax 2.
TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}
<script type="text/x-mathjax-config">
MathJax.Hub.Config({
  tex2jax: {inlineMath: [["$", "$"], ["\\(", "\\)"]], displayMath: [["$$", "$$"], ["\\[", "\\]"]],
            processEscapes: true, processEnvironments: true},
  "HTML-CSS": {availableFonts: [], imageFont: null, preferredFont: null, webFont: "STIX-Web",
               linebreaks: {automatic: true}},
  displayAlign: "center", messageStyle: "none", showMathMenu: false
});
</script>
<script src="{{ resources.mathjax_url }}"></script>
<style type="text/css">
/* a slide taller than the screen scrolls instead of being cut */
.reveal .slides > section, .reveal .slides > section > section { max-height: {{ resources.reveal.height }}px; overflow-y: auto; }
.reveal .slides img { max-height: 560px; }
.reveal .slides h1, .reveal .slides h2, .reveal .slides h3, .reveal .slides h4 { text-transform: none; }
</style>
{%- endblock html_head_js_mathjax -%}
{% block footer_js %}
<script src="{{ resources.reveal.url_prefix }}/dist/reveal.js"></script>
<script src="{{ resources.reveal.url_prefix }}/plugin/notes/notes.js"></script>
<script>
Reveal.initialize({
  controls: true, progress: true, history: true, center: false,
  transition: "{{ resources.reveal.transition }}", slideNumber: "{{ resources.reveal.number }}",
  width: {{ resources.reveal.width }}, height: {{ resources.reveal.height }},
  plugins: [RevealNotes]
});
Reveal.on("slidechanged", function (event) {
  if (window.MathJax && MathJax.Hub) { MathJax.Hub.Queue(["Rerender", MathJax.Hub, event.currentSlide]); }
});
</script>
{% endblock footer_js %}
"""


def exporter():
    from jinja2 import DictLoader
    from nbconvert import SlidesExporter

    return SlidesExporter(
        extra_loaders=[DictLoader({"course_slides.html.j2": TEMPLATE})], template_file="course_slides.html.j2",
        reveal_url_prefix="_static/reveal.js", reveal_theme="white", reveal_transition="none",
        reveal_number="c/t", reveal_width=str(WIDTH), reveal_height=str(HEIGHT),
        mathjax_url=f"_static/mathjax/MathJax.js?config={MATHJAX_CONFIG}",
        exclude_input_prompt=True, exclude_output_prompt=True)


def build(paths=NOTEBOOKS, out_dir: Path = OUT_DIR) -> list[Path]:
    """Write ``out_dir/NN_name.slides.html`` for each notebook, with reveal.js and MathJax beside them."""
    import nbformat

    out_dir = Path(out_dir)
    install_assets(out_dir / "_static")
    export, written = exporter(), []
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"no notebook at {path}; expected notebooks/NN_name.ipynb")
        nb = json.loads(path.read_text(encoding="utf-8"))
        nb["cells"] = deck_cells(nb)
        node = nbformat.reads(json.dumps(nb), as_version=4)   # joins list-of-lines sources
        body, _ = export.from_notebook_node(node, resources={"metadata": {"name": path.stem}})
        target = out_dir / f"{path.stem}.slides.html"
        target.write_text(body, encoding="utf-8")
        written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--tag", action="store_true", help="write metadata.slideshow.slide_type into the notebooks")
    mode.add_argument("--build", action="store_true", help="write static offline decks into --out")
    mode.add_argument("--check", action="store_true", help="exit 1 if a notebook's tags differ from its headings")
    parser.add_argument("notebooks", nargs="*", type=Path, help="default: every notebooks/NN_*.ipynb")
    parser.add_argument("--out", type=Path, default=OUT_DIR, help=f"deck folder (default {OUT_DIR.relative_to(ROOT)})")
    args = parser.parse_args(argv)
    paths = args.notebooks or NOTEBOOKS
    if args.build:
        for target in build(paths, args.out):
            print(target)
        return 0
    if args.tag:
        for path in paths:
            print(("tagged " if tag(path) else "unchanged ") + str(path))
        return 0
    stale = [str(p) for p in paths
             if stored_types(nb := json.loads(p.read_text(encoding="utf-8"))) != slide_types(nb["cells"])]
    if stale:
        print("slide tags differ from the headings (run `python scripts/slides.py --tag` on them):\n  "
              + "\n  ".join(stale), file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
