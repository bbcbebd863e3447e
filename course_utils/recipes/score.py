"""Recipe: train, save and load a score model (``diffusion.ScoreMLP``) with denoising score matching.

Notebook 08 trains one on the 2-D toys (``train_score_model``); ``scripts/train_vae.py`` (through
``recipes.vae``) trains one on the digits VAE's latents and ships it beside the VAE as
``latent_score.safetensors`` + ``latent_score.json`` (``save_score_model`` / ``load_score_model``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..diffusion import SDE, ScoreMLP, dsm_loss
from ..io import load_module, save_module
from ..training import History, cosine_schedule, train_loop

__all__ = ["train_score_model", "save_score_model", "load_score_model", "SCORE_FILE"]

SCORE_FILE = "latent_score"  # the file name of the latent score model beside the VAE


def train_score_model(data: torch.Tensor, sde: SDE, steps: int = 2000, batch_size: int = 256, lr: float = 2e-3,
                      seed: int = 0, model: ScoreMLP | None = None, desc: str = "score matching",
                      **model_kwargs) -> tuple[ScoreMLP, History]:
    """Train a ``ScoreMLP`` with ``dsm_loss`` on an (N, dim) tensor; returns (model, History) (notebook 08).

    Batches are drawn with replacement by a generator seeded with ``seed`` (on the CPU, then moved to
    the data's device), so a run is reproducible; the model follows ``data``'s device and dtype.
    """
    if data.ndim != 2:
        raise ValueError(f"data must be (N, dim), got {tuple(data.shape)}")
    torch.manual_seed(seed)
    model = model or ScoreMLP(dim=data.shape[1], **model_kwargs)
    model.to(device=data.device, dtype=data.dtype)
    g = torch.Generator().manual_seed(seed)

    class Batches:  # train_loop cycles an iterable; an endless one is enough
        def __iter__(self):
            while True:
                yield data[torch.randint(0, data.shape[0], (batch_size,), generator=g).to(data.device)]

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = train_loop(model, Batches(), lambda m, x: dsm_loss(m, sde, x, generator=g), opt, steps,
                      scheduler=cosine_schedule(opt, steps, warmup=min(100, steps // 10)), desc=desc)
    return model, hist


def save_score_model(model: ScoreMLP, folder: str | Path, filename: str = SCORE_FILE) -> Path:
    """``<filename>.safetensors`` + ``<filename>.json`` (the constructor's arguments) in ``folder``."""
    return save_module(model, folder, model.config, name=filename, config_file=f"{filename}.json")


def load_score_model(folder: str | Path, filename: str = SCORE_FILE) -> ScoreMLP:
    """The ``ScoreMLP`` saved by ``save_score_model`` (eval mode)."""
    return load_module(ScoreMLP, folder, name=filename, config_file=f"{filename}.json",
                       hint="build it with `python scripts/train_vae.py`")
