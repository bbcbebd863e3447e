"""Figures used across the notebooks (introduced in notebook 00): image grids with captions,
boxes drawn over a scene, heatmaps for similarity / attention / mask matrices, training curves.

Figures are read on a projector in class: no text is drawn below ``MIN_FONTSIZE`` points (a smaller
``fontsize`` argument is raised to it), and the default labels are in Spanish, like the notebooks.
"""
from __future__ import annotations

import textwrap
from typing import Sequence

import numpy as np
import torch
from PIL import Image


MIN_FONTSIZE = 12  # points; at the notebooks' 80 dpi, text stays legible in a 1280x720 projection

# The course's figure style (``course_utils.setup()`` applies it): read on a projector at 1280x720,
# so ticks and legends are never below MIN_FONTSIZE, titles and labels a little larger.
STYLE = {
    "figure.figsize": (6.0, 4.0),
    "figure.dpi": 80,
    "savefig.dpi": 100,
    "axes.grid": False,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "font.size": 13,
    "axes.titlesize": 14,
    "axes.labelsize": 13,
    "xtick.labelsize": MIN_FONTSIZE,
    "ytick.labelsize": MIN_FONTSIZE,
    "legend.fontsize": MIN_FONTSIZE,
    "legend.title_fontsize": MIN_FONTSIZE,
    "figure.titlesize": 14,
    "lines.linewidth": 2.0,
    "axes.formatter.use_locale": False,
    "image.interpolation": "nearest",  # small images: show the pixels as they are
}


def apply_style() -> None:
    """Set matplotlib's defaults to the course's projector style (``setup()`` calls this)."""
    try:
        import matplotlib as mpl
    except ImportError:  # plotting is optional for scripts
        return
    mpl.rcParams.update(STYLE)


def fmt_int(n: int) -> str:
    """An integer as the course writes it in prose and prints, which a Spanish reader cannot misread
    (unlike "16,384" or "16.384"): groups of three digits separated by a narrow no-break space (U+202F),
    four-digit numbers left whole, as the RAE and the SI write them: ``fmt_int(8192) == "8192"``,
    ``fmt_int(16384) == "16\u202f384"``. Decimals keep Python's point (``0.63``)."""
    n = int(n)
    return str(n) if abs(n) < 10_000 else f"{n:,}".replace(",", "\u202f")


def _fs(size: float) -> float:
    """A font size no smaller than ``MIN_FONTSIZE``."""
    return max(float(size), MIN_FONTSIZE)


def _plt():
    import matplotlib.pyplot as plt

    return plt


def to_numpy_image(img) -> np.ndarray:
    """PIL image, ``(3, H, W)``/``(1, H, W)``/``(H, W)`` tensor or array -> ``(H, W[, 3])`` array for imshow."""
    if isinstance(img, Image.Image):
        return np.asarray(img)
    if isinstance(img, torch.Tensor):
        img = img.detach().float().cpu().numpy()
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[-1] not in (1, 3):
        img = np.transpose(img, (1, 2, 0))
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img


def show_images(images: Sequence, captions: Sequence[str] | None = None, ncols: int = 8,
                size: float = 1.6, cmap: str | None = None, suptitle: str | None = None, fontsize: int = MIN_FONTSIZE):
    """A grid of images with optional captions underneath; returns the figure."""
    plt = _plt()
    fontsize = _fs(fontsize)
    images = list(images)
    if not images:
        raise ValueError("show_images needs at least one image")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"got {len(images)} images but {len(captions)} captions")
    ncols = min(ncols, len(images))
    nrows = (len(images) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * (1.25 if captions else 1)),
                             squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k >= len(images):
            continue
        arr = to_numpy_image(images[k])
        ax.imshow(arr, cmap=cmap or ("gray" if arr.ndim == 2 else None))
        if captions is not None:
            # wrap long captions to the panel's width (about 14 characters per inch at 8 pt)
            width = max(6, int(size * 14 * 8 / fontsize))
            ax.set_title(textwrap.fill(str(captions[k]), width), fontsize=fontsize)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def draw_boxes(image, boxes: Sequence[Sequence[float]], labels: Sequence[str] | None = None, ax=None,
               color: str = "black", fontsize: int = MIN_FONTSIZE):
    """Draw normalized ``[x1, y1, x2, y2]`` boxes (LLaVA's format) over an image; returns the axes."""
    plt = _plt()
    arr = to_numpy_image(image)
    h, w = arr.shape[:2]
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(arr)
    ax.axis("off")
    for k, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"a box is [x1, y1, x2, y2], got {box!r}")
        x1, y1, x2, y2 = box
        # imshow puts pixel centers at integers: the image spans [-0.5, w - 0.5]
        ax.add_patch(plt.Rectangle((x1 * w - 0.5, y1 * h - 0.5), (x2 - x1) * w, (y2 - y1) * h,
                                   fill=False, edgecolor=color, linewidth=1.5))
        if labels is not None:
            ax.text(x1 * w - 0.5, y1 * h - 0.5, labels[k], fontsize=_fs(fontsize), color="white", va="bottom",
                    bbox={"facecolor": color, "alpha": 0.7, "pad": 1, "linewidth": 0})
    return ax


def show_scene(scene, size: int | None = 224, ax=None, captions: bool = True):
    """A Shapes World scene with its boxes drawn and (optionally) its captions as the title."""
    img = scene.image if size in (None, scene.size) else scene.render(size)
    ax = draw_boxes(img, [o.box for o in scene.objects], [o.label for o in scene.objects], ax=ax)
    if captions:
        ax.set_title("\n".join(scene.captions), fontsize=MIN_FONTSIZE, loc="left")
    return ax


def plot_heatmap(matrix, xlabels: Sequence[str] | None = None, ylabels: Sequence[str] | None = None,
                 ax=None, title: str | None = None, cmap: str = "viridis", annotate: bool = False,
                 vmin: float | None = None, vmax: float | None = None, colorbar: bool = True, fmt: str = ".2f"):
    """A matrix as a heatmap (similarities, attention weights, attention masks); returns the axes."""
    plt = _plt()
    m = matrix.detach().float().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix, dtype=float)
    if m.ndim != 2:
        raise ValueError(f"plot_heatmap needs a 2-D matrix, got shape {m.shape}")
    if ax is None:
        _, ax = plt.subplots(figsize=(0.35 * m.shape[1] + 2.5, 0.35 * m.shape[0] + 1.5))
    im = ax.imshow(m, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    if xlabels is not None:
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=60, ha="right", fontsize=MIN_FONTSIZE)
    if ylabels is not None:
        ax.set_yticks(range(len(ylabels)), ylabels, fontsize=MIN_FONTSIZE)
    if annotate:
        mid = (np.nanmax(m) + np.nanmin(m)) / 2
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, format(m[i, j], fmt), ha="center", va="center", fontsize=MIN_FONTSIZE,
                        color="black" if m[i, j] > mid else "white")
    if title:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    return ax


def plot_curves(curves: dict[str, Sequence[float]], xlabel: str = "paso", ylabel: str = "pérdida", ax=None,
                title: str | None = None, logy: bool = False, smooth: int = 1):
    """Training curves (``{name: values}``), optionally smoothed with a moving average."""
    plt = _plt()
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3))
    for name, values in curves.items():
        v = np.asarray(values, dtype=float)
        if smooth > 1 and len(v) >= smooth:
            v = np.convolve(v, np.ones(smooth) / smooth, mode="valid")
        ax.plot(v, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if logy:
        ax.set_yscale("log")
    if title:
        ax.set_title(title)
    if len(curves) > 1:
        ax.legend()
    return ax
