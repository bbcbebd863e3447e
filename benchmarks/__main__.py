"""Run every ``benchmarks/bench_*.py`` and write a Markdown report (see ``benchmarks/__init__``)."""
from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def to_markdown(section: dict) -> str:
    lines = [f"## {section['title']}", ""]
    rows = section.get("rows") or []
    if rows:
        cols = list(dict.fromkeys(k for r in rows for k in r))
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in rows:
            cells = []
            for c in cols:
                v = r.get(c, "")
                cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if section.get("notes"):
        lines += [section["notes"], ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", type=Path, default=Path("build/benchmark.md"))
    ap.add_argument("--only", nargs="*", help="module names without the bench_ prefix, e.g. shapes notebooks")
    ap.add_argument("--full", action="store_true", help="full-size measurements (slower) instead of fast ones")
    args = ap.parse_args(argv)
    import torch

    names = sorted(p.stem for p in HERE.glob("bench_*.py"))
    if args.only:
        names = [n for n in names if n.removeprefix("bench_") in args.only]
    parts = [f"# Course benchmark\n\nPython {platform.python_version()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, {platform.machine()}; mode: {'full' if args.full else 'fast'}\n"]
    for name in names:
        t0 = time.perf_counter()
        section = importlib.import_module(f"benchmarks.{name}").run(fast=not args.full)
        print(f"{name}: {time.perf_counter() - t0:.1f} s", flush=True)
        parts.append(to_markdown(section))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(parts), encoding="utf-8")
    print(f"report written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
