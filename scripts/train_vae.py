"""Train the notebook-08 VAE on the digits and a score model in its latent space (latent diffusion).

Writes ``data/models/vae-digits/`` (``course_utils.hub.resolve("course/vae-digits")``):
- ``model.safetensors`` + ``config.json``: ``course_utils.diffusion.VAE`` (encoder Q(z|X), Bernoulli
  decoder), trained on the training split of ``load_digits`` with a beta-weighted ELBO; its
  ``scaling_factor`` = 1 / std of the training latents (the role of ``AutoencoderKL``'s);
- ``latent_score.safetensors`` + ``latent_score.json``: a ``ScoreMLP`` trained with denoising score
  matching (VP SDE) on the scaled latent means of the training digits.

The recipe is ``course_utils.recipes.vae.build_vae_digits``; fixed seeds, it reproduces the shipped
files. Usage: ``python scripts/train_vae.py [--out DIR]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
from course_utils.hub import MODELS_DIR
from course_utils.recipes.vae import SCORE_STEPS, VAE_STEPS, build_vae_digits


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", type=Path, default=MODELS_DIR / "vae-digits")
    ap.add_argument("--vae-steps", type=int, default=VAE_STEPS)
    ap.add_argument("--score-steps", type=int, default=SCORE_STEPS)
    args = ap.parse_args(argv)
    info = build_vae_digits(args.out, args.vae_steps, args.score_steps)
    print(json.dumps(info, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
