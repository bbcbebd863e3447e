import os
import re
import shutil
import time
from pathlib import Path

import pytest

from course_utils import hub


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known names: .*course/clip-shapes.*openai/clip-vit-base-patch32"):
        hub.resolve("openai/clip-vit-huge")


def test_offline_falls_back_quickly_and_says_so(monkeypatch, capsys, tmp_path):
    # a stand-in checkpoint in a temporary data/models
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path)
    (tmp_path / "clip-shapes").mkdir()
    (tmp_path / "clip-shapes" / "config.json").write_text("{}")
    monkeypatch.setenv("COURSE_ONLINE", "0")
    t0 = time.perf_counter()
    path = hub.resolve("openai/clip-vit-base-patch32")
    assert time.perf_counter() - t0 < 2.0
    assert path == str(tmp_path / "clip-shapes") and hub.is_course_path(path)
    assert "COURSE_ONLINE=1" in capsys.readouterr().out
    with pytest.raises(RuntimeError, match="needs a download"):
        hub.resolve("openai/clip-vit-base-patch32", allow_fallback=False)


def test_online_without_network_never_hangs(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path)
    (tmp_path / "clip-shapes").mkdir()
    (tmp_path / "clip-shapes" / "config.json").write_text("{}")
    # an address that swallows packets: the check must give up after the timeout
    monkeypatch.setattr(hub, "HUB_HOST", "10.255.255.1")
    t0 = time.perf_counter()
    path = hub.resolve("openai/clip-vit-base-patch32", online=True, timeout=0.5, verbose=False)
    assert time.perf_counter() - t0 < 2.0
    assert path.endswith("clip-shapes")


def test_online_and_reachable_returns_the_hub_id(monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda timeout=2.0, host=None: True)
    assert hub.resolve("facebook/DiT-XL-2-256", online=True, verbose=False) == "facebook/DiT-XL-2-256"


def test_missing_course_checkpoint_says_how_to_make_it(monkeypatch, tmp_path):
    monkeypatch.setattr(hub, "MODELS_DIR", tmp_path)
    with pytest.raises(RuntimeError, match=r"notebook 01 .*scripts/train_clip.py"):
        hub.resolve("course/clip-shapes")


def test_every_hub_model_has_a_registered_stand_in():
    for name, entry in hub.HUB_MODELS.items():
        assert entry.stand_in in hub.COURSE_MODELS, name
    rows = hub.table()
    assert len(rows) == len(hub.COURSE_MODELS) + len(hub.HUB_MODELS)


def _fake_cached_model(repo_id: str) -> None:
    """A hub model laid out as huggingface_hub caches it (refs/main -> snapshots/<rev>/config.json)."""
    cache = Path(os.environ["HF_HUB_CACHE"])
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    (folder / "refs").mkdir(parents=True, exist_ok=True)
    (folder / "refs" / "main").write_text("0" * 40)
    (folder / "snapshots" / ("0" * 40)).mkdir(parents=True, exist_ok=True)
    (folder / "snapshots" / ("0" * 40) / "config.json").write_text("{}")


def test_the_test_session_has_its_own_empty_hub_cache():
    """conftest points HF_HOME / HF_HUB_CACHE at a temporary folder: the user's cache cannot leak in."""
    from huggingface_hub import constants

    home = Path(os.environ["HF_HOME"])
    assert home.name.startswith("course-hf-home-") and Path(constants.HF_HUB_CACHE).is_relative_to(home)
    assert not hub._in_local_cache("openai/clip-vit-base-patch32")


def test_a_cached_hub_model_is_used_offline(monkeypatch, capsys):
    repo = "openai/clip-vit-large-patch14"
    monkeypatch.setenv("COURSE_ONLINE", "0")
    assert hub.is_course_path(hub.resolve(repo, verbose=False))
    _fake_cached_model(repo)
    try:
        assert hub.resolve(repo) == repo
        assert "local Hugging Face cache" in capsys.readouterr().out
    finally:
        shutil.rmtree(Path(os.environ["HF_HUB_CACHE"]) / ("models--" + repo.replace("/", "--")))


def test_shipped_model_files_name_no_machine_path():
    # config.json and friends travel with the course: no absolute path of the machine that trained them
    pattern = re.compile(r"(/work|/root|/home|/tmp|/Users)/[\w.-]+")
    found = [f"{p.relative_to(hub.MODELS_DIR)}: {m.group(0)}" for p in sorted(hub.MODELS_DIR.rglob("*.json"))
             for m in [pattern.search(p.read_text(encoding="utf-8"))] if m]
    assert not found, found
