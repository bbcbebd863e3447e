"""Shapes World generation speed: scenes per second at 32 and 224 px."""
from __future__ import annotations

import time

from course_utils import shapes


def _rate(n: int, size: int, full: bool) -> float:
    t0 = time.perf_counter()
    for seed in range(n):
        s = shapes.make_scene(seed, size=size)
        s.image
        if full:
            s.captions, s.qa, s.multiple_choice
    return n / (time.perf_counter() - t0)


def run(fast: bool = True) -> dict:
    n = 2000 if fast else 10000
    _rate(200, 32, True)  # warm-up
    rows = [
        {"what": "scene + image 32 px + 5 captions + QA + multiple choice", "scenes/s": _rate(n, 32, True)},
        {"what": "scene + image 32 px", "scenes/s": _rate(n, 32, False)},
        {"what": "scene + image 224 px", "scenes/s": _rate(n // 10, 224, False)},
    ]
    return {"title": "Shapes World generation", "rows": rows,
            "notes": f"{n} scenes, one process; target: >= 2,000 scenes/s at 32 px."}
