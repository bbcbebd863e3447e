"""Helper package of the "Modelos multimodales" course (FIUBA, Vision Transformers, unit 5).

Every notebook starts with ``cfg = course_utils.setup()`` (notebook 00). Submodules are imported
on first use (``course_utils.shapes``, ``course_utils.hub``, ...); nothing here touches the network.
"""
import os as _os

# On a 2-core laptop two multi-threaded torch processes (kernel + test runner, or two kernels) run
# 6-12x slower with OpenMP's default busy-wait policy. It must be set before torch starts, so the
# package sets it when imported first; the Makefile sets it for every process it launches.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Offline by default: the hub libraries then never try the network unless the user allowed it.
if _os.environ.get("COURSE_ONLINE", "0").lower() not in ("1", "true", "yes"):
    _os.environ.setdefault("HF_HUB_OFFLINE", "1")
    _os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    _os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import importlib as _importlib

from .config import CourseConfig, setup, is_fast, is_online, is_headless, REPO_ROOT, DATA_DIR

__version__ = "0.1.0"

# Layers (CONTRIBUTING.md; tests/test_layers.py checks that every import points down):
_SUBMODULES = {
    # 1. infrastructure
    "chat", "config", "distributed", "exercises", "hub", "io", "plotting", "training", "widgets",
    # 2. lecture: one module per lecture idea, torch and numpy only
    "clip", "llava", "llama", "mllama", "parallel", "rope", "pixtral", "diffusion", "dit", "flow", "mmdit", "sd35", "evaluation", "diffusionclip",
    # 3. the course's world (``shapes`` and ``data`` are aliases of ``world.shapes`` / ``world.data``)
    "world", "shapes", "data",
    # 4-5. library weight layouts; build / train / ship / judge the course models
    "bridges", "recipes",
}

__all__ = ["setup", "CourseConfig", "is_fast", "is_online", "is_headless", "REPO_ROOT", "DATA_DIR",
           *sorted(_SUBMODULES)]


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'course_utils' has no attribute {name!r}")
