"""Each notebook's run time and peak memory in both modes (fast: CI's nbval pass; full: what `make course`
gives a student), one fresh kernel each."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, resource, sys, time
import nbformat
from nbclient import NotebookClient
path = sys.argv[1]
nb = nbformat.read(path, as_version=4)
t0 = time.perf_counter()
NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": sys.argv[2]}}).execute()
dt = time.perf_counter() - t0
# ru_maxrss of waited-for children (the kernel), in KiB on Linux
print(json.dumps({"seconds": dt, "peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _measure(nb: Path, fast: bool) -> tuple:
    env = dict(os.environ, COURSE_HEADLESS="1", HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env.pop("COURSE_FAST", None)
    if fast:
        env["COURSE_FAST"] = "1"
    out = subprocess.run([sys.executable, "-c", _CHILD, str(nb), str(nb.parent)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return "failed", out.stderr.strip()[-200:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return round(r["seconds"], 1), round(r["peak_mib"])


def run(fast: bool = True) -> dict:
    """Both modes whatever ``fast`` says: the full-mode figures are the ones a student meets."""
    rows = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        fast_s, fast_mib = _measure(nb, True)
        full_s, full_mib = _measure(nb, False)
        rows.append({"notebook": nb.name, "fast (s)": fast_s, "fast peak (MiB)": fast_mib,
                     "full (s)": full_s, "full peak (MiB)": full_mib})
    return {"title": "Notebooks: run time and peak memory, fast and full mode", "rows": rows,
            "notes": "Kernel start included; peak memory is the kernel's maximum resident set size. Targets: "
                     "fast well under 90 s, full at most 150 s per notebook on a 2-core CPU."}
