"""``setup()``: one call at the top of every notebook (introduced in notebook 00).

Seeds Python/NumPy/torch, picks the device (cuda -- NVIDIA or AMD ROCm -- then mps, then cpu),
reads the course switches from the environment and applies deterministic settings, print options
and matplotlib defaults.

Switches (environment variables):
- ``COURSE_FAST=1``     small configs, as in CI (each notebook well under a minute on a CPU);
- ``COURSE_ONLINE=1``   allow downloads of real hub models (default: offline, course models);
- ``COURSE_DEVICE=cpu`` force a device (``cuda``, ``cuda:1``, ``mps``, ``cpu``);
- ``COURSE_HEADLESS=1`` no progress bars, widgets drawn once with their defaults (tests, HTML export).
"""
from __future__ import annotations

import os
import platform
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"

_TRUE = ("1", "true", "yes", "on")


def _flag(name: str, default: str = "0") -> bool:
    return os.environ.get(name, default).strip().lower() in _TRUE


def is_fast() -> bool:
    """True when ``COURSE_FAST=1``: notebooks use their small configs (CI, quick read-through)."""
    return _flag("COURSE_FAST")


def is_online() -> bool:
    """True when the user allowed downloads with ``COURSE_ONLINE=1``."""
    return _flag("COURSE_ONLINE")


def is_headless() -> bool:
    """True under tests, CI or the HTML export: no progress bars, widgets rendered statically."""
    return _flag("COURSE_HEADLESS") or _flag("CI")


@dataclass(frozen=True)
class CourseConfig:
    """What ``setup()`` decided; notebooks read ``cfg.device``, ``cfg.fast``, ``cfg.online``."""

    seed: int
    device: torch.device
    dtype: torch.dtype
    fast: bool
    online: bool
    headless: bool
    data_dir: Path = DATA_DIR
    versions: dict = field(default_factory=dict)

    @property
    def accelerator(self) -> str:
        """'cuda', 'rocm', 'mps' or 'cpu' (ROCm builds of torch also report ``device.type == 'cuda'``)."""
        if self.device.type == "cuda" and getattr(torch.version, "hip", None):
            return "rocm"
        return self.device.type

    def summary(self) -> str:
        libs = " ".join(f"{k} {v}" for k, v in self.versions.items())
        mode = ("fast" if self.fast else "full") + (" online" if self.online else " offline")
        return f"[course_utils] {libs} | device={self.device} ({self.accelerator}) dtype={str(self.dtype).replace('torch.', '')} | {mode} | seed={self.seed}"


def available_devices() -> list[str]:
    """The devices torch can use on this machine, e.g. ``['cuda', 'cuda:0', 'cpu']``."""
    out = []
    if torch.cuda.is_available():
        out += ["cuda"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        out.append("mps")
    return out + ["cpu"]


def pick_device(prefer: str | None = None) -> torch.device:
    """cuda (NVIDIA or ROCm) -> mps -> cpu, unless ``prefer`` or ``COURSE_DEVICE`` names one.

    A device that this machine does not have is a ``RuntimeError`` naming the ones it has.
    """
    prefer = prefer or os.environ.get("COURSE_DEVICE")
    if prefer:
        have = available_devices()
        try:
            dev = torch.device(prefer)
        except (RuntimeError, TypeError) as exc:
            raise RuntimeError(f"{prefer!r} is not a device name torch knows ({exc}); available here: "
                               f"{', '.join(have)} (set COURSE_DEVICE to one of them, or unset it)") from None
        usable = (dev.type == "cpu" or (dev.type == "mps" and "mps" in have)
                  or (dev.type == "cuda" and torch.cuda.is_available()
                      and (dev.index is None or dev.index < torch.cuda.device_count())))
        if not usable:
            hint = " (install a CUDA/ROCm build of torch for a GPU)" if dev.type == "cuda" else ""
            raise RuntimeError(f"device {prefer!r} was requested but is not available on this machine; "
                               f"available here: {', '.join(have)}{hint}. Set COURSE_DEVICE to one of them, or unset it")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def _versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__.split("+")[0]}
    for mod in ("transformers", "diffusers", "open_clip"):
        m = sys.modules.get(mod)
        if m is None:
            try:
                from importlib.metadata import version
                out[mod] = version({"open_clip": "open_clip_torch"}.get(mod, mod))
            except Exception:  # not installed
                continue
        else:
            out[mod] = getattr(m, "__version__", "?")
    return out


def setup(seed: int = 0, *, deterministic: bool = True, device: str | None = None, quiet: bool = False,
          matplotlib_defaults: bool = True) -> CourseConfig:
    """Prepare a notebook: seeds, device, switches, deterministic settings; returns a ``CourseConfig``.

    Prints one line with versions and device; notebooks mark that cell ``# NBVAL_IGNORE_OUTPUT``.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    seed_everything(seed)
    dev = pick_device(device)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    # bf16 where the hardware has it (the lecture's models are trained in bf16), else fp32.
    dtype = torch.bfloat16 if dev.type == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    torch.set_printoptions(precision=4, sci_mode=False, linewidth=120)
    np.set_printoptions(precision=4, suppress=True, linewidth=120)
    if matplotlib_defaults:
        _matplotlib_defaults()
    if is_headless():
        _no_library_progress_bars()
    cfg = CourseConfig(seed=seed, device=dev, dtype=dtype, fast=is_fast(), online=is_online(),
                       headless=is_headless(), versions=_versions())
    if not quiet:
        print(cfg.summary())
    return cfg


def _no_library_progress_bars() -> None:
    """Headless: no "Loading weights" / "Loading pipeline components" bars from transformers and diffusers."""
    import importlib

    for name in ("transformers.utils.logging", "diffusers.utils.logging"):
        try:
            importlib.import_module(name).disable_progress_bar()
        except ImportError:  # a library that is not installed shows no bars either
            pass


def _matplotlib_defaults() -> None:
    from .plotting import apply_style  # the projector style: >= 12 pt ticks and legends

    apply_style()
