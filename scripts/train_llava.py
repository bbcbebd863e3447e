"""Train the tiny LLaVA of notebook 03 (course_utils.recipes.llava): stage 1 aligns the projector on captions
(everything else frozen), stage 2 trains projector + language model (and optionally the top of the vision
tower) on Shapes World questions, balanced by type. Prints exact match per type on held-out test scenes,
with the image and without it (text-only baseline).

    nice -n 15 python scripts/train_llava.py --stage1-steps 100 --stage2-steps 1600 --tower-layers 4 --tower-lr 1e-3

Measured here (2 cores shared with other jobs, batch 48, 20,000 train scenes of 1-3 objects, mlp2x_gelu,
exact match on 100 held-out test questions per type; stage 1 = 100 projector-only steps on captions):
  stage 1 only                                   0.000 (answers with captions, as expected)
  stage 2, 800 steps, top 2 tower layers @ 3e-4  0.470  color .51 count .72 existence .51 position .19 shape .42
  stage 2, 800 steps, whole tower @ 1e-3         0.476  color .52 count .68 existence .51 position .33 shape .34
  stage 2, 1600 steps, whole tower @ 1e-3        0.582  color .62 count .74 existence .76 position .48 shape .31
  stage 2, 1600 steps, LM 2e-3, tower @ 3e-4     0.562  color .65 count .76 existence .70 position .33 shape .37
  stage 2, 3000 steps, LM 1e-3, tower @ 3e-4     0.734  color .73 count .84 existence .85 position .72 shape .53
  (text only, same model without the image: 0.26-0.31.) Loss still falling (0.31 at 3000 steps, 15.5 min):
  below the 85 % target, so nothing is shipped yet; longer training is the lever measured to help most.
"""
import argparse
import functools
import json
import time

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY and offline mode before torch starts)
import torch

from course_utils.recipes import llava as R
from course_utils.world import shapes


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-scenes", type=int, default=20_000)
    ap.add_argument("--test-scenes", type=int, default=600)
    ap.add_argument("--eval-per-kind", type=int, default=200)
    ap.add_argument("--stage1-steps", type=int, default=200)
    ap.add_argument("--stage1-lr", type=float, default=2e-3)
    ap.add_argument("--stage2-steps", type=int, default=1500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tower-lr", type=float, default=3e-4)
    ap.add_argument("--tower-layers", type=int, default=0, help="top vision layers trained in stage 2 (0: frozen)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (the shipped model was trained on the CPU)")
    ap.add_argument("--out", default=None, help="folder to save_pretrained the model and processor into")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    log = functools.partial(print, flush=True)
    t0 = time.perf_counter()
    tok = R.build_tokenizer()
    model = R.build_model(tok).to(args.device)
    train_scenes = R.scenes_1_to_3("train", args.train_scenes)
    images = shapes.render_batch(train_scenes)
    test_scenes = R.scenes_1_to_3("test", args.test_scenes)
    test_images = shapes.render_batch(test_scenes)
    test = R.balanced(R.qa_examples(test_scenes), args.eval_per_kind, seed=1)
    report = {"args": vars(args), "stages": []}

    def judge(name):
        acc = R.evaluate(model, tok, test_images, test)
        blind = R.evaluate(model, tok, test_images, test, use_image=False)
        minutes = (time.perf_counter() - t0) / 60
        print(f"[{name}] {minutes:.1f} min | with image: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
              + " | text only: " + " ".join(f"{k} {v:.3f}" for k, v in blind.items()), flush=True)
        report["stages"].append({"stage": name, "minutes": round(minutes, 2), "accuracy": acc, "text_only": blind})

    if args.stage1_steps:
        R.train(model, tok, images, R.caption_examples(train_scenes, args.seed),
                R.StageConfig(args.stage1_steps, lr=args.stage1_lr, train_lm=False, batch_size=args.batch_size),
                seed=args.seed, log_every=50, log=log)
        judge("stage 1")
    R.train(model, tok, images, R.balanced(R.qa_examples(train_scenes), args.train_scenes, seed=args.seed),
            R.StageConfig(args.stage2_steps, lr=args.lr, tower_lr=args.tower_lr, tower_layers=args.tower_layers,
                          batch_size=args.batch_size), seed=args.seed + 1, log_every=100, log=log)
    judge("stage 2")
    print(json.dumps(report))
    if args.out:
        model.cpu().save_pretrained(args.out)
        R.build_processor(tok).save_pretrained(args.out)


if __name__ == "__main__":
    main()
