"""Graded labs (``labs/``): the checks that teach, and a thin wrapper around nbgrader.

Two halves:

- **checks** used inside the labs' autograded test cells (``check``, ``check_defined``, ``call``,
  ``check_shape``, ``check_close``): a failing check raises an ``AssertionError`` whose message, in
  Spanish, names the property that failed (the shape expected, the value at a named input) -- never
  a bare ``AssertionError``; ``is_grading()`` tells a lab that nbgrader is running it, so heavy cells
  are skipped;
- **grading**: ``LabGrader`` drives nbgrader (``generate_assignment``, ``autograde``,
  ``generate_feedback``) on a course root that lives in a build or temporary folder, offline, with
  a sqlite gradebook; ``report`` and ``table`` turn its grades into a per-question report and a
  CSV / Markdown table. ``scripts/labs.py`` is the command line (``make labs``, ``make grade-lab``,
  ``make grade-labs``). nbgrader is imported only by the grading half.

A lab is one folder ``labs/source/<lab>/<lab>.ipynb`` (the instructor version, with
``### BEGIN SOLUTION`` regions and test cells with points); adding a lab is adding that folder.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

REPO_ROOT = Path(__file__).resolve().parents[2]
LABS_DIR = REPO_ROOT / "labs"
SOURCE_DIR = LABS_DIR / "source"
BUILD_DIR = REPO_ROOT / "build" / "labs"
# nbgrader sets this variable while it executes a notebook ("autograde" or "validate")
GRADING_ENV = "NBGRADER_EXECUTION"
# the cell timeout the course grades with (nbgrader's own default is 30 s); labs/nbgrader_config.py sets it too
DEFAULT_TIMEOUT = 60


# ============================================================================================
# Checks used inside the labs (messages in Spanish: they are the student's feedback)
# ============================================================================================
def is_grading() -> bool:
    """True while nbgrader executes the notebook (autograde or validate): heavy cells skip themselves."""
    return bool(os.environ.get(GRADING_ENV))


def check(condition, message: str) -> None:
    """``assert condition`` with a message that teaches (Spanish, names the property)."""
    if not bool(condition):
        raise AssertionError(message)


def check_defined(namespace: dict, *names: str) -> None:
    """Fail with a clear message when a function the tests need is not defined in the notebook."""
    missing = [n for n in names if n not in namespace]
    check(not missing, f"No encontré {', '.join(f'`{n}`' for n in missing)} en el notebook: ¿borraste la celda "
                       "donde se define o no la ejecutaste? Ejecutá el notebook de arriba hacia abajo.")


def call(fn: Callable, *args, **kwargs):
    """``fn(*args, **kwargs)``, turning an exception raised by the student's code into an
    ``AssertionError`` that says which function failed and how (the traceback stays chained)."""
    name = getattr(fn, "__name__", repr(fn))
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"`{name}` todavía no está implementada (lanza NotImplementedError): "
                             "completá la celda de la solución y volvé a ejecutarla.") from None
    except Exception as e:  # noqa: BLE001 -- any error of the student's code becomes feedback
        raise AssertionError(f"`{name}` lanzó {type(e).__name__}: {e}") from e


def _shape(x) -> tuple:
    return tuple(x.shape) if hasattr(x, "shape") else ()


def check_shape(x, expected: tuple, what: str) -> None:
    """The shape of ``x`` is ``expected``; ``what`` names the quantity (e.g. "la salida de clip_loss")."""
    check(hasattr(x, "shape"), f"{what}: esperaba un tensor de forma {tuple(expected)}, obtuve {type(x).__name__}.")
    check(_shape(x) == tuple(expected), f"{what}: forma esperada {tuple(expected)}, obtuve {_shape(x)}.")


def _fmt(x) -> str:
    import torch

    t = torch.as_tensor(x).detach().cpu().double()
    if t.numel() == 1:
        return f"{t.item():.6g}"
    flat = ", ".join(f"{v:.4g}" for v in t.flatten()[:6].tolist())
    return f"tensor de forma {tuple(t.shape)} [{flat}{', ...' if t.numel() > 6 else ''}]"


def check_close(actual, expected, what: str, *, atol: float = 1e-5, rtol: float = 1e-4, hint: str = "") -> None:
    """``actual`` equals ``expected`` within tolerance (same shape); the message shows both values
    and, when given, a ``hint`` on the usual mistake."""
    import torch

    if not torch.is_tensor(actual) and not isinstance(actual, (int, float)):
        raise AssertionError(f"{what}: esperaba un número o un tensor, obtuve {type(actual).__name__}.")
    a = torch.as_tensor(actual).detach().cpu().double()
    e = torch.as_tensor(expected).detach().cpu().double()
    check(a.shape == e.shape, f"{what}: forma esperada {tuple(e.shape)}, obtuve {tuple(a.shape)}.")
    ok = bool(torch.isfinite(a).all()) and torch.allclose(a, e, atol=atol, rtol=rtol)
    check(ok, f"{what}: esperaba {_fmt(e)}, obtuve {_fmt(a)}." + (f" {hint}" if hint else ""))


# ============================================================================================
# Grading with nbgrader
# ============================================================================================
def available_labs() -> list[str]:
    """The labs with an instructor source ``labs/source/<lab>/<lab>.ipynb``, sorted."""
    return sorted(p.parent.name for p in SOURCE_DIR.glob("*/*.ipynb") if p.stem == p.parent.name)


def _check_lab(lab: str) -> None:
    if lab not in available_labs():
        raise ValueError(f"unknown lab {lab!r}; available: {', '.join(available_labs())} "
                         f"(a lab is a folder labs/source/<lab>/ with <lab>.ipynb)")


def student_id(name: str) -> str:
    """A student id nbgrader accepts, from a file or folder name."""
    sid = re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_")
    if not sid:
        raise ValueError(f"cannot make a student id from {name!r}")
    return sid


@dataclass
class Question:
    """One autograded test cell of one submission."""

    grade_id: str
    score: float
    max_score: float
    message: str = ""  # the first line of the error the cell raised ("" when it passed)


@dataclass
class Result:
    """The grades of one submission of one lab."""

    lab: str
    student: str
    questions: list[Question] = field(default_factory=list)
    autograded: Path | None = None  # the executed notebook
    feedback: Path | None = None  # its HTML feedback, when generated

    @property
    def score(self) -> float:
        return sum(q.score for q in self.questions)

    @property
    def max_score(self) -> float:
        return sum(q.max_score for q in self.questions)

    def scores(self) -> dict[str, float]:
        return {q.grade_id: q.score for q in self.questions}


class LabGrader:
    """An nbgrader course root in ``root`` (default: a new temporary folder, removed when the
    grader is used as a context manager): the sources are
    copied from ``labs/source``; ``release/``, ``submitted/``, ``autograded/``, ``feedback/`` and
    ``gradebook.db`` (sqlite) live there, never in the repository.

    ``timeout``: nbgrader's cell timeout in seconds (a cell that runs longer is interrupted and
    its test fails; the rest of the notebook still runs).
    """

    def __init__(self, root: str | Path | None = None, *, timeout: int = DEFAULT_TIMEOUT):
        if timeout < 1:
            raise ValueError(f"timeout must be >= 1 second, got {timeout}")
        self._temporary = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="course-labs-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.timeout = timeout
        self._api = None
        # nbgrader runs `alembic` (its gradebook migrations) from PATH: the one next to this Python
        bindir = str(Path(sys.executable).parent)
        if bindir not in os.environ.get("PATH", "").split(os.pathsep):
            os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

    def __enter__(self) -> "LabGrader":
        return self

    def __exit__(self, *exc) -> None:
        """Remove the course root when it is the temporary folder this grader made."""
        if self._temporary:
            shutil.rmtree(self.root, ignore_errors=True)

    # --------------------------------------------------------------------------------------
    def _config(self):
        from traitlets.config.loader import PyFileConfigLoader

        cfg = PyFileConfigLoader("nbgrader_config.py", path=str(LABS_DIR)).load_config()
        cfg.CourseDirectory.root = str(self.root)
        cfg.CourseDirectory.db_url = f"sqlite:///{self.root / 'gradebook.db'}"
        cfg.Execute.timeout = self.timeout
        # no shared exchange (/usr/local/share/nbgrader/exchange): labs are handed out and in by hand
        cfg.Exchange.root = str(self.root / "exchange")
        return cfg

    @property
    def api(self):
        if self._api is None:
            from nbgrader.apps import NbGraderAPI
            from nbgrader.coursedir import CourseDirectory

            cfg = self._config()
            self._api = NbGraderAPI(coursedir=CourseDirectory(config=cfg), config=cfg)
        return self._api

    @staticmethod
    def _ok(result: dict, what: str) -> None:
        if not result.get("success"):
            raise RuntimeError(f"nbgrader {what} failed:\n{result.get('log', '')}\n{result.get('error', '')}")

    # --------------------------------------------------------------------------------------
    def generate(self, lab: str) -> Path:
        """``nbgrader generate_assignment``: the student version of ``lab`` (solutions and hidden
        tests removed); returns its path under ``release/``."""
        _check_lab(lab)
        dst = self.root / "source" / lab
        if dst.exists():
            shutil.rmtree(dst)
        shutil.copytree(SOURCE_DIR / lab, dst, ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
        self._ok(self.api.generate_assignment(lab, force=True, create=True), f"generate_assignment {lab}")
        return self.root / "release" / lab / f"{lab}.ipynb"

    def submit(self, lab: str, student: str, notebook: str | Path) -> Path:
        """Place ``notebook`` as ``student``'s submission of ``lab`` (``submitted/<student>/<lab>/``)."""
        if student != student_id(student):
            raise ValueError(f"student id {student!r} has characters nbgrader rejects; use {student_id(student)!r}")
        notebook = Path(notebook)
        if not notebook.is_file():
            raise ValueError(f"submission {notebook} does not exist (expected a .ipynb file)")
        try:  # a clear error now if it is not a notebook
            cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(f"{notebook} is not a Jupyter notebook ({type(e).__name__}: {e})") from None
        if not isinstance(cells, list):
            raise ValueError(f"{notebook} is not a Jupyter notebook (its 'cells' is not a list)")
        dst = self.root / "submitted" / student / lab / f"{lab}.ipynb"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(notebook, dst)
        return dst

    def autograde(self, lab: str, students: Iterable[str] | None = None, *, feedback: bool = False,
                  timeout: int | None = None, keep_going: bool = False) -> dict[str, Result]:
        """``nbgrader autograde`` of the submitted notebooks (every student by default, in order);
        returns each student's ``Result``; ``feedback=True`` also writes the HTML feedback;
        ``timeout`` overrides the cell timeout for these submissions; ``keep_going=True`` gives a
        submission nbgrader cannot grade (not a notebook, say) 0 points instead of raising."""
        if not (self.root / "release" / lab).exists():
            self.generate(lab)
        submitted = self.root / "submitted"
        students = sorted(p.parent.name for p in submitted.glob(f"*/{lab}")) if students is None else list(students)
        results = {}
        self.api.config.Execute.timeout = timeout or self.timeout
        try:
            for sid in students:
                outcome = self.api.autograde(lab, sid, force=True, create=True)
                if keep_going and not outcome.get("success"):
                    results[sid] = failed_result(lab, sid, "nbgrader no pudo corregir esta entrega (ver el log de nbgrader)")
                    continue
                self._ok(outcome, f"autograde {lab} for {sid}")
                if feedback:
                    self.feedback(lab, sid)
                results[sid] = self.result(lab, sid)
        finally:
            self.api.config.Execute.timeout = self.timeout
        return results

    def feedback(self, lab: str, student: str) -> Path:
        """``nbgrader generate_feedback``: the HTML feedback of an autograded submission."""
        self._ok(self.api.generate_feedback(lab, student, force=True), f"generate_feedback {lab} for {student}")
        return self.root / "feedback" / student / lab / f"{lab}.html"

    def result(self, lab: str, student: str) -> Result:
        """The per-question grades of an autograded submission, in the lab's order, with the
        error each failing test cell raised."""
        from nbgrader.api import Gradebook

        nb_path = self.root / "autograded" / student / lab / f"{lab}.ipynb"
        messages = _cell_errors(nb_path) if nb_path.exists() else {}
        source_order = list(lab_points(lab))
        with Gradebook(self.api.coursedir.db_url, self.api.coursedir.course_id) as gb:
            sub = gb.find_submission_notebook(lab, lab, student)
            grades = {g.name: (float(g.score or 0.0), float(g.max_score)) for g in sub.grades if g.max_score}
        ids = [g for g in source_order if g in grades] + [g for g in grades if g not in source_order]
        questions = [Question(g, grades[g][0], grades[g][1], messages.get(g, "")) for g in ids]
        fb = self.root / "feedback" / student / lab / f"{lab}.html"
        return Result(lab, student, questions, nb_path if nb_path.exists() else None, fb if fb.exists() else None)


def failed_result(lab: str, student: str, why: str) -> Result:
    """0 points on every question of ``lab``, each with the message ``why`` (a submission that could
    not be graded)."""
    return Result(lab, student, [Question(g, 0.0, p, why) for g, p in lab_points(lab).items()])


def _grade_cells(path: Path) -> list[dict]:
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    return [c for c in nb["cells"] if c.get("metadata", {}).get("nbgrader", {}).get("grade")
            and c["cell_type"] == "code"]


def lab_points(lab: str) -> dict[str, float]:
    """{grade_id: points} of the autograded test cells of a lab's instructor source, in order."""
    _check_lab(lab)
    return {c["metadata"]["nbgrader"]["grade_id"]: float(c["metadata"]["nbgrader"].get("points", 0))
            for c in _grade_cells(SOURCE_DIR / lab / f"{lab}.ipynb")}


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _cell_errors(path: Path) -> dict[str, str]:
    """{grade_id: "ErrorName: first line of the message"} of the failing grade cells of an executed notebook."""
    out = {}
    for cell in _grade_cells(path):
        gid = cell["metadata"]["nbgrader"]["grade_id"]
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                value = _ANSI.sub("", o.get("evalue", "")).strip().splitlines()
                if not value and o.get("traceback"):  # nbgrader's timeout error keeps its text in the traceback
                    value = [_ANSI.sub("", o["traceback"][-1]).strip()]
                out[gid] = f"{o.get('ename', 'Error')}: {value[0] if value else ''}".strip()
                break
    return out


# ============================================================================================
# Reports
# ============================================================================================
def _num(x: float) -> str:
    return f"{x:g}" if not math.isnan(x) else "-"


def report(result: Result) -> str:
    """A per-question score report (Spanish: it is what the student reads)."""
    lines = [f"Laboratorio {result.lab} -- entrega de {result.student}", ""]
    width = max([len(q.grade_id) for q in result.questions] + [8])
    for q in result.questions:
        mark = "ok " if q.score >= q.max_score else "MAL"
        lines.append(f"  [{mark}] {q.grade_id:<{width}}  {_num(q.score):>4} / {_num(q.max_score):<4}"
                     + (f"  {q.message}" if q.message else ""))
    lines += ["", f"  Total: {_num(result.score)} / {_num(result.max_score)} puntos"]
    if result.feedback:
        lines.append(f"  Devolución (HTML): {result.feedback}")
    return "\n".join(lines)


def table(results: Iterable[Result], fmt: str = "markdown") -> str:
    """A table with a row per submission and a column per question, plus the total: ``"markdown"`` or ``"csv"``."""
    results = list(results)
    if fmt not in ("markdown", "csv"):
        raise ValueError(f"fmt must be 'markdown' or 'csv', got {fmt!r}")
    ids: list[str] = []
    for r in results:
        ids += [q.grade_id for q in r.questions if q.grade_id not in ids]
    header = ["student"] + ids + ["total", "max"]
    rows = [[r.student] + [_num(r.scores().get(g, float("nan"))) for g in ids] + [_num(r.score), _num(r.max_score)]
            for r in results]
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows([header] + rows)
        return buf.getvalue()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def collect_submissions(folder: str | Path, lab: str) -> dict[str, Path]:
    """{student id: notebook} from a folder holding ``<student>.ipynb`` files and/or
    ``<student>/<lab>.ipynb`` (or ``<student>/<lab>/<lab>.ipynb``, nbgrader's layout) folders."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder} is not a folder of submissions")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix == ".ipynb":
            found[student_id(p.stem)] = p
        elif p.is_dir():
            for cand in (p / f"{lab}.ipynb", p / lab / f"{lab}.ipynb"):
                if cand.is_file():
                    found[student_id(p.name)] = cand
                    break
    if not found:
        raise ValueError(f"no submissions of {lab} in {folder}: expected <student>.ipynb files or "
                         f"<student>/{lab}.ipynb folders")
    return found
