"""Evaluation: metrics that compare generated samples with real data (notebooks 08-10).

Pure torch, no model inside: a judge (a classifier) is passed in. The digits judge itself and how it
was trained are ``course_utils.recipes.judges``.

- ``energy_distance``: a distance between two sample sets (notebooks 08 and 10);
- ``class_consistency``: how often a judge recognises the class a sample was generated for (09, 10);
- ``within_class_distance`` / ``diversity_ratio``: how varied the samples of one class are, as a
  fraction of the real data's (09, 10): 1 = as diverse as the data, 0 = one blurry image per class.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = ["energy_distance", "class_consistency", "within_class_distance", "diversity_ratio"]


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between two sample sets (V-statistic) (notebook 08).

    Zero iff the empirical distributions coincide; in 1-D it equals ``scipy.stats.energy_distance(x, y) ** 2``.
    """
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).to(x.device).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    # 2 E|X - Y| - E|X - X'| - E|Y - Y'|
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


@torch.no_grad()
def class_consistency(classifier: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      labels: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``images`` that ``classifier`` (images -> logits) assigns to the class in ``labels``."""
    if len(images) != len(labels):
        raise ValueError(f"got {len(images)} images but {len(labels)} labels")
    pred = torch.cat([classifier(b).argmax(-1) for b in images.split(batch_size)])
    return float((pred == labels.to(pred.device)).float().mean())


def within_class_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise L2 distance between images of the same class."""
    flat, labels = images.flatten(1).double(), labels.to(images.device)
    dists = []
    for c in labels.unique():
        xc = flat[labels == c]
        if len(xc) < 2:
            continue
        d = torch.cdist(xc, xc)
        # the diagonal is zero: sum / (n (n - 1)) is the mean over distinct pairs
        dists.append(d.sum() / (len(xc) * (len(xc) - 1)))
    if not dists:
        raise ValueError("need at least two images of some class to measure diversity")
    return float(torch.stack(dists).mean())


def diversity_ratio(samples: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor) -> float:
    """Within-class mean pairwise distance of ``samples`` as a fraction of the real data's (1 = as diverse;
    blurry class means give 0)."""
    return within_class_distance(samples, labels) / within_class_distance(real, real_labels)
