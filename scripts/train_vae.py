"""Train the notebook-08 VAE on the digits and a score model in its latent space (latent diffusion).

Writes ``data/models/vae-digits/`` (``course_utils.hub.resolve("course/vae-digits")``):
- ``model.safetensors`` + ``config.json``: ``course_utils.diffusion.VAE`` (encoder Q(z|X), Bernoulli
  decoder), trained on the training split of ``load_digits`` with a beta-weighted ELBO; its
  ``scaling_factor`` = 1 / std of the training latents (the role of ``AutoencoderKL``'s);
- ``latent_score.safetensors`` + ``latent_score.json``: a ``ScoreMLP`` trained with denoising score
  matching (VP SDE) on the scaled latent means of the training digits.

Fixed seeds; reproduces the shipped files. Usage: ``python scripts/train_vae.py [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
import torch

from course_utils import diffusion as D
from course_utils.data import load_digits
from course_utils.hub import MODELS_DIR
from course_utils.training import cosine_schedule, train_loop

LATENT_DIM = 8
HIDDEN = 128
BETA = 0.1  # KL weight; beta = 1 is the plain ELBO (Stable Diffusion's autoencoder uses ~1e-6)
VAE_STEPS = 4000
SCORE_STEPS = 4000
SCORE_HIDDEN = 128


def train_vae(x_train: torch.Tensor, steps: int = VAE_STEPS, seed: int = 0, latent_dim: int = LATENT_DIM,
              hidden: int = HIDDEN, beta: float = BETA, batch_size: int = 128, lr: float = 2e-3):
    """Train a ``VAE`` with ``elbo_loss``; returns (vae with its scaling_factor set, History)."""
    torch.manual_seed(seed)
    vae = D.VAE(latent_dim=latent_dim, hidden=hidden)
    g = torch.Generator().manual_seed(seed)

    class Batches:
        def __iter__(self):
            while True:
                yield x_train[torch.randint(0, len(x_train), (batch_size,), generator=g)]

    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    hist = train_loop(vae, Batches(), lambda m, x: D.elbo_loss(m, x, beta=beta, generator=g), opt, steps,
                      scheduler=cosine_schedule(opt, steps, warmup=100), desc="VAE")
    with torch.no_grad():
        mean, _ = vae.encode(x_train)
    # scaling_factor = 1 / std(latents): diffusion then sees unit-variance data, as with AutoencoderKL
    vae.config["scaling_factor"] = round(1.0 / mean.std().item(), 5)
    return vae, hist


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=MODELS_DIR / "vae-digits")
    ap.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    ap.add_argument("--score-steps", type=int, default=SCORE_STEPS)
    args = ap.parse_args(argv)

    x_train, _ = load_digits("train")
    x_test, _ = load_digits("test")
    t0 = time.perf_counter()
    vae, hist = train_vae(x_train, args.vae_steps)
    t_vae = time.perf_counter() - t0
    with torch.no_grad():
        g = torch.Generator().manual_seed(123)
        neg_elbo, parts = D.elbo_loss(vae, x_test, beta=1.0, generator=g)  # the true ELBO on held-out digits
    latents = D.encode_latents(vae, x_train)
    t0 = time.perf_counter()
    score_model, shist = D.train_score_model(latents, D.VPSDE(), steps=args.score_steps, hidden=SCORE_HIDDEN,
                                             desc="latent score")
    t_score = time.perf_counter() - t0
    info = {"beta": BETA, "vae_steps": args.vae_steps, "score_steps": args.score_steps, "sde": "VPSDE(0.1, 20)",
            "test_neg_elbo": round(neg_elbo.item(), 3), "test_recon": round(parts["recon"], 3),
            "test_kl": round(parts["kl"], 3)}
    vae.save_pretrained(args.out, training=info)
    D.save_score_model(score_model, args.out)
    size = sum(p.stat().st_size for p in args.out.iterdir())
    print(json.dumps(info, indent=2))
    print(f"VAE {t_vae:.1f} s, latent score model {t_score:.1f} s; wrote {args.out} ({size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
