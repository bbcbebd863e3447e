"""Train the course's text-to-image model (notebooks 11-12) and its judge; save them under data/models/.

Stages (``--only`` picks some; default: both):
- ``judge``:    ``recipes.judges.ShapesJudge``, a small CNN that reads an object's shape off its colour mask,
                trained on train-split renders -> data/models/shapes-judge (safetensors + config.json);
- ``pipeline``: ``recipes.sd3_shapes.build_sd3_shapes``: a tiny ``AutoencoderKL`` (32 x 32 x 3 <-> 16 x 16 x 4)
                trained on Shapes World renders, then an ``SD3Transformer2DModel`` trained with rectified
                flow on its latents, conditioned by the course CLIP's text tower in both CLIP slots ->
                data/models/sd3-shapes (``StableDiffusion3Pipeline.save_pretrained``), measured by the judge
                (held-out two-object prompts) into ``training.json``.

Only train-split scenes are used for training; the judge is measured on test-split renders. Fixed seeds: it
reproduces the shipped files. Usage: ``python scripts/train_mmdit.py [--only judge] [--out-dir DIR]``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY before torch starts)
from course_utils.hub import MODELS_DIR
from course_utils.io import save_module
from course_utils.recipes import judges, sd3_shapes

STAGES = ("judge", "pipeline")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--out-dir", type=Path, default=MODELS_DIR, help="where the model folders go (default data/models)")
    ap.add_argument("--vae-steps", type=int, default=sd3_shapes.VAE_STEPS)
    ap.add_argument("--mmdit-steps", type=int, default=sd3_shapes.MMDIT_STEPS)
    args = ap.parse_args(argv)
    if "judge" in args.only:
        judge, facts = judges.train_shapes_judge()
        save_module(judge, args.out_dir / "shapes-judge", {**judge.config, "training": facts})
    if "pipeline" in args.only:
        out = args.out_dir / "sd3-shapes"
        facts = sd3_shapes.build_sd3_shapes(out, vae_steps=args.vae_steps, mmdit_steps=args.mmdit_steps)
        judge = judges.load_shapes_judge(args.out_dir / "shapes-judge")
        res = sd3_shapes.evaluate(sd3_shapes.load_pipeline(str(out)), judge)
        facts["measured"] = {k: res[k] for k in ("steps", "guidance_scale", "n_single", "n_pairs", "single", "pairs")}
        (out / "training.json").write_text(json.dumps(facts, indent=2) + "\n")
        print(json.dumps(facts, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
