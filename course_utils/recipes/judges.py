"""Recipe: the course's one digits judge, a small CNN that recognises 8x8 digits (notebooks 08-10).

``DigitsClassifier`` is trained on the training split only (``train_digits_judge``, stage
``classifier`` of ``scripts/train_digits.py``) and shipped as ``data/models/digits-classifier``
(``hub.resolve("course/digits-classifier")``); ``load_digits_judge`` loads it through
``course_utils.io``. It takes images in [-1, 1] (``load_digits(scale="symmetric")``); images in
[0, 1] go through ``x * 2 - 1`` first. The metrics that use it are in ``course_utils.evaluation``.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .. import hub
from ..config import seed_everything
from ..evaluation import class_consistency
from ..io import load_module, save_module
from ..training import cosine_schedule
from ..world.data import load_digits

__all__ = ["DigitsClassifier", "train_digits_judge", "save_digits_judge", "load_digits_judge", "JUDGE_SEED"]

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


def train_digits_judge(steps: int = 1500, seed: int = JUDGE_SEED, log=print) -> tuple[DigitsClassifier, float]:
    """Train the judge on the training digits (AdamW, cosine schedule, random one-pixel shifts); returns
    (model in eval mode, held-out accuracy on the test digits)."""
    seed_everything(seed)
    x, y = load_digits("train", scale="symmetric")
    xt, yt = load_digits("test", scale="symmetric")
    model = DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = cosine_schedule(opt, steps, warmup=50)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        xb = x[idx]
        # augmentation: random shifts of up to one pixel (padding with the background value -1)
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        xb = F.pad(xb, (1, 1, 1, 1), value=-1.0)[:, :, 1 + dy:9 + dy, 1 + dx:9 + dx]
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
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
