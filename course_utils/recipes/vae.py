"""Recipe: the digits VAE of notebook 08 and the score model in its latent space (latent diffusion).

``build_vae_digits`` is what ``scripts/train_vae.py`` runs: it trains ``diffusion.VAE`` on the
training digits with a beta-weighted ELBO, sets its ``scaling_factor`` to 1 / std of the training
latents (the role of ``AutoencoderKL.config.scaling_factor``), trains a ``ScoreMLP`` on the scaled
latents (VP SDE) and writes ``data/models/vae-digits/`` (``hub.resolve("course/vae-digits")``).
``load_vae`` / ``save_vae`` go through ``course_utils.io`` (safetensors + ``config.json``).
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..diffusion import VAE, VPSDE, elbo_loss, encode_latents
from ..io import load_module, save_module
from ..training import History, cosine_schedule, train_loop
from ..world.data import load_digits
from .score import save_score_model, train_score_model

__all__ = ["LATENT_DIM", "HIDDEN", "BETA", "VAE_STEPS", "SCORE_STEPS", "SCORE_HIDDEN", "train_vae", "save_vae",
           "load_vae", "build_vae_digits"]

LATENT_DIM = 8
HIDDEN = 128
BETA = 0.1  # KL weight; beta = 1 is the plain ELBO (Stable Diffusion's autoencoder uses ~1e-6)
VAE_STEPS = 4000
SCORE_STEPS = 4000
SCORE_HIDDEN = 128
_VAE_KEYS = ("latent_dim", "hidden", "image_size", "scaling_factor")


def train_vae(x_train: torch.Tensor, steps: int = VAE_STEPS, seed: int = 0, latent_dim: int = LATENT_DIM,
              hidden: int = HIDDEN, beta: float = BETA, batch_size: int = 128, lr: float = 2e-3) -> tuple[VAE, History]:
    """Train a ``VAE`` with ``elbo_loss``; returns (vae with its scaling_factor set, History)."""
    torch.manual_seed(seed)
    vae = VAE(latent_dim=latent_dim, hidden=hidden).to(x_train.device)
    g = torch.Generator().manual_seed(seed)

    class Batches:
        def __iter__(self):
            while True:
                yield x_train[torch.randint(0, len(x_train), (batch_size,), generator=g).to(x_train.device)]

    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    hist = train_loop(vae, Batches(), lambda m, x: elbo_loss(m, x, beta=beta, generator=g), opt, steps,
                      scheduler=cosine_schedule(opt, steps, warmup=100), desc="VAE")
    with torch.no_grad():
        mean, _ = vae.encode(x_train)
    # scaling_factor = 1 / std(latents): diffusion then sees unit-variance data, as with AutoencoderKL
    vae.config["scaling_factor"] = round(1.0 / mean.std().item(), 5)
    return vae, hist


def save_vae(vae: VAE, folder: str | Path, **extra) -> Path:
    """``model.safetensors`` + ``config.json`` (the constructor's arguments and ``extra`` facts, e.g. ``training``)."""
    return save_module(vae, folder, {**vae.config, **extra})


def load_vae(folder: str | Path) -> VAE:
    """The VAE saved by ``save_vae`` (``hub.resolve("course/vae-digits")``), in eval mode."""
    return load_module(VAE, folder, config_keys=_VAE_KEYS, hint="build it with `python scripts/train_vae.py`")


def build_vae_digits(out: str | Path, vae_steps: int = VAE_STEPS, score_steps: int = SCORE_STEPS,
                     log=print) -> dict:
    """Train the digits VAE and its latent score model and write both to ``out`` (fixed seeds: the shipped
    ``data/models/vae-digits`` is what the defaults give). Returns the facts written to ``config.json``."""
    out = Path(out)
    x_train, _ = load_digits("train")
    x_test, _ = load_digits("test")
    t0 = time.perf_counter()
    vae, _ = train_vae(x_train, vae_steps)
    t_vae = time.perf_counter() - t0
    with torch.no_grad():
        g = torch.Generator().manual_seed(123)
        neg_elbo, parts = elbo_loss(vae, x_test, beta=1.0, generator=g)  # the true ELBO on held-out digits
    latents = encode_latents(vae, x_train)
    t0 = time.perf_counter()
    score_model, _ = train_score_model(latents, VPSDE(), steps=score_steps, hidden=SCORE_HIDDEN, desc="latent score")
    t_score = time.perf_counter() - t0
    info = {"beta": BETA, "vae_steps": vae_steps, "score_steps": score_steps, "sde": "VPSDE(0.1, 20)",
            "test_neg_elbo": round(neg_elbo.item(), 3), "test_recon": round(parts["recon"], 3),
            "test_kl": round(parts["kl"], 3)}
    save_vae(vae, out, training=info)
    save_score_model(score_model, out)
    size = sum(p.stat().st_size for p in out.iterdir())
    log(f"VAE {t_vae:.1f} s, latent score model {t_score:.1f} s; wrote {out} ({size / 1024:.0f} KiB)")
    return info
