"""House rules every notebook follows (CONTRIBUTING.md); nbval separately executes each one."""
import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
SECTIONS = ("Objetivos", "Requisitos", "Resumen", "Ejercicios", "Referencias")
VOLATILE = [
    (re.compile(r"(/work|/root|/home|/tmp|/Users)/[\w.-]+"), "an absolute path"),
    (re.compile(r" at 0x[0-9a-f]{6,}"), "a memory address"),
    (re.compile(r"\d+\.\d+\s?(?:it/s|s/it)"), "a progress-bar timing"),
]


def _load(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _text(output):
    parts = []
    if "text" in output:
        parts.append("".join(output["text"]) if isinstance(output["text"], list) else output["text"])
    plain = output.get("data", {}).get("text/plain")
    if plain:
        parts.append("".join(plain) if isinstance(plain, list) else plain)
    return "\n".join(parts)


def _asserts(code: str) -> int:
    """Number of real assertions in a code cell: ``assert`` statements and ``*assert*(...)`` calls
    (``torch.testing.assert_close``), not the word inside a comment or a string. IPython magics and
    shell lines are dropped before parsing."""
    lines = [line for line in code.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return 0
    n = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert):
            n += 1
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            n += "assert" in name
    return n


def test_the_assert_counter_ignores_comments_and_strings():
    assert _asserts("x = 1  # assert x == 1\nprint('assert')") == 0
    assert _asserts("%matplotlib inline\nassert 1 + 1 == 2") == 1
    assert _asserts("torch.testing.assert_close(a, b)") == 1


def test_there_are_notebooks():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "00_setup_and_tour.ipynb"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_skeleton(path):
    nb = _load(path)
    cells = nb["cells"]
    first = "".join(cells[0]["source"]).lstrip()
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# "), "open with a title cell"
    assert re.search(r"\b\d+\s*(s|seg|segundos|min|minutos?)\b", first), "the title cell gives the CPU run time"
    markdown = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    for section in SECTIONS:
        assert re.search(rf"^#+ .*{section}", markdown, flags=re.M | re.I), f"missing section {section}"
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    setup = next((c for c in code if "course_utils.setup(" in c), None)
    assert setup is not None and "NBVAL_IGNORE_OUTPUT" in setup, "one setup cell, marked NBVAL_IGNORE_OUTPUT"
    assert code.index(setup) <= 1, "the setup cell comes first"
    assert not any(".cuda()" in c for c in code), "use the device from setup(), not .cuda()"
    assert sum(_asserts(c) for c in code) >= 3, "the notebook asserts what it teaches (assert statements in code)"
    assert "data:image" not in markdown, "no base64 images in markdown"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_outputs_are_clean(path):
    assert path.stat().st_size < 1_500_000, "keep notebooks small (figures at low dpi)"
    nb = _load(path)
    code_cells = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code_cells), "store the outputs of a full run (make outputs)"
    counts = [c["execution_count"] for c in code_cells]
    assert counts == sorted(counts), "outputs come from one top-to-bottom run"
    for i, cell in enumerate(code_cells):
        for out in cell.get("outputs", []):
            assert out["output_type"] != "error", f"code cell {i} stored an error"
            text = _text(out)
            for pattern, what in VOLATILE:
                assert not pattern.search(text), f"code cell {i} stores {what}: {pattern.search(text).group(0)!r}"
        assert "execution" not in cell.get("metadata", {}), "no execution timings in the metadata"
        if "NBVAL_CHECK_OUTPUT" in "".join(cell["source"]):
            # nbval compares a figure's text/plain too, and under load its display message can be missed:
            # a checked cell prints numbers; its figure goes in a cell of its own
            assert all(out["output_type"] == "stream" for out in cell.get("outputs", [])), \
                f"code cell {i} is NBVAL_CHECK_OUTPUT but stores a figure or a value: keep checked cells to prints"
