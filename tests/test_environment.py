"""The conda environment files list the course's packages with pyproject.toml's ranges."""
import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parent.parent
# pip name -> conda-forge name(s); torch is pytorch-cpu in the CPU file and pytorch-gpu in the GPU one.
CONDA_NAMES = {"open_clip_torch": "open-clip-torch"}
TORCH = {"environment.yml": "pytorch-cpu", "environment-gpu.yml": "pytorch-gpu"}


def _split(req: str) -> tuple[str, str]:
    name, spec = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(.*)", req).groups()
    return name.lower().replace("_", "-"), spec.replace(" ", "")


def _pyproject() -> dict[str, str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] + project["optional-dependencies"]["dev"]
    return dict(_split(r) for r in reqs)


@pytest.mark.parametrize("filename", sorted(TORCH))
def test_environment_matches_pyproject(filename):
    env = yaml.safe_load((ROOT / filename).read_text())
    listed = dict(_split(d) for d in env["dependencies"] if isinstance(d, str))
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip, "the course package itself is installed (editable) by pip"
    for name, spec in _pyproject().items():
        conda = TORCH[filename] if name == "torch" else CONDA_NAMES.get(name.replace("-", "_"), name)
        assert conda in listed, f"{filename} does not list {conda} (pyproject.toml: {name}{spec})"
        assert listed[conda] == spec, f"{filename}: {conda}{listed[conda]} but pyproject.toml says {name}{spec}"
    extra = set(listed) - {TORCH[filename], "python", "pip"} - {
        CONDA_NAMES.get(n.replace("-", "_"), n) for n in _pyproject()}
    assert not extra, f"{filename} lists packages pyproject.toml does not: {sorted(extra)}"
