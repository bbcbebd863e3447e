"""The package's layers (CONTRIBUTING.md draws them): every import arrow points down.

1. infrastructure: setup/config, hub, chat (LLM back ends), io, plotting, training, widgets -- imports only itself;
2. lecture: one module per lecture idea -- torch, numpy and the standard library only, and other
   lecture modules; nothing of the course's world, bridges, recipes, hub, plots or training loops;
3. world: Shapes World, digits, photographs, course tokenizers -- infrastructure and lecture;
4. bridges: library weight layouts -- infrastructure, lecture, world;
5. recipes: build / train / ship / judge the course models -- everything below.
"""
import ast
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "course_utils"

INFRASTRUCTURE = {"__init__", "chat", "config", "distributed", "exercises", "hub", "io", "plotting", "training", "widgets"}
LECTURE = {"clip", "llava", "llama", "mllama", "rope", "pixtral", "diffusion", "diffusionclip", "dit", "flow",
           "mmdit", "sd35", "evaluation", "parallel"}
# Aliases kept for notebooks: ``course_utils.shapes`` / ``course_utils.data`` are the world's modules.
ALIASES = {"shapes": "world", "data": "world"}
ALLOWED = {
    "infrastructure": {"infrastructure"},
    "lecture": {"lecture"},
    "world": {"infrastructure", "lecture", "world"},
    "bridges": {"infrastructure", "lecture", "world", "bridges"},
    "recipes": {"infrastructure", "lecture", "world", "bridges", "recipes"},
}
# What the lecture layer may import from outside the package.
LECTURE_THIRD_PARTY = {"torch", "numpy"}


def layer_of(parts: tuple[str, ...]) -> str:
    """Layer of a module given its path inside the package, e.g. ("world", "shapes")."""
    if parts[0] in ("world", "bridges", "recipes"):
        return parts[0]
    if parts[0] in ALIASES:
        return ALIASES[parts[0]]
    if parts[0] in INFRASTRUCTURE:
        return "infrastructure"
    if parts[0] in LECTURE:
        return "lecture"
    raise AssertionError(f"course_utils/{'/'.join(parts)}.py belongs to no layer: add it to tests/test_layers.py "
                         "and CONTRIBUTING.md")


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        parts = rel.parts if rel.parts[-1] != "__init__" or len(rel.parts) == 1 else rel.parts[:-1]
        yield path, parts


def imports(path: Path, parts: tuple[str, ...]):
    """(package-internal target parts or None, top-level external module or None, line) per import."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    here = list(parts) if is_pkg else list(parts[:-1])  # the package this module sits in
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.split(".")
                if top[0] == "course_utils":
                    yield tuple(top[1:]) or ("__init__",), None, node.lineno
                else:
                    yield None, top[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                top = (node.module or "").split(".")
                if top[0] == "course_utils":
                    base = tuple(top[1:])
                else:
                    yield None, top[0], node.lineno
                    continue
            else:
                up = node.level - 1
                base_list = here[: len(here) - up] if up else here
                base = tuple(base_list) + tuple((node.module or "").split(".") if node.module else ())
            if base and base[0]:
                yield base, None, node.lineno
            else:  # "from . import x, y": each name is a module of the package
                for alias in node.names:
                    yield (alias.name,), None, node.lineno


def test_every_module_has_a_layer():
    for _, parts in modules():
        if parts[0] != "__init__":
            layer_of(parts)


@pytest.mark.parametrize("path,parts", list(modules()), ids=[".".join(parts) for _, parts in modules()])
def test_imports_point_down(path, parts):
    if parts == ("__init__",):
        return  # the package root only maps names lazily
    mine = layer_of(parts)
    wrong = []
    for target, external, line in imports(path, parts):
        if target is not None:
            if target[0] == "__init__":
                if mine == "lecture":
                    wrong.append(f"line {line}: imports the package root")
                continue
            theirs = layer_of(target)
            if theirs not in ALLOWED[mine]:
                wrong.append(f"line {line}: {mine} module imports course_utils.{'.'.join(target)} ({theirs})")
        elif mine == "lecture" and external not in LECTURE_THIRD_PARTY and external not in sys.stdlib_module_names \
                and external != "__future__":
            wrong.append(f"line {line}: lecture module imports {external} (torch, numpy and the standard library only)")
    assert not wrong, f"course_utils/{path.relative_to(PKG)}: " + "; ".join(wrong)


def test_the_checker_catches_a_wrong_arrow(tmp_path):
    """The walk itself: a lecture module importing the world, or transformers, is reported."""
    fake = tmp_path / "dit.py"
    fake.write_text("import torch\nfrom .world import shapes\nfrom transformers import AutoModel\n"
                    "from . import flow\n")
    found = list(imports(fake, ("dit",)))
    assert (("world",), None, 2) in found
    assert (None, "transformers", 3) in found
    assert (("flow",), None, 4) in found
    assert layer_of(("world", "shapes")) == "world" and "world" not in ALLOWED["lecture"]


MAX_LECTURE_LINES = 360  # "a few hundred lines at most": readable in one sitting, like DiT's models.py


@pytest.mark.parametrize("name", sorted(n for n in LECTURE if (PKG / f"{n}.py").exists()))
def test_lecture_modules_stay_short(name):
    path = PKG / f"{name}.py"
    n = len(path.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_LECTURE_LINES, (f"course_utils/{name}.py has {n} lines: split it by idea or move what is not "
                                    f"the lecture's (I/O, datasets, training, library layouts) to a layer above")
