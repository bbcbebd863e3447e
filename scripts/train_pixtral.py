"""Train course/pixtral-shapes (notebook 06): a tiny Pixtral-style VLM -- ``PixtralVisionModel`` tower trained
from scratch (RoPE-2D, gated FFN, 8-px patches), FFN-GeLU adapter, the course decoder (llama-tiny's weights in a
``mistral`` text model) -- on Shapes World canvases of four aspect ratios (32x32, 32x64, 64x32, 48x48, height x
width), each read at its native size. Stage 0 trains the encoder alone to name each patch's color and shape;
stage 2 trains everything on the questions. Prints exact match per canvas and question kind on held-out scenes, with the
image and without it (text-only baseline); ``--squash 32`` trains the same model on the images squashed to 32x32
(what a fixed-resolution encoder sees), the comparison of notebook 06. ``--out`` saves the model, its processor
and training_info.json.

    python scripts/train_pixtral.py --out data/models/pixtral-shapes     # the shipped model (defaults below)
    python scripts/train_pixtral.py --squash 32                          # the squashed baseline

Not shipped yet: below issue 10's target (>= 80 % per canvas, better than squashed). Measured here (exact match,
100 held-out questions per kind and canvas, scenes of 1-3 objects; 2 cores shared with another job):
  no stage 0, no curriculum, 1000 steps       0.34 overall; existence 0.50, position ~0.13 (the answer-prior plateau)
  stage 0 + color:300, 5000 steps (defaults)  0.593  32x32 .56  32x64 .57  64x32 .63  48x48 .61   (45.5 min)
      per kind, 32x64: color .59 count .77 existence .88 position .34 shape .28; text only 0.212
      the same model fed canvases squashed to 32x32: 0.583
  --squash 32, 5000 steps                     0.603  32x32 .59  32x64 .56  64x32 .65  48x48 .62   (28.0 min)
Still rising slowly at 5000 steps (0.560 at 3000, 0.589 at 4500); shape (~0.3) and position are the weak kinds.
"""
import argparse
import contextlib
import functools
import json
import time

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY and offline mode before torch starts)
import torch

from course_utils.recipes import pixtral as R


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-scenes", type=int, default=20_000)
    ap.add_argument("--test-scenes", type=int, default=1_200, help="held-out scenes (a quarter per canvas)")
    ap.add_argument("--eval-per-kind", type=int, default=100, help="questions per kind and canvas")
    ap.add_argument("--stage0-steps", type=int, default=800, help="encoder alone: name each patch's color and shape "
                    "(0: skip, the VQA loss alone must teach the encoder)")
    ap.add_argument("--stage0-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=3000, help="stage 2: every weight, on the questions")
    ap.add_argument("--first", default="color:300", help="KINDS:STEPS, the first stage-2 steps ask only these "
                    "kinds (comma-separated; '' for none)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--squash", type=int, default=0, help="train and test on images squashed to SxS (0: native)")
    ap.add_argument("--eval-every", type=int, default=0, help="measure on the held-out questions every N steps")
    ap.add_argument("--packed", action="store_true", help="train with the tower's packed block-diagonal attention "
                    "(transformers' own path; same numbers, ~2x slower here) instead of per-canvas batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=None, help="folder to save_pretrained the model and processor into")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    log = functools.partial(print, flush=True)
    t0 = time.perf_counter()
    tok = R.build_tokenizer()
    model = R.build_model(tok, seed=args.seed)
    train = R.ShapesData(R.aspect_scenes("train", args.train_scenes), squash_side=args.squash)
    test_scenes = R.aspect_scenes("test", args.test_scenes, objects="1-3")
    test = R.ShapesData(test_scenes, squash_side=args.squash)
    report = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "evaluations": []}
    grouped = contextlib.nullcontext if args.packed else R.grouped_vision_attention

    def judge(name, final=False):
        minutes = (time.perf_counter() - t0) / 60           # training time, without the measurement
        row = {"stage": name, "minutes": round(minutes, 2)}
        with (contextlib.nullcontext() if final else grouped(model)):   # the final one on the library's own path
            row["accuracy"] = R.evaluate(model, tok, test, args.eval_per_kind)
            if final:
                row["text_only"] = R.evaluate(model, tok, test, args.eval_per_kind, use_image=False)
                if not args.squash:   # the native model shown squashed canvases it never trained on
                    row["fed_squashed"] = R.evaluate(model, tok, R.ShapesData(test_scenes, squash_side=32),
                                                     args.eval_per_kind)
        for key in ("accuracy", "text_only", "fed_squashed"):
            if key in row:
                log(f"[{name}] {minutes:.1f} min | {key}: overall {row[key]['overall']:.3f} | " + " | ".join(
                    f"{c} " + " ".join(f"{k} {v:.2f}" for k, v in r.items()) for c, r in row[key].items()
                    if c != "overall"))
        report["evaluations"].append(row)

    if args.stage0_steps:
        R.pretrain_tower(model, train, args.stage0_steps, lr=args.stage0_lr, seed=args.seed, log=log)
    with grouped(model):
        kinds, first_steps = args.first.split(":") if args.first else ("", "0")
        R.train(model, tok, train, args.steps, lr=args.lr, batch_size=args.batch_size, seed=args.seed + 1,
                log=log, hook=judge, hook_every=args.eval_every, first_kinds=tuple(filter(None, kinds.split(","))),
                first_steps=int(first_steps))
    report["train_minutes"] = round((time.perf_counter() - t0) / 60, 2)
    judge(f"step {args.steps}", final=True)
    if args.out:
        model.generation_config.eos_token_id = tok.eos_token_id
        model.generation_config.pad_token_id = tok.pad_token_id
        model.save_pretrained(args.out)
        R.build_processor(tok).save_pretrained(args.out)
        report["script"] = "scripts/train_pixtral.py"
        report["parameters"] = sum(p.numel() for p in model.parameters())
        with open(f"{args.out}/training_info.json", "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
