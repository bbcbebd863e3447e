"""2-D toy data sets of the diffusion chapter (notebook 08): two moons and a swiss roll.

scikit-learn's ``make_moons`` / ``make_swiss_roll``, standardised so that both have mean 0 and
standard deviation 1 per axis; a seed gives an independent set (train on one, measure on another).
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["TOY_DATA", "toy_data"]

_TOY_STATS = {  # mean and std of each 2-D toy set (from 100,000 points), to standardize them
    "moons": ((0.5, 0.25), (0.87, 0.50)),
    "swiss_roll": ((2.0, 0.21), (6.65, 6.95)),
}
TOY_DATA = tuple(sorted(_TOY_STATS))


def toy_data(name: str, n: int, seed: int, noise: float | None = None) -> torch.Tensor:
    """(n, 2) standardized points from scikit-learn's ``make_moons`` or ``make_swiss_roll`` (x and z axes).

    Different seeds give independent sets: train on one seed, measure on another (notebook 08).
    """
    from sklearn.datasets import make_moons, make_swiss_roll

    if name not in _TOY_STATS:
        raise ValueError(f"unknown toy data {name!r}; choose one of {sorted(_TOY_STATS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if name == "moons":
        X, _ = make_moons(n, noise=0.05 if noise is None else noise, random_state=seed)
    else:
        X, _ = make_swiss_roll(n, noise=0.5 if noise is None else noise, random_state=seed)
        X = X[:, [0, 2]]
    mean, std = (np.asarray(v) for v in _TOY_STATS[name])
    return torch.from_numpy((X - mean) / std).float()
