"""Recipe: the course's judges -- small CNNs trained on real data that measure generated samples.

- ``DigitsClassifier``: recognises 8x8 digits (notebooks 08-10);
- ``ShapesJudge``: reads a Shapes World image as objects (colour from the palette, shape from a CNN on
  the object's mask, centroid for relations) to measure the text-to-image model (notebooks 11-13).

``DigitsClassifier`` is trained on the training split only (``train_digits_judge``, stage
``classifier`` of ``scripts/train_digits.py``) and shipped as ``data/models/digits-classifier``
(``hub.resolve("course/digits-classifier")``); ``load_digits_judge`` loads it through
``course_utils.io``. It takes images in [-1, 1] (``load_digits(scale="symmetric")``); images in
[0, 1] go through ``x * 2 - 1`` first. The metrics that use it are in ``course_utils.evaluation``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import hub
from ..config import seed_everything
from ..evaluation import class_consistency
from ..io import load_module, save_module
from ..training import cosine_schedule
from ..world import shapes
from ..world.data import load_digits

__all__ = ["DigitsClassifier", "train_digits_judge", "save_digits_judge", "load_digits_judge", "JUDGE_SEED",
           "PALETTE", "palette_labels", "Detection", "ShapesJudge", "train_shapes_judge", "load_shapes_judge",
           "judge_single", "judge_pair"]

JUDGE_SEED = 0


class DigitsClassifier(nn.Module):
    """A small CNN on 8x8 digits in [-1, 1] that judges generated samples (notebook 09)."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.config = dict(width=width, num_classes=num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2))  # (N, 2w, 4, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 16, 128), nn.GELU(),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, 8, 8) in [-1, 1] -> (N, 10) logits
        if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"DigitsClassifier expects (N, 1, 8, 8) images in [-1, 1], got {tuple(x.shape)}")
        return self.head(self.features(x))


def _fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int, *, lr: float,
         augment, batch_size: int = 128) -> nn.Module:
    """Cross-entropy with AdamW (weight decay 1e-4) and a cosine schedule on random batches, each through
    ``augment(batch, generator)``; returns the model in eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = cosine_schedule(opt, steps, warmup=50)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        loss = F.cross_entropy(model(augment(x[idx], g)), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def train_digits_judge(steps: int = 1500, seed: int = JUDGE_SEED, log=print) -> tuple[DigitsClassifier, float]:
    """Train the judge on the training digits (AdamW, cosine schedule, random one-pixel shifts); returns
    (model in eval mode, held-out accuracy on the test digits)."""
    seed_everything(seed)
    x, y = load_digits("train", scale="symmetric")
    xt, yt = load_digits("test", scale="symmetric")
    def shift(xb, g):  # random shifts of up to one pixel (padding with the background value -1)
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        return F.pad(xb, (1, 1, 1, 1), value=-1.0)[:, :, 1 + dy:9 + dy, 1 + dx:9 + dx]

    model = _fit(DigitsClassifier(), x, y, steps, seed, lr=2e-3, augment=shift)
    acc = class_consistency(model, xt, yt)
    log(f"classifier: held-out accuracy {acc:.4f} on {len(xt)} test digits")
    return model, acc


def save_digits_judge(model: DigitsClassifier, folder: str | Path, training: dict | None = None) -> Path:
    """``model.safetensors`` + ``config.json`` (+ ``training.json`` with the recipe's facts)."""
    folder = save_module(model, folder, model.config)
    if training is not None:
        (folder / "training.json").write_text(json.dumps(training, indent=2) + "\n")
    return folder


def load_digits_judge(folder: str | Path | None = None) -> DigitsClassifier:
    """The shipped judge (``hub.resolve("course/digits-classifier")``, or ``folder``), eval mode."""
    folder = hub.resolve("course/digits-classifier", verbose=False) if folder is None else folder
    return load_module(DigitsClassifier, folder, hint="run `python scripts/train_digits.py --only classifier`")


# ============================================================================================
# Shapes World judge (notebooks 11-13)
# ============================================================================================
PALETTE = ("background",) + tuple(shapes.COLORS)  # label 0 = background, 1..6 = the colours
_PALETTE_RGB = torch.tensor([shapes.BACKGROUND] + list(shapes.COLORS.values()), dtype=torch.float32)  # (7, 3)
CONFIDENT = 60.0  # RGB distance under which a pixel surely is a palette colour (edge blends are farther)
MIN_PIXELS = 12   # confident pixels an object needs (a small triangle has ~45)


def palette_labels(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest palette entry per pixel: uint8 or [0, 1] images (N, 3, H, W) -> labels (N, H, W) in
    0..6 (``PALETTE``) and the RGB distance to that entry (N, H, W)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected RGB images (N, 3, H, W), got {tuple(images.shape)}")
    rgb = images.float() * (255.0 if images.is_floating_point() else 1.0)  # (N, 3, H, W) in 0..255
    dist = torch.cdist(rgb.permute(0, 2, 3, 1).reshape(-1, 3), _PALETTE_RGB)  # (N*H*W, 7)
    d, lab = dist.min(dim=1)
    n, _, h, w = images.shape
    return lab.reshape(n, h, w), d.reshape(n, h, w)


@dataclass(frozen=True)
class Detection:
    """One object the judge sees: ``color``, ``shape``, the centre ``(cx, cy)`` of its mask's bounding box in
    [0, 1] (y down; like ``ShapeObject``'s, which a triangle's centroid is not), ``pixels``."""

    color: str
    shape: str
    cx: float
    cy: float
    pixels: int

    def relation_to(self, other: "Detection") -> str:
        """``shapes.relation`` on the box centres ("to the left of", "above", ...)."""
        a, b = (shapes.ShapeObject(d.shape, d.color, "small", d.cx, d.cy) for d in (self, other))
        return shapes.relation(a, b)


class ShapesJudge(nn.Module):
    """A CNN on one object's binary mask (N, 1, 32, 32) -> 4 shape logits (``shapes.SHAPES``); global pooling
    makes it indifferent to where the object is. ``detect`` turns images into ``Detection`` lists."""

    def __init__(self, width: int = 16, image_size: int = 32):
        super().__init__()
        self.config = dict(width=width, image_size=image_size)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1), nn.GELU())  # (N, 4w, 8, 8)
        self.head = nn.Linear(8 * width, len(shapes.SHAPES))

    def forward(self, masks: torch.Tensor) -> torch.Tensor:  # (N, 1, S, S) in {0, 1} -> (N, 4)
        s = self.config["image_size"]
        if masks.ndim != 4 or masks.shape[1:] != (1, s, s):
            raise ValueError(f"ShapesJudge expects masks (N, 1, {s}, {s}), got {tuple(masks.shape)}")
        f = self.features(masks.float())
        return self.head(torch.cat([f.amax(dim=(2, 3)), f.mean(dim=(2, 3))], dim=1))

    @torch.no_grad()
    def detect(self, images: torch.Tensor, min_pixels: int = MIN_PIXELS) -> list[list[Detection]]:
        """Objects per image, largest first: a colour counts when ``min_pixels`` pixels are confidently it;
        every non-background pixel then goes to the nearest detected colour (its mask), whose shape the CNN
        reads. Two objects of one colour merge into one detection (prompts use distinct colours)."""
        labels, dist = palette_labels(images)
        n, h, w = labels.shape
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        out, masks, owners = [], [], []
        for i in range(n):
            confident = torch.bincount(labels[i][dist[i] < CONFIDENT].flatten(), minlength=len(PALETTE))
            found = [c for c in range(1, len(PALETTE)) if confident[c] >= min_pixels]
            dets = []
            if found:
                rgb = images[i].float().reshape(3, -1).T * (255.0 if images.is_floating_point() else 1.0)
                nearest = torch.tensor(found)[torch.cdist(rgb, _PALETTE_RGB[found]).argmin(1)].reshape(h, w)
                fg = labels[i] != 0
                for c in found:
                    m = fg & (nearest == c)
                    if m.sum() == 0:
                        continue
                    # the centre of the bounding box of its confident pixels (edge blends of a neighbour can
                    # look like this colour), as a ShapeObject's (cx, cy) is its box's centre
                    core = m & (dist[i] < CONFIDENT) & (labels[i] == c)
                    core = core if core.any() else m
                    dets.append([PALETTE[c], None, (xs[core].min() + xs[core].max() + 1).item() / (2 * w),
                                 (ys[core].min() + ys[core].max() + 1).item() / (2 * h), int(m.sum())])
                    masks.append(m)
                    owners.append(dets[-1])
            out.append(dets)
        if masks:
            pred = self(torch.stack(masks)[:, None].float()).argmax(1).tolist()
            for det, p in zip(owners, pred):
                det[1] = shapes.SHAPES[p]
        return [sorted((Detection(*d) for d in dets), key=lambda d: -d.pixels) for dets in out]


def _object_masks(scenes: list) -> tuple[torch.Tensor, torch.Tensor]:
    """Masks (M, 1, 32, 32) and shape labels (M,) of every object, cut out of the renders as ``detect`` does."""
    images = shapes.render_batch(scenes)
    labels, _ = palette_labels(images)
    masks, targets = [], []
    for scene, lab in zip(scenes, labels):
        for o in scene.objects:
            masks.append(lab == PALETTE.index(o.color))
            targets.append(shapes.SHAPES.index(o.shape))
    return torch.stack(masks)[:, None].float(), torch.tensor(targets)


def _distinct_colors(n: int, split: str, start: int = 0) -> list:
    """``n`` scenes of 1-2 objects with distinct colours (so each colour mask is one object)."""
    out, seed = [], 0
    for s in shapes.split_seeds(split, 4 * n, start):
        scene = shapes.make_scene(s, n_objects=1 + s % 2)
        if len({o.color for o in scene.objects}) == len(scene.objects):
            out.append(scene)
            if len(out) == n:
                break
    return out


def train_shapes_judge(steps: int = 800, seed: int = JUDGE_SEED, n_train: int = 6000, n_test: int = 1000,
                       log=print) -> tuple[ShapesJudge, dict]:
    """Train the shape CNN on object masks of real renders (train split; masks with 3 % of pixels flipped, so
    slightly ragged generated shapes are in its range). Returns (judge in eval mode, held-out facts: shape
    accuracy on test-split masks and the detection accuracy -- colours and shapes of every object -- on
    test-split images)."""
    seed_everything(seed)
    x, y = _object_masks(_distinct_colors(n_train, "train"))
    test_scenes = _distinct_colors(n_test, "test")
    xt, yt = _object_masks(test_scenes)
    def flip(xb, g):  # 3 % of the mask's pixels flipped
        return torch.where(torch.rand(xb.shape, generator=g) < 0.03, 1 - xb, xb)

    model = _fit(ShapesJudge(), x, y, steps, seed, lr=3e-3, augment=flip)
    with torch.no_grad():
        mask_acc = (model(xt).argmax(1) == yt).float().mean().item()
    dets = model.detect(shapes.render_batch(test_scenes))
    right = [sorted((d.color, d.shape) for d in ds) == sorted((o.color, o.shape) for o in s.objects)
             for ds, s in zip(dets, test_scenes)]
    facts = {"mask_shape_accuracy": round(mask_acc, 4), "scene_accuracy": round(sum(right) / len(right), 4),
             "n_test_scenes": len(test_scenes)}
    log(f"shapes judge: shape accuracy {mask_acc:.4f} on {len(yt)} held-out object masks; every object right "
        f"in {facts['scene_accuracy']:.4f} of {len(test_scenes)} held-out images")
    return model, facts


def load_shapes_judge(folder: str | Path | None = None) -> ShapesJudge:
    """The shipped judge (``hub.resolve("course/shapes-judge")``, or ``folder``), eval mode."""
    folder = hub.resolve("course/shapes-judge", verbose=False) if folder is None else folder
    return load_module(ShapesJudge, folder, config_keys=("width", "image_size"),
                       hint="run `python scripts/train_mmdit.py --only judge`")


def judge_single(dets: list[Detection], color: str, shape: str) -> dict:
    """A one-object prompt judged: the largest object's colour and shape (``False`` when nothing is drawn)."""
    top = dets[0] if dets else None
    c, s = top is not None and top.color == color, top is not None and top.shape == shape
    return {"color": c, "shape": s, "both": c and s}


def judge_pair(dets: list[Detection], a: tuple[str, str], rel: str, b: tuple[str, str]) -> dict:
    """"a <rel> b" judged: both objects present (colour and shape), and the relation between their box centres."""
    by_color = {d.color: d for d in dets}
    da, db = by_color.get(a[0]), by_color.get(b[0])
    present = da is not None and db is not None
    objects = present and da.shape == a[1] and db.shape == b[1]
    return {"colors": present, "objects": objects, "relation": present and da.relation_to(db) == rel,
            "all": objects and da.relation_to(db) == rel}
