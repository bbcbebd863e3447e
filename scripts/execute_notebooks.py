"""Execute notebooks in place so their stored outputs equal a fresh run (``make outputs``).

Runs each notebook top to bottom from its own folder with nbclient, without execution timings in
the metadata. The stored outputs are the ones a student meets: ``make outputs`` runs full mode
(``COURSE_FAST`` unset, headless, offline), as ``make course`` gives; this script refuses fast mode
unless ``--allow-fast`` (nbval checks the ``NBVAL_CHECK_OUTPUT`` cells in fast mode, so those must print
the same in both modes). ``make outputs NB=notebooks/01_clip.ipynb`` refreshes one notebook.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def execute(path: Path, timeout: int = 1800) -> float:
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    client.execute()
    elapsed = time.perf_counter() - t0
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
    nb.metadata.pop("widgets", None)  # widget state is large and changes on every run
    nbformat.write(nb, path)
    return elapsed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("notebooks", nargs="+", type=Path)
    ap.add_argument("--timeout", type=int, default=1800, help="per-cell timeout in seconds")
    ap.add_argument("--allow-fast", action="store_true",
                    help="store fast-mode outputs (COURSE_FAST=1); by default only full-mode outputs are stored")
    args = ap.parse_args(argv)
    if os.environ.get("COURSE_FAST", "0").strip().lower() in ("1", "true", "yes", "on") and not args.allow_fast:
        ap.error("COURSE_FAST is set: stored outputs are full mode's (run `make outputs`, or unset COURSE_FAST)")
    for path in args.notebooks:
        elapsed = execute(path, args.timeout)
        print(f"{path}: executed in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
