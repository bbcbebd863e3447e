"""Benchmarks of the course (``make benchmark``): not tests, measurements written to a report.

Each ``benchmarks/bench_*.py`` module defines ``run(fast: bool) -> dict`` returning
``{"title": str, "rows": list[dict], "notes": str}``; ``python -m benchmarks`` runs them all
(or those named with ``--only``) and writes one Markdown report.
"""
