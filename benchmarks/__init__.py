"""Benchmarks of the course (``make benchmark``): not tests, measurements written to a report.

Each ``benchmarks/bench_*.py`` module defines ``run(fast: bool) -> dict`` returning
``{"title": str, "rows": list[dict], "notes": str}``; ``python -m benchmarks`` runs them all
(or those named with ``--only``) and writes one Markdown report.
"""


def time_per_call(fn, reps: int) -> float:
    """Seconds per call of ``fn()``: one warm-up call, then the mean over ``reps`` calls."""
    import time

    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps
