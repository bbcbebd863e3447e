"""Shapes World: the course's procedurally generated multimodal world (introduced in notebook 00).

A scene holds 1-4 objects (shape x color x size x position) on a plain background. Everything a
chapter needs is derived from the scene's seed, deterministically:

- ``scene.image``: anti-aliased rendering at any resolution (32 px default; 224 px for pretrained
  models), drawn from signed distance functions so the same scene looks the same at every size;
  ``make_scene(seed, size=32, width=64)`` puts a scene on a 32 x 64 canvas (Pixtral's native aspect
  ratios, notebook 06): centers are fractions of the width and the height, object sizes fractions of
  the shorter side, so shapes keep their proportions on every canvas;
- ``scene.objects``: each with a normalized box ``[x1, y1, x2, y2]`` (LLaVA's "Context type 2");
- ``scene.captions``: five varied captions (synonyms, counts, relative and absolute positions),
  like COCO's five (LLaVA's "Context type 1");
- ``scene.qa``: question/answer pairs (color, shape, count, existence -- also of things that are
  *not* there --, absolute and relative position) and ``scene.multiple_choice``: A-D variants.

Splits are disjoint seed ranges (``SPLITS``), so a test scene is never trained on.

Objects are sized so that their shape stays recognizable at 32 px: the small ones span ~10 px and
the large ones ~14 px (tiny models trained on a CPU could not tell 4-px-radius shapes apart).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from functools import cached_property
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

# --------------------------------------------------------------------------------------------
# The world's vocabulary
# --------------------------------------------------------------------------------------------
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (22, 163, 74),
    "blue": (37, 99, 235),
    "yellow": (234, 196, 8),
    "purple": (147, 51, 234),
    "orange": (249, 115, 22),
}
# Half-extent of an object's box, as a fraction of the image side (at 32 px: ~5 px and ~7 px).
SIZES: dict[str, float] = {"small": 0.15, "large": 0.215}
BACKGROUND: tuple[int, int, int] = (245, 245, 245)
MAX_OBJECTS = 4
MIN_IMAGE_SIZE = 8
MARGIN = 0.03  # minimum gap between two boxes, and between a box and the border

# Synonyms used by the captions (the canonical word comes first).
SHAPE_SYNONYMS = {"circle": ("circle", "disk", "round shape"),
                  "square": ("square", "box", "block"),
                  "triangle": ("triangle", "triangular shape", "wedge"),
                  "cross": ("cross", "plus sign", "plus shape")}
SIZE_SYNONYMS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "large")}
OBJECT_NOUNS = ("objects", "shapes", "figures")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
# Nine regions of the image for "where is ...?" questions (rows top/middle/bottom x columns).
REGIONS = (("top left", "top", "top right"),
           ("left", "center", "right"),
           ("bottom left", "bottom", "bottom right"))
RELATIONS = ("to the left of", "to the right of", "above", "below")
_OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of",
             "above": "below", "below": "above"}

# Disjoint seed ranges: [start, stop) for each split.
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 1_100_000),
    "test": (2_000_000, 2_100_000),
}

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."


# --------------------------------------------------------------------------------------------
# Objects and scenes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapeObject:
    """One object: ``shape``, ``color``, ``size`` and its center ``(cx, cy)`` in [0, 1] (y down)."""

    shape: str
    color: str
    size: str
    cx: float
    cy: float

    @property
    def half(self) -> float:
        return SIZES[self.size]

    @property
    def box(self) -> list[float]:
        """Normalized ``[x1, y1, x2, y2]`` rounded to 3 decimals, as in LLaVA's context boxes (square canvas)."""
        return self.box_on(1.0, 1.0)

    def box_on(self, ax: float, ay: float) -> list[float]:
        """The box on a canvas ``ax`` x ``ay`` short sides wide and high (normalized by width and height)."""
        hx, hy = self.half / ax, self.half / ay
        return [round(min(max(v, 0.0), 1.0), 3) for v in (self.cx - hx, self.cy - hy, self.cx + hx, self.cy + hy)]

    @property
    def label(self) -> str:
        """``"red circle"``: the box label of the lecture's "Context type 2"."""
        return f"{self.color} {self.shape}"

    @property
    def region(self) -> str:
        """One of the nine ``REGIONS`` ("top left", "center", ...), from the object's center."""
        row = min(int(self.cy * 3), 2)
        col = min(int(self.cx * 3), 2)
        return REGIONS[row][col]


@dataclass(frozen=True)
class QA:
    """A question/answer pair; multiple-choice items also carry ``options`` (A-D) and the letter."""

    question: str
    answer: str
    kind: str  # "count", "color", "shape", "existence", "position", "relation"
    options: tuple[str, ...] | None = None

    @property
    def prompt(self) -> str:
        """The question as shown to a model (with lettered options for multiple choice)."""
        if self.options is None:
            return self.question
        lines = [self.question] + [f"{letter}. {opt}" for letter, opt in zip("ABCD", self.options)]
        return "\n".join(lines + [MC_INSTRUCTION])


@dataclass
class Scene:
    """A Shapes World scene; ``image``, ``captions`` and ``qa`` are computed on first access."""

    seed: int
    size: int
    objects: list[ShapeObject]
    background: tuple[int, int, int] = BACKGROUND
    _rng_seed: int = field(default=0, repr=False)
    width: int | None = None   # None: a square canvas of side ``size``; else ``size`` is the height

    @property
    def height(self) -> int:
        return self.size

    @property
    def shape_hw(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return self.size, self.size if self.width is None else self.width

    # ---- pixels ------------------------------------------------------------------------------
    @cached_property
    def image(self) -> Image.Image:
        return self.render(self.size)

    def render(self, size: int) -> Image.Image:
        """The same scene rendered ``size`` pixels high (and as wide as the canvas's aspect ratio says)."""
        width = None if self.width is None else round(size * self.width / self.size)
        return Image.fromarray(render_objects(self.objects, size, self.background, width=width))

    def to_tensor(self) -> torch.Tensor:
        """``(3, height, width)`` float tensor in [0, 1]."""
        return pil_to_tensor(self.image)

    # ---- text ------------------------------------------------------------------------------
    @cached_property
    def captions(self) -> list[str]:
        return make_captions(self.objects, random.Random(self._rng_seed))

    @cached_property
    def qa(self) -> list[QA]:
        return make_qa(self.objects, random.Random(self._rng_seed + 1))

    @cached_property
    def multiple_choice(self) -> list[QA]:
        return make_multiple_choice(self.qa, random.Random(self._rng_seed + 2))

    def boxes_text(self, sep: str = ", ") -> str:
        """The lecture's "Context type 2: Boxes": ``red circle: [0.1, 0.2, 0.4, 0.5], ...``."""
        h, w = self.shape_hw
        unit = min(h, w)
        return sep.join(f"{o.label}: {o.box_on(w / unit, h / unit)}" for o in self.objects)

    def captions_text(self) -> str:
        """The lecture's "Context type 1: Captions": the five captions, one per line."""
        return "\n".join(self.captions)

    def context(self) -> str:
        """LLaVA's few-shot ``*_caps.txt`` layout: five captions, a blank line, one box per line."""
        return self.captions_text() + "\n\n" + self.boxes_text(sep="\n")

    def __repr__(self) -> str:  # short, deterministic (used in stored notebook outputs)
        objs = ", ".join(f"{o.size} {o.label}" for o in self.objects)
        size = self.size if self.width is None else f"{self.size}x{self.width}"
        return f"Scene(seed={self.seed}, size={size}, objects=[{objs}])"


# --------------------------------------------------------------------------------------------
# Rendering: coverage from signed distances gives anti-aliasing at any resolution
# --------------------------------------------------------------------------------------------
def _signed_distance(shape: str, px: np.ndarray, py: np.ndarray, cx: float, cy: float, h: float) -> np.ndarray:
    """Signed distance (negative inside, in image-side units) from pixel centers to the shape."""
    dx, dy = px - cx, py - cy
    if shape == "circle":
        # d = |p - c| - r
        return np.sqrt(dx * dx + dy * dy) - h
    if shape == "square":
        # d = max(|dx|, |dy|) - h (exact inside, a close bound outside)
        return np.maximum(np.abs(dx), np.abs(dy)) - h
    if shape == "triangle":
        # Isosceles triangle filling the box: apex (0, -h), base corners (+-h, h).
        # Distance to the intersection of three half-planes = max over edges of n . p - c.
        inv = 1.0 / np.sqrt(5.0)  # side edges have normals (+-2, -1)/sqrt(5)
        d_base = dy - h
        d_right = (2.0 * dx - dy - h) * inv
        d_left = (-2.0 * dx - dy - h) * inv
        return np.maximum(d_base, np.maximum(d_right, d_left))
    if shape == "cross":
        # Union of two bars (half-width w = 0.36 h): d = min(d_horizontal_bar, d_vertical_bar)
        w = 0.36 * h
        ax, ay = np.abs(dx), np.abs(dy)
        return np.minimum(np.maximum(ax - h, ay - w), np.maximum(ax - w, ay - h))
    raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")


_GRID_CACHE: dict[tuple[int, int], np.ndarray] = {}
_COLOR_ARRAYS = {name: np.asarray(rgb, dtype=np.float32) for name, rgb in COLORS.items()}


def _pixel_grid(n: int, unit: int) -> np.ndarray:
    """Centers of ``n`` pixels in units of ``unit`` pixels (the canvas's shorter side)."""
    if (n, unit) not in _GRID_CACHE:
        _GRID_CACHE[n, unit] = (np.arange(n, dtype=np.float32) + 0.5) / unit
    return _GRID_CACHE[n, unit]


def render_objects(objects: Sequence[ShapeObject], size: int = 32,
                   background: tuple[int, int, int] = BACKGROUND, width: int | None = None) -> np.ndarray:
    """Render objects into a ``(size, width, 3)`` uint8 array (anti-aliased; ``width=None``: square).

    Centers are fractions of the width and height, sizes fractions of the shorter side ``unit``: distances
    are measured in units of ``unit`` pixels, so a circle stays round on a 32 x 64 canvas."""
    _check_size(size)
    width = size if width is None else width
    _check_size(width)
    unit = min(size, width)
    px, py = _pixel_grid(width, unit)[None, :], _pixel_grid(size, unit)[:, None]  # (1, W), (H, 1)
    ax, ay = width / unit, size / unit   # the canvas in units of its shorter side
    img = np.empty((size, width, 3), dtype=np.float32)
    img[...] = background
    for o in objects:
        h = o.half
        cx, cy = o.cx * ax, o.cy * ay
        # Only the pixels around the box can be covered.
        x0, x1 = max(int((cx - h) * unit) - 1, 0), min(int((cx + h) * unit) + 2, width)
        y0, y1 = max(int((cy - h) * unit) - 1, 0), min(int((cy + h) * unit) + 2, size)
        sd = _signed_distance(o.shape, px[:, x0:x1], py[y0:y1, :], cx, cy, h) * unit  # in pixels
        # coverage = clip(0.5 - d, 0, 1): a one-pixel-wide ramp across the edge
        alpha = np.clip(0.5 - sd, 0.0, 1.0)[..., None]
        patch = img[y0:y1, x0:x1]
        img[y0:y1, x0:x1] = patch + alpha * (_COLOR_ARRAYS[o.color] - patch)
    return np.round(img).astype(np.uint8)


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """``PIL`` RGB image -> ``(3, H, W)`` float tensor in [0, 1]."""
    arr = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


# --------------------------------------------------------------------------------------------
# Sampling scenes
# --------------------------------------------------------------------------------------------
def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size must be an int >= {MIN_IMAGE_SIZE} pixels, got {size!r}")


def _check_names(color: str | None, shape: str | None, size: str | None) -> None:
    if color is not None and color not in COLORS:
        raise ValueError(f"unknown color {color!r}; allowed: {', '.join(COLORS)}")
    if shape is not None and shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    if size is not None and size not in SIZES:
        raise ValueError(f"unknown object size {size!r}; allowed: {', '.join(SIZES)}")


_CENTERS_CACHE: dict[tuple[float, float], tuple[np.ndarray, list[float]]] = {}


def _centers(h: float, extent: float = 1.0) -> tuple[np.ndarray, list[float]]:
    """Candidate center coordinates for an object of half-size ``h`` along an axis ``extent`` short sides long
    (a 25-point grid per short side: 25 points on a square's axis, 49 on a 2:1 canvas's long one)."""
    if (h, extent) not in _CENTERS_CACHE:
        lo, hi = h + MARGIN, extent - h - MARGIN
        xs = lo + np.linspace(0.0, 1.0, int(round(24 * extent)) + 1) * (hi - lo)
        _CENTERS_CACHE[h, extent] = (xs, [round(float(x), 4) for x in xs])
    return _CENTERS_CACHE[h, extent]


def _place(halves: Sequence[float], rng: random.Random, fixed: Sequence[tuple[float, float] | None],
           ax: float = 1.0, ay: float = 1.0):
    """Greedy random placement of boxes on a fine grid of centers; None if it does not fit. Coordinates in units
    of the canvas's shorter side (the canvas is ``ax`` x ``ay`` of them); centers returned as fractions."""
    placed: list[tuple[float, float, float]] = []
    for h, pos in zip(halves, fixed):
        if pos is not None:
            cx, cy = pos[0] * ax, pos[1] * ay
            if not (h + MARGIN - 1e-9 <= cx <= ax - h - MARGIN + 1e-9 and h + MARGIN - 1e-9 <= cy <= ay - h - MARGIN + 1e-9):
                raise ValueError(f"an object centered at {tuple(pos)} with half-size {h} does not fit in the image; "
                                 f"centers must lie in [{(h + MARGIN) / ax:.3f}, {1 - (h + MARGIN) / ax:.3f}] "
                                 f"x [{(h + MARGIN) / ay:.3f}, {1 - (h + MARGIN) / ay:.3f}]")
            if any(max(abs(cx - qx), abs(cy - qy)) < h + qh + MARGIN for qx, qy, qh in placed):
                raise ValueError(f"the object centered at {tuple(pos)} overlaps another one")
            placed.append((cx, cy, h))
            continue
        xs, xs_rounded = _centers(h, ax)
        ys, ys_rounded = (xs, xs_rounded) if ay == ax else _centers(h, ay)
        nx, ny = len(xs), len(ys)
        if not placed:  # every grid point is free
            k = rng.randrange(nx * ny)
            placed.append((xs_rounded[k % nx], ys_rounded[k // nx], h))
            continue
        ok = np.ones((ny, nx), dtype=bool)  # [iy, ix]
        for qx, qy, qh in placed:
            # boxes are disjoint iff they are separated along x or along y (max-norm distance)
            far_x = np.abs(xs - qx) >= h + qh + MARGIN
            far_y = np.abs(ys - qy) >= h + qh + MARGIN
            ok &= far_y[:, None] | far_x[None, :]
        free = np.flatnonzero(ok)
        if free.size == 0:
            return None
        k = int(free[rng.randrange(free.size)])
        placed.append((xs_rounded[k % nx], ys_rounded[k // nx], h))
    if ax == ay == 1.0:
        return [(cx, cy) for cx, cy, _ in placed]
    return [(round(cx / ax, 4), round(cy / ay, 4)) for cx, cy, _ in placed]


def make_scene(seed: int, size: int = 32, n_objects: int | None = None,
               objects: Sequence[dict | tuple] | None = None,
               background: tuple[int, int, int] = BACKGROUND, width: int | None = None) -> Scene:
    """A deterministic Shapes World scene.

    ``seed`` fixes everything (objects, layout, caption wording, questions). ``n_objects`` (1-4)
    fixes the count, otherwise it is drawn uniformly. ``objects`` fixes what is drawn instead:
    each a dict with ``color`` and ``shape`` (and optional ``size``, ``cx``, ``cy``) or a tuple
    ``(color, shape[, size])``; unspecified sizes and positions are sampled from ``seed``.
    ``width``: a ``size`` x ``width`` canvas (height x width; ``None`` or ``size``: the square scene, the same
    one for the same seed); objects keep their pixel proportions and spread over the whole canvas.
    """
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _check_size(size)
    if width is not None:
        _check_size(width)
        if width == size:
            width = None
    unit = size if width is None else min(size, width)
    ax, ay = (1.0, 1.0) if width is None else (width / unit, size / unit)
    rng = random.Random(int(seed))
    if objects is not None:
        specs = [_normalize_spec(o) for o in objects]
        if not 1 <= len(specs) <= MAX_OBJECTS:
            raise ValueError(f"a scene holds 1 to {MAX_OBJECTS} objects, got {len(specs)}")
        if n_objects is not None and n_objects != len(specs):
            raise ValueError(f"n_objects={n_objects} but {len(specs)} objects were given")
    else:
        if n_objects is None:
            n_objects = rng.randint(1, MAX_OBJECTS)
        if not isinstance(n_objects, (int, np.integer)) or not 1 <= n_objects <= MAX_OBJECTS:
            raise ValueError(f"n_objects must be between 1 and {MAX_OBJECTS} (more do not fit at "
                             f"recognizable sizes), got {n_objects!r}")
        specs = [{"color": None, "shape": None, "size": None, "pos": None} for _ in range(n_objects)]

    colors = list(COLORS)
    for _ in range(50):  # retries with fresh sizes when a random layout does not fit
        sizes = [s["size"] or rng.choice(("small", "large")) for s in specs]
        centers = _place([SIZES[s] for s in sizes], rng, [s["pos"] for s in specs], ax, ay)
        if centers is not None:
            break
    else:
        raise ValueError(f"these {len(specs)} objects do not fit in one scene; use fewer or smaller objects")
    objs = []
    for spec, sz, (cx, cy) in zip(specs, sizes, centers):
        color = spec["color"] or rng.choice(colors)
        shape = spec["shape"] or rng.choice(SHAPES)
        objs.append(ShapeObject(shape=shape, color=color, size=sz, cx=cx, cy=cy))
    # Order objects left to right (then top to bottom), as one reads the scene.
    objs.sort(key=lambda o: (o.cx, o.cy))
    return Scene(seed=int(seed), size=int(size), objects=objs, background=background, _rng_seed=int(seed) * 7919 + 17,
                 width=None if width is None else int(width))


def _normalize_spec(o) -> dict:
    if isinstance(o, ShapeObject):
        return {"color": o.color, "shape": o.shape, "size": o.size, "pos": (o.cx, o.cy)}
    if isinstance(o, dict):
        unknown = set(o) - {"color", "shape", "size", "cx", "cy"}
        if unknown:
            raise ValueError(f"unknown object keys {sorted(unknown)}; allowed: color, shape, size, cx, cy")
        color, shape, size = o.get("color"), o.get("shape"), o.get("size")
        pos = (float(o["cx"]), float(o["cy"])) if "cx" in o and "cy" in o else None
        if ("cx" in o) != ("cy" in o):
            raise ValueError("give both cx and cy, or neither")
    elif isinstance(o, (tuple, list)) and 2 <= len(o) <= 3:
        color, shape = o[0], o[1]
        size = o[2] if len(o) == 3 else None
        pos = None
    else:
        raise ValueError(f"an object is a dict(color=, shape=, size=, cx=, cy=) or a tuple (color, shape[, size]); got {o!r}")
    _check_names(color, shape, size)
    return {"color": color, "shape": shape, "size": size, "pos": pos}


# --------------------------------------------------------------------------------------------
# Captions (five per scene, like COCO)
# --------------------------------------------------------------------------------------------
def relation(a: ShapeObject, b: ShapeObject) -> str:
    """Where ``a`` is relative to ``b`` along the axis that separates them most."""
    dx, dy = a.cx - b.cx, a.cy - b.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _np(o: ShapeObject, rng: random.Random, *, size: bool = False, synonym: bool = False, article: str = "a") -> str:
    """A noun phrase: "a red circle", "the big red disk", ..."""
    shape = rng.choice(SHAPE_SYNONYMS[o.shape]) if synonym else o.shape
    words = ([rng.choice(SIZE_SYNONYMS[o.size]) if synonym else o.size] if size else []) + [o.color, shape]
    phrase = " ".join(words)
    if article == "a":
        return f"{_article(phrase)} {phrase}"
    return f"{article} {phrase}" if article else phrase


def _plural(word: str) -> str:
    return word + ("es" if word.endswith(("s", "x")) else "s")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def make_captions(objects: Sequence[ShapeObject], rng: random.Random) -> list[str]:
    """Five distinct captions: an enumeration, a count, a relation, a position and synonyms."""
    n = len(objects)
    noun = rng.choice(OBJECT_NOUNS)
    caps: list[str] = []
    # 1. enumeration, with sizes
    caps.append(_cap(_join([_np(o, rng, size=True) for o in objects])) + ".")
    # 2. counting
    if n == 1:
        caps.append(f"A single {objects[0].color} {objects[0].shape} on a plain background.")
    else:
        by_shape: dict[str, int] = {}
        for o in objects:
            by_shape[o.shape] = by_shape.get(o.shape, 0) + 1
        parts = [f"{NUMBER_WORDS[c]} {_plural(s) if c > 1 else s}" for s, c in by_shape.items()]
        caps.append(f"{_cap(NUMBER_WORDS[n])} {noun} on a plain background: {_join(parts)}.")
    # 3. relative position of a pair (or where the single object sits)
    if n >= 2:
        a, b = rng.sample(list(objects), 2)
        caps.append(f"{_cap(_np(a, rng, article='the'))} is {relation(a, b)} {_np(b, rng, article='the')}.")
    else:
        o = objects[0]
        caps.append(f"There is only one {o.shape} in the picture, and it is {o.color}.")
    # 4. absolute positions
    where = [f"{_np(o, rng)} {'in the center' if o.region == 'center' else 'at the ' + o.region}" for o in objects]
    caps.append(f"{_cap(_join(where))}.")
    # 5. synonyms and a different word order
    syn = [_np(o, rng, size=True, synonym=True) for o in objects]
    caps.append(f"A picture showing {_join(syn)}." if n > 1 else f"An image with {syn[0]}.")
    # The five must differ (they always do by construction; guard against future edits).
    assert len(set(caps)) == 5, caps
    return caps


# --------------------------------------------------------------------------------------------
# Questions and answers
# --------------------------------------------------------------------------------------------
def _refer(o: ShapeObject, objects: Sequence[ShapeObject]) -> str | None:
    """A unique referring expression for ``o`` ("the red circle"), or None if it is ambiguous."""
    same = [p for p in objects if p.color == o.color and p.shape == o.shape]
    if len(same) == 1:
        return f"the {o.color} {o.shape}"
    same_size = [p for p in same if p.size == o.size]
    if len(same_size) == 1:
        return f"the {o.size} {o.color} {o.shape}"
    return None


def make_qa(objects: Sequence[ShapeObject], rng: random.Random) -> list[QA]:
    """Question/answer pairs of every kind the scene supports (answers are single words/phrases)."""
    n = len(objects)
    noun = rng.choice(OBJECT_NOUNS)
    qa = [QA(f"How many {noun} are there?", str(n), "count")]
    # counting by color or by shape (including counts of zero)
    if rng.random() < 0.5:
        c = rng.choice(list(COLORS))
        qa.append(QA(f"How many {c} {noun} are there?", str(sum(o.color == c for o in objects)), "count"))
    else:
        s = rng.choice(SHAPES)
        qa.append(QA(f"How many {_plural(s)} are there?", str(sum(o.shape == s for o in objects)), "count"))
    # color of a shape that appears once; shape of a color that appears once
    for o in objects:
        if sum(p.shape == o.shape for p in objects) == 1:
            qa.append(QA(f"What color is the {o.shape}?", o.color, "color"))
        if sum(p.color == o.color for p in objects) == 1:
            qa.append(QA(f"What shape is the {o.color} object?", o.shape, "shape"))
    # existence: one thing that is there, one that is not
    o = rng.choice(list(objects))
    qa.append(QA(f"Is there {_article(o.color)} {o.color} {o.shape} in the image?", "yes", "existence"))
    present = {(p.color, p.shape) for p in objects}
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    c, s = rng.choice(absent)
    qa.append(QA(f"Is there {_article(c)} {c} {s} in the image?", "no", "existence"))
    # absolute position
    for o in objects:
        ref = _refer(o, objects)
        if ref is not None:
            qa.append(QA(f"Where is {ref} in the image?", o.region, "position"))
    # relative position: ask about a pair both ways, the true relation and its opposite
    if n >= 2:
        pairs = [(a, b) for a in objects for b in objects if a is not b]
        a, b = rng.choice(pairs)
        ra, rb = _refer(a, objects), _refer(b, objects)
        if ra is not None and rb is not None:
            rel = relation(a, b)
            truth = rng.random() < 0.5
            asked = rel if truth else _OPPOSITE[rel]
            qa.append(QA(f"Is {ra} {asked} {rb}?", "yes" if truth else "no", "relation"))
    return qa


_ANSWER_SPACE = {
    "color": list(COLORS),
    "shape": list(SHAPES),
    "count": ["0", "1", "2", "3", "4"],
    "position": [r for row in REGIONS for r in row],
}


def make_multiple_choice(qa: Iterable[QA], rng: random.Random) -> list[QA]:
    """A-D variants of the open questions: the answer plus three distractors, shuffled."""
    out = []
    for item in qa:
        space = _ANSWER_SPACE.get(item.kind)
        if space is None:  # yes/no questions have no four options
            continue
        distractors = rng.sample([a for a in space if a != item.answer], 3)
        options = distractors + [item.answer]
        rng.shuffle(options)
        letter = "ABCD"[options.index(item.answer)]
        out.append(QA(item.question, letter, item.kind, tuple(options)))
    return out


# --------------------------------------------------------------------------------------------
# Splits and torch datasets
# --------------------------------------------------------------------------------------------
def split_seeds(split: str, n: int, start: int = 0) -> range:
    """Seeds ``start .. start + n`` of a split (disjoint ranges: train / val / test)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; allowed: {', '.join(SPLITS)}")
    lo, hi = SPLITS[split]
    if n < 0 or start < 0 or lo + start + n > hi:
        raise ValueError(f"split {split!r} holds {hi - lo} seeds; asked for {n} from offset {start}")
    return range(lo + start, lo + start + n)


def scenes(split: str, n: int, size: int = 32, start: int = 0, **kwargs) -> list[Scene]:
    """``n`` scenes of a split (``kwargs`` go to ``make_scene``, e.g. ``n_objects=1``)."""
    return [make_scene(s, size=size, **kwargs) for s in split_seeds(split, n, start)]


def render_batch(scene_list: Sequence[Scene], size: int | None = None) -> torch.Tensor:
    """Stack scenes into a ``(N, 3, S, S)`` uint8 tensor (``size`` re-renders at another resolution)."""
    arrs = [np.asarray(s.image) if size in (None, s.size) else render_objects(s.objects, size, s.background)
            for s in scene_list]
    return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()


class ShapesCaptionDataset(torch.utils.data.Dataset):
    """(image, caption) pairs for contrastive training (notebook 01).

    Images are rendered once into a uint8 tensor. ``caption="random"`` draws one of the five
    captions each time (torch's RNG, so ``setup(seed)`` makes it reproducible); an int picks one.
    Items: ``(image (3, S, S) float in [0, 1], caption str)``.
    """

    def __init__(self, split: str = "train", n: int = 1000, size: int = 32, start: int = 0,
                 caption: str | int = "random", **scene_kwargs):
        if caption != "random" and caption not in range(5):
            raise ValueError(f"caption must be 'random' or an index 0-4, got {caption!r}")
        self.scenes = scenes(split, n, size, start, **scene_kwargs)
        self.images = render_batch(self.scenes)
        self.caption = caption

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int):
        k = int(torch.randint(5, ())) if self.caption == "random" else self.caption
        return self.images[i].float() / 255.0, self.scenes[i].captions[k]


class ShapesQADataset(torch.utils.data.Dataset):
    """(image, question, answer, kind) items from every scene's QA (notebooks 03, 07).

    ``kinds`` keeps only some question kinds; ``multiple_choice=True`` uses the A-D variants (the
    question then includes the options, the answer is the letter).
    """

    def __init__(self, split: str = "train", n: int = 1000, size: int = 32, start: int = 0,
                 kinds: Iterable[str] | None = None, multiple_choice: bool = False, **scene_kwargs):
        allowed = {"count", "color", "shape", "existence", "position", "relation"}
        kinds = set(kinds) if kinds is not None else allowed
        if not kinds <= allowed:
            raise ValueError(f"unknown question kinds {sorted(kinds - allowed)}; allowed: {sorted(allowed)}")
        self.scenes = scenes(split, n, size, start, **scene_kwargs)
        self.images = render_batch(self.scenes)
        self.items = [(i, q) for i, s in enumerate(self.scenes)
                      for q in (s.multiple_choice if multiple_choice else s.qa) if q.kind in kinds]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        i, q = self.items[k]
        return self.images[i].float() / 255.0, q.prompt, q.answer, q.kind
