"""Real data shipped with the course (introduced in notebook 00).

- ``load_image(name)``: the photographs in ``data/images/`` (see its LICENSE.md), for the pretrained
  pipelines and Pixtral's variable-resolution patching;
- ``load_digits(split)``: scikit-learn's 1,797 hand-written 8x8 digits as tensors, with a fixed
  stratified train/test split, for the VAE, DiT and rectified-flow chapters.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
from PIL import Image

from ..config import DATA_DIR

IMAGES_DIR = DATA_DIR / "images"


def list_images() -> list[str]:
    """Names accepted by ``load_image`` (file stems in ``data/images/``)."""
    return sorted(p.stem for p in IMAGES_DIR.glob("*.jpg"))


def load_image(name: str, size: int | tuple[int, int] | None = None) -> Image.Image:
    """Load a shipped photograph as an RGB ``PIL.Image``; ``size`` resizes (int = longest side)."""
    names = list_images()
    if name not in names:
        raise ValueError(f"unknown image {name!r}; available: {', '.join(names)}")
    img = Image.open(IMAGES_DIR / f"{name}.jpg").convert("RGB")
    if size is not None:
        if isinstance(size, int):
            if size < 1:
                raise ValueError(f"size must be positive, got {size}")
            scale = size / max(img.size)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.BICUBIC)
    return img


@lru_cache(maxsize=1)
def _digits_arrays():
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    return d.images.astype(np.float32) / 16.0, d.target.astype(np.int64)


def digits_split_indices(test_fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, fixed split of the 1,797 digits: (train_indices, test_indices)."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    _, y = _digits_arrays()
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in range(10):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        n_test = int(round(len(idx) * test_fraction))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_digits(split: str = "all", *, test_fraction: float = 0.2, seed: int = 0,
                scale: str = "unit") -> tuple[torch.Tensor, torch.Tensor]:
    """Hand-written digits as tensors: images ``(N, 1, 8, 8)`` float32 and labels ``(N,)`` int64.

    ``split``: "all", "train" or "test" (stratified, fixed by ``seed``; the test part is never
    trained on). ``scale``: "unit" gives pixels in [0, 1], "symmetric" in [-1, 1] (diffusion models).
    """
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if scale not in ("unit", "symmetric"):
        raise ValueError(f"scale must be 'unit' or 'symmetric', got {scale!r}")
    x, y = _digits_arrays()
    if split != "all":
        train, test = digits_split_indices(test_fraction, seed)
        idx = train if split == "train" else test
        x, y = x[idx], y[idx]
    images = torch.from_numpy(x.copy()).unsqueeze(1)
    if scale == "symmetric":
        images = images * 2.0 - 1.0
    return images, torch.from_numpy(y.copy())
