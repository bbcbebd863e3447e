"""Train course/pixtral-shapes (notebook 06): a tiny Pixtral-style VLM -- ``PixtralVisionModel`` tower trained
from scratch (RoPE-2D, gated FFN, 8-px patches), FFN-GeLU adapter, the course decoder (llama-tiny's weights in a
``mistral`` text model) -- on Shapes World canvases of four aspect ratios (32x32, 32x64, 64x32, 48x48, height x
width), each read at its native size.

Stage 0 trains the encoder alone, from random weights, to name each patch's color, shape and region (its object's
place in the canvas: RoPE-2D alone gives a token only positions relative to the other patches). Stage 2 trains the
adapter and the decoder on the questions with the tower frozen (``--train-tower``: the tower too), the first 300
steps on color questions only. Prints exact match per canvas and question kind on held-out scenes, with the
image, without it (text-only baseline) and with the canvases squashed to 32x32 (the same model fed what a
fixed-resolution encoder sees). ``--squash 32`` trains the same recipe on squashed images, the fair baseline;
``--baseline-into`` stores that run's report in the native model's training_info.json (notebook 06 shows both).
``--out`` saves the model, its processor and training_info.json.

    python scripts/train_pixtral.py --out data/models/pixtral-shapes                         # the shipped model
    python scripts/train_pixtral.py --squash 32 --baseline-into data/models/pixtral-shapes   # its baseline

Measured here (exact match, 100 held-out questions per kind and canvas, scenes of 1-3 objects; each run at 1
thread with 2-3 other jobs on the 2 cores, so these minutes are upper bounds):
  tower trained in stage 2 too, stage 0 without region (800 steps), 5000 steps     0.593 (45.5 min)
  tower frozen, stage 0 without region (1500 steps), 3000 steps                    0.778; position 0.20-0.39
  tower frozen, stage 0 with region, 4000 steps                                    0.911 (17.6 min)
      --squash 32: 0.938 (10.0 min); the native model fed squashed canvases: 0.752
  tower frozen, stage 0 with region, 6000 steps (the defaults, shipped)            0.969 (32.2 min)
      per canvas 32x32 .954  32x64 .972  64x32 .984  48x48 .966; text only 0.243
      the same model fed squashed canvases: 0.816 (32x64 .754, 64x32 .590)
      --squash 32: 0.964 (20.8 min): 32x32 .976  32x64 .942  64x32 .966  48x48 .970
Alone (nothing else on the cores), the documented command took 25.8 min wall (25.5 min to train, then the
measurements and saving) and wrote a model.safetensors bit-identical to the shipped one.
"""
import argparse
import contextlib
import functools
import json
import time
from pathlib import Path

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY and offline mode before torch starts)
import torch

from course_utils.recipes import pixtral as R


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-scenes", type=int, default=20_000)
    ap.add_argument("--test-scenes", type=int, default=1_200, help="held-out scenes (a quarter per canvas)")
    ap.add_argument("--eval-per-kind", type=int, default=100, help="questions per kind and canvas")
    ap.add_argument("--stage0-steps", type=int, default=1500, help="encoder alone: name each patch's color, shape and region "
                    "(0: skip, the VQA loss alone must teach the encoder)")
    ap.add_argument("--stage0-lr", type=float, default=2e-3)
    ap.add_argument("--steps", type=int, default=6000, help="stage 2: adapter and decoder (and the tower with --train-tower), on the questions")
    ap.add_argument("--first", default="color:300", help="KINDS:STEPS, the first stage-2 steps ask only these "
                    "kinds (comma-separated; '' for none)")
    ap.add_argument("--train-tower", action="store_true", help="stage 2 trains the tower too (default: frozen after "
                    "stage 0, only the adapter and the decoder learn)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--squash", type=int, default=0, help="train and test on images squashed to SxS (0: native)")
    ap.add_argument("--eval-every", type=int, default=0, help="measure on the held-out questions every N steps")
    ap.add_argument("--packed", action="store_true", help="train with the tower's packed block-diagonal attention "
                    "(transformers' own path; same numbers, ~2x slower here) instead of per-canvas batches")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is faster than 2 here for this small "
                    "model: stage 0 ran at 5.2 steps/s with 1 thread, 3.5 with 2, the machine otherwise idle)")
    ap.add_argument("--out", default=None, help="folder to save_pretrained the model and processor into")
    ap.add_argument("--baseline-into", default=None, help="with --squash: add this run's report to the native model's "
                    "folder, as 'squashed_baseline' in its training_info.json (the comparison notebook 06 shows)")
    return ap


def add_baseline(folder, report: dict) -> None:
    """Store a ``--squash`` run's report in ``folder``'s ``training_info.json`` (the shipped native model's)."""
    path = Path(folder) / "training_info.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: train the native model first (--out {folder})")
    if not report["args"]["squash"]:
        raise ValueError("--baseline-into stores a squashed baseline: run it with --squash 32")
    info = json.loads(path.read_text())
    info["squashed_baseline"] = report
    path.write_text(json.dumps(info, indent=2) + "\n")


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
    if args.baseline_into and not args.squash:
        raise ValueError("--baseline-into stores a squashed baseline: add --squash 32")
    report = {"args": {k: v for k, v in vars(args).items() if k not in ("out", "baseline_into")}, "evaluations": []}
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
                first_steps=int(first_steps), freeze_tower=not args.train_tower)
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
    if args.baseline_into:
        add_baseline(args.baseline_into, report)


if __name__ == "__main__":
    main()
