"""Shared fixtures: CPU, seeded, offline, with a Hugging Face cache of its own; matplotlib without a display.

The hub cache is pointed at an empty temporary folder before any library reads it, so a test about
offline fallback behaves the same on a machine whose real cache already holds the hub models (and the
notebooks executed by nbval, whose kernels inherit this environment, cannot pick up a cached model).
"""
import os
import shutil
import tempfile

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
_HF_HOME = tempfile.mkdtemp(prefix="course-hf-home-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ.pop("HUGGINGFACE_HUB_CACHE", None)
os.environ.pop("TRANSFORMERS_CACHE", None)

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_HF_HOME, ignore_errors=True)


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(0)
    yield
