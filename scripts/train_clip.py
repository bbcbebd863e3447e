"""Train the course CLIP on Shapes World and save it to data/models/clip-shapes (notebook 01).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_clip.py            # the shipped checkpoint
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_clip.py --steps 50 --out /tmp/clip-test

A thin wrapper around ``course_utils.recipes.clip.train`` (the recipe, its defaults in
``TrainConfig``): a transformers ``CLIPModel`` (ViT on 32 px images with 4x4 patches, width 64,
4 layers + a 2-layer text transformer, sdpa attention) with CLIP's real BPE restricted to the
course's words, trained with ``course_utils.clip.clip_loss_multi_positive`` on (image, caption)
pairs of training-split scenes, 64 single-object scenes per batch of 256 together with their "shape
twins", 30 % partial descriptions ("a circle.", "a red shape."), 500 steps; fixed seeds, so running
it again reproduces the checkpoint (up to CPU-kernel nondeterminism). Measured here: 378 s of
training, 469 s in all on 2 cores shared with other jobs (load ~4). Prints the zero-shot accuracies
on held-out test scenes at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import course_utils  # noqa: E402,F401  (sets OMP_WAIT_POLICY before torch starts)
from course_utils.recipes import clip as course_clip  # noqa: E402

HELP = {
    "n_scenes": "training scenes (seeds 0..n-1 of the train split)",
    "single_fraction": "share of single-object training scenes",
    "twin_pairs": "per batch, this many single-object scenes together with their shape twins",
    "partial_prob": "probability of replacing a caption by a partial description (text augmentation)",
}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "models" / "clip-shapes")
    for f in dataclasses.fields(course_clip.TrainConfig):
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default,
                        help=HELP.get(f.name))
    args = vars(ap.parse_args(argv))
    out = args.pop("out")
    course_clip.train(course_clip.TrainConfig(**args), out, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
