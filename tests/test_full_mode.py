"""Every notebook top to bottom in full mode: ``COURSE_FAST`` unset, as ``make course`` gives a student.

nbval checks the stored outputs in fast mode; this second pass (``make test`` runs it as
``pytest -m full_mode tests/test_full_mode.py``) executes each notebook headless and offline with the
full-size configs and fails on any error, so an assert that holds in one mode only cannot land.
Nothing is written back: the stored outputs stay those of ``make outputs``.
"""
import os
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
CELL_TIMEOUT = 600  # seconds; a notebook itself is meant to finish in under 150 s on a 2-core CPU

pytestmark = pytest.mark.full_mode


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_in_full_mode(path, monkeypatch):
    monkeypatch.delenv("COURSE_FAST", raising=False)  # the kernel inherits this process's environment
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3", record_timing=False,
                                     resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
    print(f"{path.name}: full mode in {time.perf_counter() - t0:.0f} s")
    assert os.environ.get("COURSE_FAST") is None
