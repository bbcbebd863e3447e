import os
import random
import subprocess
import sys

import numpy as np
import pytest
import torch

import course_utils
from course_utils import config


def test_setup_seeds_everything_and_reports(capsys):
    cfg = course_utils.setup(seed=123)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    course_utils.setup(seed=123, quiet=True)
    b = (random.random(), np.random.rand(), torch.rand(1).item())
    assert a == b
    line = capsys.readouterr().out.strip().splitlines()
    assert len(line) == 1 and line[0].startswith("[course_utils]") and "torch" in line[0] and "device=" in line[0]
    assert cfg.seed == 123 and isinstance(cfg.device, torch.device)
    assert torch.are_deterministic_algorithms_enabled()


def test_setup_reads_switches(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("COURSE_ONLINE", "0")
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    cfg = course_utils.setup(quiet=True)
    assert cfg.fast and not cfg.online and cfg.headless
    monkeypatch.setenv("COURSE_FAST", "0")
    assert not course_utils.setup(quiet=True).fast


def test_device_selection_on_this_machine(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    dev = config.pick_device()
    expected = "cuda" if torch.cuda.is_available() else ("mps" if torch.backends.mps.is_available() else "cpu")
    assert dev.type == expected
    assert config.pick_device("cpu").type == "cpu"


def test_unavailable_device_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match=r"'cuda' was requested but is not available.*available here: .*cpu"):
        config.pick_device("cuda")
    with pytest.raises(RuntimeError, match=r"'cuda:7' was requested.*available here"):
        config.pick_device("cuda:7")


def test_unknown_device_name_lists_the_available_ones(monkeypatch):
    monkeypatch.setenv("COURSE_DEVICE", "gpu")
    with pytest.raises(RuntimeError, match=r"'gpu' is not a device name torch knows.*available here: .*cpu"):
        config.pick_device()
    assert config.available_devices()[-1] == "cpu"


@pytest.mark.parametrize("seed", [-1, 1.5, "0"])
def test_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        course_utils.setup(seed=seed, quiet=True)


def test_import_is_offline_and_sets_thread_policy():
    # A fresh interpreter: importing the package sets the OpenMP policy and offline mode, and
    # touches no network (socket.create_connection is made to fail loudly).
    code = (
        "import os, socket\n"
        "def boom(*a, **k): raise AssertionError('network used at import')\n"
        "socket.create_connection = boom\n"
        "import course_utils\n"
        "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n"
        "assert os.environ['HF_HUB_OFFLINE'] == '1'\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE", "COURSE_ONLINE")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
