"""What the learner reads, in every notebook: Spanish words, one register (voseo), numbers that agree.

Learner-facing text is (a) markdown prose without code spans, fenced code, LaTeX, URLs, link targets,
HTML comments, and foreign terms or titles marked as such (in *italics* or "quotes", as Spanish typography
marks an untranslated word: *score matching*, *The Llama 3 Herd of Models*), and (b) the string literals a code cell shows: ``print`` arguments, axis labels, titles,
legends (``label=``), widget descriptions, exercise hints and the ``assert`` messages of exercise checks.
Identifiers, comments and library output are not prose. Hidden exercise solutions are code and skipped.

1. ``test_no_english_words``: no word of ``ENGLISH`` outside ``ALLOWED`` (technical terms the course uses as
   Spanish speakers do: "token", "batch", "prompt", ...; each one deliberate, listed below).
2. ``test_one_register``: voseo, as the lecture speaks; no *usted* (``usted``, "puede ver", "ejecute",
   "observe", ...) and no *tú* ("puedes", "tienes").
3. ``test_quoted_numbers_match_outputs``: a number in markdown followed by ``<!-- check: LABEL -->``
   (invisible once rendered) must equal the first number printed after ``LABEL`` in the stored outputs
   of the notebook's code cells, rounded to the digits the prose shows.
4. ``test_number_format``: one format a Spanish reader cannot misread, in prose and prints: decimal point
   (as Python prints and the lecture's tables write), thousands grouped with a narrow space (U+202F, e.g.
   ``16 384``, four digits whole: ``8192``; ``course_utils.plotting.fmt_int``), never "16,384" nor "16.384".
"""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Chapters outside issue 13's seven, not yet brought to these rules (expected failures): remove a notebook
# from here when it passes.
PENDING = set()
NOTEBOOKS = [pytest.param(p, id=p.name, marks=[pytest.mark.xfail(reason="not yet brought to the prose rules (PENDING)",
                                                                 strict=False)] if p.name in PENDING else [])
             for p in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))]

# English words that are not Spanish (so "red", "once", "son", "has", "come", "pie", "fin" are absent).
ENGLISH = set("""
the and of with for from this that these those which what when where why how who whose into onto over under
between after before while until because although though however therefore thus also only just still even
very more most less least than then there here their they them its it's our your you we she his her
is are was were be been being have had having do does did done doing can could should would will shall may
might must not yes all any some each every both either neither other another same such own
one two three four five six seven eight nine ten first second third last next new old good bad better best
worse worst high low small large big little long short right left up down out off on in at by as or if so
step steps loss losses train training trained test testing tested held-out heldout holdout matches match matching
paper papers caption captions subtitle subtitles figure figures table tables plot plots chart curve curves
image images picture pictures text texts word words sentence sentences label labels labeled answer answers
question questions score scores accuracy value values sample samples sampled sampling noise noisy denoise
denoising model models weights weight layer layers head heads hidden input inputs output outputs size sizes
number numbers count counts mean means average sum time times speed memory run runs running ran
shape shapes colors colour colours circle circles square squares triangle triangles star position
above below near far inside outside between left right top bottom middle center
see look show shows shown showing learn learns learned learning works work working fit fits fitted
random seed seeds true false none null done fail failed fails pass passed passes errors warning
fast slow full mode default settings setting load loaded loading save saved saving download downloaded
check checks checked result results fake generated generate generates generation generator
held zero-shot few-shot shot shots print printed prints note notes see example examples exercise
exercises solution solutions hint hints cell cells notebook notebooks lecture lectures slide slides
""".split())

# Technical terms the course deliberately uses as a Spanish-speaking lecturer does (each a decision, not a
# leak): they appear untranslated in the lecture itself, in Spanish-language ML writing and in the libraries.
ALLOWED = {
    "batch",        # "el batch", "tamaño de batch": the lecture's word; "lote" is rare in class
    "shapes",       # "Shapes World", the course's dataset (a proper name)
    "zero-shot", "few-shot",  # method names, as in the CLIP and LLaVA papers and the lecture
    "all-reduce", "all-gather", "reduce-scatter",  # collective operations (torch.distributed, NCCL names)
    "scikit-learn", "scikit-image",  # library names
    "notebook", "notebooks",  # Jupyter's own name for the document
    "paper",        # NOT allowed: use "artículo" (kept out below)
}
ALLOWED.discard("paper")

# usted / tú forms; voseo ("podés", "ejecutá", "observá") is the course's register.
REGISTER = [
    (re.compile(r"\bustedes?\b", re.I), "usted"),
    (re.compile(r"\bpueden? (ver|observar|usar|probar|cambiar|ejecutar)\b", re.I), "usted: 'puede ver' (voseo: 'podés ver')"),
    (re.compile(r"(?:^|[.!?¡¿:]\s+|^\s*(?:[-*]|\d+\.)\s+)(Ejecute|Pruebe|Observe|Note|Recuerde|Considere|Vea|"
                r"Haga|Escriba|Use|Utilice|Cambie|Compare|Calcule|Modifique|Defina|Implemente|Complete|"
                r"Verifique|Tenga|Intente|Fíjese|Mire|Abra|Instale|Corra|Lea|Elija|Agregue|Reemplace)\b", re.M),
     "usted imperative (voseo: 'ejecutá', 'probá', 'observá')"),
    (re.compile(r"\b(puedes|tienes|quieres|sabes|debes|eres|ejecuta tú)\b", re.I), "tú (voseo: 'podés', 'tenés')"),
]

LABEL_CALLS = {"print", "set_xlabel", "set_ylabel", "set_title", "suptitle", "xlabel", "ylabel", "title",
               "set_text", "text", "annotate", "Text", "Label", "HTML", "Markdown"}
LABEL_KWARGS = {"label", "title", "xlabel", "ylabel", "suptitle", "description", "hint", "ok", "caption",
                "captions", "names"}


def _src(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _is_solution(cell) -> bool:
    return "exercise-solution" in cell.get("metadata", {}).get("tags", [])


_STRIP = [
    re.compile(r"<!--.*?-->", re.S),            # HTML comments (also the check markers)
    re.compile(r"^(```|~~~).*?^(```|~~~)\s*$", re.S | re.M),  # fenced code
    re.compile(r"\$\$.*?\$\$", re.S),            # display math
    re.compile(r"\$[^$]+?\$"),                   # inline math (may wrap a line)
    _CODE_SPAN := re.compile(r"`[^`\n]+`"),      # code spans (also in hints and prints)
    re.compile(r"\]\([^)]*\)"),                  # link targets (keep the link text)
    re.compile(r"https?://\S+"),                 # bare URLs
    re.compile(r"<[^>\n]+>"),                    # HTML tags
    # a foreign term or a title marked as such, as Spanish typography does: in italics or quotes
    re.compile(r"(?<![*\w])\*(?!\*)[^*\n]+?\*(?![*\w])"),
    re.compile(r"(?<!\w)_[^_\n]+?_(?!\w)"),
    _QUOTED := re.compile(r'"[^"\n]+(?:\n[^"\n]+)?"|“[^”\n]+(?:\n[^”\n]+)?”|«[^»\n]+»|\'[^\'\n]+\''),
]


def prose_of_markdown(text: str) -> str:
    for pattern in _STRIP:
        text = pattern.sub(" ", text)
    return text


def _strings(node) -> list[str]:
    """String literals of an expression, with f-strings' literal parts (formatted values dropped)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        # one string, each formatted value a "{}" (a code span or a quotation may straddle one)
        return ["".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)]
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    if isinstance(node, ast.Dict):
        return [s for e in node.keys if e is not None for s in _strings(e)]
    if isinstance(node, ast.BinOp):
        return _strings(node.left) + _strings(node.right)
    if isinstance(node, ast.IfExp):
        return _strings(node.body) + _strings(node.orelse)
    return []


def shown_strings(code: str, check_cell: bool = False) -> list[str]:
    """The string literals a code cell shows the learner (prints, labels, titles, hints, check messages)."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name in LABEL_CALLS:
                for arg in node.args:
                    out += _strings(arg)
            for kw in node.keywords:
                if kw.arg in LABEL_KWARGS:
                    out += _strings(kw.value)
        elif isinstance(node, ast.Assert) and node.msg is not None and check_cell:
            out += _strings(node.msg)
    return out


def learner_text(nb) -> list[tuple[str, str]]:
    """(where, text) for every piece of learner-facing text in a notebook."""
    found = []
    for i, cell in enumerate(nb["cells"]):
        if _is_solution(cell):
            continue
        if cell["cell_type"] == "markdown":
            found.append((f"markdown cell {i}", prose_of_markdown(_src(cell))))
        elif cell["cell_type"] == "code":
            tags = cell.get("metadata", {}).get("tags", [])
            for s in shown_strings(_src(cell), check_cell="exercise-check" in tags):
                # formatted values are not prose; a quotation ("Context type 1") is marked as such
                s = _QUOTED.sub(" ", _CODE_SPAN.sub(" ", re.sub(r"\{[^{}]*\}", " ", s)))
                found.append((f"code cell {i}", s))
    return found


_WORD = re.compile(r"[A-Za-zÁÉÍÓÚÜÑáéíóúüñ]+(?:-[A-Za-zÁÉÍÓÚÜÑáéíóúüñ]+)*")


def english_words(nb) -> list[tuple[str, str]]:
    hits = []
    for where, text in learner_text(nb):
        for m in _WORD.finditer(text):
            w = m.group(0)
            if w.isupper() and len(w) > 1:  # acronyms: CLIP, GQA, MFU
                continue
            lw = w.lower()
            if lw in ALLOWED:
                continue
            if lw in ENGLISH or any(part in ENGLISH and part not in ALLOWED for part in lw.split("-")):
                hits.append((where, w))
    return hits


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_no_english_words(path):
    hits = english_words(_load(path))
    assert not hits, f"{path.name}: {len(hits)} English words in learner-facing text (translate them, or quote " \
                     f"them as code): " + ", ".join(f"{w!r} ({where})" for where, w in hits[:40])


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_one_register(path):
    bad = []
    for where, text in learner_text(_load(path)):
        for pattern, what in REGISTER:
            for m in pattern.finditer(text):
                bad.append(f"{m.group(0).strip()!r} in {where} ({what})")
    assert not bad, f"{path.name}: not voseo: " + "; ".join(bad[:20])


_NUM = r"[-−]?\d+(?:[\u202f ]\d{3})*(?:\.\d+)?"
_CLAIM = re.compile(rf"({_NUM})\s*(%|\*\*|\s)*<!--\s*check:\s*(.+?)\s*-->")


def _to_float(s: str) -> float:
    return float(s.replace("\u202f", "").replace(" ", "").replace("−", "-"))


def _outputs_text(cell) -> str:
    parts = []
    for out in cell.get("outputs", []):
        if "text" in out:
            parts.append(out["text"] if isinstance(out["text"], str) else "".join(out["text"]))
    return "".join(parts)


def quoted_claims(nb) -> list[tuple[int, str, str]]:
    """(markdown cell index, number as written, label) for every ``<!-- check: LABEL -->`` marker."""
    return [(i, m.group(1), m.group(3)) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "markdown"
            for m in _CLAIM.finditer(_src(c))]


def printed_value(nb, label: str) -> str | None:
    """The first number printed after ``label`` on the same line, in any code cell's stored output."""
    # the first number on the label's line that stands alone (not the 1 of "R@1" or of "x1")
    pat = re.compile(re.escape(label) + rf"[^\n]*?(?<![\w@.\d])({_NUM})")
    for cell in nb["cells"]:
        if cell["cell_type"] == "code" and (m := pat.search(_outputs_text(cell))):
            return m.group(1)
    return None


def test_the_claim_marker_reads_what_it_should():
    nb = {"cells": [{"cell_type": "markdown", "source": "llega a **0.91**<!-- check: exactitud -->; 8\u202f192 "
                                                          "<!-- check: contexto -->"},
                    {"cell_type": "code", "source": "", "outputs": [
                        {"output_type": "stream", "text": "exactitud en test: 0.9132\ncontexto = 8\u202f192\n"}]}]}
    assert [(n, l) for _, n, l in quoted_claims(nb)] == [("0.91", "exactitud"), ("8\u202f192", "contexto")]
    assert printed_value(nb, "exactitud") == "0.9132" and printed_value(nb, "contexto") == "8\u202f192"


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_quoted_numbers_match_outputs(path):
    nb = _load(path)
    bad = []
    for i, written, label in quoted_claims(nb):
        printed = printed_value(nb, label)
        if printed is None:
            bad.append(f"markdown cell {i}: no stored output prints {label!r}")
            continue
        decimals = len(written.split(".")[1]) if "." in written else 0
        if round(_to_float(printed), decimals) != _to_float(written):
            bad.append(f"markdown cell {i}: says {written} for {label!r}, the output prints {printed}")
    assert not bad, f"{path.name}: " + "; ".join(bad)


_THOUSANDS_COMMA = re.compile(r"(?<![\d.,])\d{1,3}(?:,\d{3})+(?![\d,])")
_THOUSANDS_POINT = re.compile(r"(?<![\d.,])[1-9]\d{0,2}(?:\.\d{3})+(?![\d.])")


@pytest.mark.parametrize("path", NOTEBOOKS)
def test_number_format(path):
    nb = _load(path)
    bad = []
    for where, text in learner_text(nb):
        for m in _THOUSANDS_COMMA.finditer(text):
            bad.append(f"{m.group(0)!r} in {where}")
        if where.startswith("markdown"):
            for m in _THOUSANDS_POINT.finditer(text):
                bad.append(f"{m.group(0)!r} in {where}")
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            for m in _THOUSANDS_COMMA.finditer(_outputs_text(cell)):
                bad.append(f"{m.group(0)!r} printed by code cell {i}")
    assert not bad, f"{path.name}: write thousands with a narrow space (16\u202f384, plotting.fmt_int), decimals with " \
                    "a point: " + "; ".join(bad[:20])
