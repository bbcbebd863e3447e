"""Each notebook's run time and peak memory (fast mode unless --full), one fresh kernel each."""
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


def run(fast: bool = True) -> dict:
    env = dict(os.environ, COURSE_HEADLESS="1", HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE")
    env["COURSE_FAST"] = "1" if fast else "0"
    rows = []
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        out = subprocess.run([sys.executable, "-c", _CHILD, str(nb), str(nb.parent)], env=env,
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            rows.append({"notebook": nb.name, "seconds": "failed", "peak memory (MiB)": out.stderr.strip()[-200:]})
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"notebook": nb.name, "seconds": round(r["seconds"], 1), "peak memory (MiB)": round(r["peak_mib"])})
    return {"title": f"Notebooks ({'fast' if fast else 'full'} mode)", "rows": rows,
            "notes": "Kernel start included; peak memory is the kernel's maximum resident set size."}
