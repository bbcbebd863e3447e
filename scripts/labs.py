"""Graded labs with nbgrader (offline, sqlite gradebook): the command line behind `make labs`,
`make grade-lab` and `make grade-labs` (course_utils/recipes/grading.py does the work).

    python scripts/labs.py generate [LAB ...]                  # student versions -> build/labs/release/<lab>/
    python scripts/labs.py grade LAB SUBMISSION.ipynb          # per-question report + HTML feedback
    python scripts/labs.py grade-folder LAB FOLDER             # a table (CSV + Markdown) of a folder
    python scripts/labs.py list                                # the labs and their points
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

# OpenMP busy-waiting slows down two torch processes on a 2-core machine; set before torch starts.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("COURSE_HEADLESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from course_utils.recipes import grading  # noqa: E402


def _copy(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def cmd_list(args) -> None:
    for lab in grading.available_labs():
        points = grading.lab_points(lab)
        print(f"{lab:24s} {len(points):2d} test cells, {sum(points.values()):g} points")


def cmd_generate(args) -> None:
    labs = args.labs or grading.available_labs()
    out = Path(args.output)
    with grading.LabGrader(timeout=args.timeout) as grader:
        for lab in labs:
            release = grader.generate(lab)
            dst = _copy(release, out / "release" / lab / release.name)
            print(f"{lab}: student version -> {dst}")


def cmd_grade(args) -> None:
    sid = grading.student_id(args.student or Path(args.submission).stem)
    start = time.perf_counter()
    with grading.LabGrader(timeout=args.timeout) as grader:
        grader.generate(args.lab)
        grader.submit(args.lab, sid, args.submission)
        result = grader.autograde(args.lab, [sid], feedback=True)[sid]
        out = Path(args.output) / "graded" / args.lab / sid
        result.autograded = _copy(result.autograded, out / f"{args.lab}.ipynb") if result.autograded else None
        result.feedback = _copy(result.feedback, out / f"{args.lab}.html") if result.feedback else None
    print(grading.report(result))
    print(f"  (graded in {time.perf_counter() - start:.1f} s; executed notebook: {result.autograded})")


def cmd_grade_folder(args) -> None:
    submissions = grading.collect_submissions(args.folder, args.lab)
    root = Path(args.output) / "courses" / args.lab
    if root.exists():
        shutil.rmtree(root)
    grader = grading.LabGrader(root, timeout=args.timeout)
    start = time.perf_counter()
    grader.generate(args.lab)
    unreadable = {}
    for sid, path in submissions.items():
        try:
            grader.submit(args.lab, sid, path)
        except ValueError as e:  # not a notebook: 0 points, and the others are still graded
            print(f"warning: {sid}: {e}", file=sys.stderr)
            unreadable[sid] = grading.failed_result(args.lab, sid, f"la entrega no es un notebook válido: {e}")
    graded = grader.autograde(args.lab, [s for s in submissions if s not in unreadable], feedback=True, keep_going=True)
    results = {sid: graded.get(sid) or unreadable[sid] for sid in submissions}
    reports = Path(args.output) / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    (reports / f"{args.lab}.csv").write_text(grading.table(results.values(), "csv"), encoding="utf-8")
    md = grading.table(results.values(), "markdown")
    (reports / f"{args.lab}.md").write_text(md, encoding="utf-8")
    print(md)
    print(f"{len(results)} submissions graded in {time.perf_counter() - start:.1f} s -> {reports / args.lab}.csv, "
          f"{reports / args.lab}.md; gradebook {root / 'gradebook.db'}, feedback under {root / 'feedback'}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default=str(grading.BUILD_DIR), help="where results go (default: build/labs)")
    p.add_argument("--timeout", type=int, default=grading.DEFAULT_TIMEOUT, help="cell timeout in seconds")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the labs and their points").set_defaults(func=cmd_list)
    g = sub.add_parser("generate", help="student versions of the labs (all by default)")
    g.add_argument("labs", nargs="*")
    g.set_defaults(func=cmd_generate)
    g = sub.add_parser("grade", help="autograde one submitted notebook and print a per-question report")
    g.add_argument("lab")
    g.add_argument("submission")
    g.add_argument("--student", help="student id (default: the file name)")
    g.set_defaults(func=cmd_grade)
    g = sub.add_parser("grade-folder", help="autograde a folder of submissions into a CSV / Markdown table")
    g.add_argument("lab")
    g.add_argument("folder")
    g.set_defaults(func=cmd_grade_folder)
    args = p.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
