"""Train the tiny LLaVA of notebook 03 (course_utils.recipes.llava): stage 1 aligns the projector on captions
(everything else frozen), stage 2 trains projector + language model (and the vision tower's layers) on Shapes
World questions: by default one conversation of up to 6 of a scene's questions per sequence (LLaVA-1.5),
existence yes/no balanced; ``--data single`` draws single questions balanced by type. Prints exact match per type on held-out test scenes, with the image and
without it (text-only baseline), and with ``--out`` saves the model, its processor and training_info.json.

    python scripts/train_llava.py --out data/models/llava-shapes    # the shipped model (defaults below)

Measured here (exact match on 200 held-out test questions per type, scenes of 1-3 objects; batch 48,
20,000 train scenes, stage 1 = 100 projector-only steps on captions, LM lr 1e-3; rows in training_info.json):
  stage 1 only                                          0.000  (answers with captions, as expected)
  1500 steps, tower frozen (LLaVA's recipe)             0.596  color .65 count .79 existence .81 position .22 shape .52
  1500 steps, linear projector, whole tower @ 3e-4      0.554  color .64 count .80 existence .62 position .28 shape .44
  1500 steps, whole tower @ 3e-4                        0.533  color .62 count .76 existence .50 position .33 shape .46
  6000 steps, whole tower @ 1e-3, --oversample shape:2  0.779  color .75 count .84 existence .91 position .71 shape .69
  6000 steps, one question per sequence (the previous   0.786  color .79 count .85 existence .92 position .77 shape .60
    shipped model, --data single)
  1800 steps, conversations with --mc-rate 0.3          0.690  color .65 count .87 existence .88 position .48 shape .58
  3200 steps, conversations, whole tower @ 1e-3         0.789  color .73 count .92 existence .94 position .58 shape .79
  3200 steps, conversations, a random subset of turns   0.824  color .75 count .91 existence .90 position .82 shape .75
  2600 steps, conversations of <= 10 turns              0.802  color .78 count .88 existence .90 position .84 shape .62
  3200 steps, conversations, kinds balanced             0.841  color .82 count .93 existence .93 position .73 shape .81
  4000 steps, the same, torch.compile at 1 thread       0.863  color .87 count .91 existence .94 position .76 shape .84
    (an experiment, not an option: the run-to-run spread of one recipe is ~3 points)
  4000 steps, the same (shipped, the defaults)          0.892  color .92 count .90 existence .94 position .87 shape .85
  text only (the shipped model without the image)       0.223
  shipped, full benchmark (500 per type, 3000 scenes)   0.902  color .93 count .92 existence .95 position .84 shape .86
Conversations (LLaVA-1.5's multi-turn layout: <= 6 questions of one scene, the image in the first turn only)
supervise ~3.5x the answers per step. With multiple-choice turns (--mc-rate 0.3) their long prompts padded
every batch and a step cost ~3x a single question's; without them a step costs ~1.5x (0.49 s vs 0.34 s at
2 threads, both measured beside other work), and the same 30 minutes reach 0.82-0.84 instead of 0.786. Picking the turns round-robin over the
question kinds (--balance-kinds: a scene has fewer colour and shape questions than count and existence ones)
lifts colour and shape (.75 -> .82, .81) and costs position (.82 -> .73); 800 more steps (4000) bring position
back (.87) and every type to >= .84. The held-out curve of the shipped run (every 1000 steps): 0.665, 0.821,
0.888, 0.892. A step takes 0.42 s alone at 2 threads, so the defaults run in about 30 min here (28 min of steps,
plus stage 1 and the measurements); the shipped run took 36.9 min because two other jobs shared the cores for
its first half. Issue 9's target (>= 85 % overall, no type below 70 %) is met.

Notebook 07's course/llava-shapes-mc is the shipped model fine-tuned on conversations that all carry one
multiple-choice turn, in the lecture's naive or explicit prompt style (answers in prose, or ending in
"Final Answer: <letter>"):

    python scripts/train_llava.py --init data/models/llava-shapes --data conversation --mc-rate 1 --max-turns 4 \
        --stage1-steps 0 --stage2-steps 800 --lr 5e-4 --tower-lr 1e-4 --attn eager --eval-every 200 \
        --out data/models/llava-shapes-mc

It follows both formats and keeps the open questions (0.899 overall after the 800 steps, 10.5 min: colour .91,
shape .87, count .91, existence .945, position .86), but picks the letter at chance: with the explicit prompt the
"Final Answer:" letter is right in 0.242 of 240 held-out questions (chance 0.25; it only ever writes A or D)
while the option text it writes before it is right in 0.617 -- it has not learned to look up which letter
stands next to the option it names. Notebook 07 shows and explains it.
"""
import argparse
import functools
import json
import time

import course_utils  # noqa: F401  (sets OMP_WAIT_POLICY and offline mode before torch starts)
import torch

from course_utils.recipes import llava as R
from course_utils.world import shapes


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-scenes", type=int, default=20_000)
    ap.add_argument("--test-scenes", type=int, default=600)
    ap.add_argument("--eval-per-kind", type=int, default=200)
    ap.add_argument("--stage1-steps", type=int, default=100)
    ap.add_argument("--stage1-lr", type=float, default=2e-3)
    ap.add_argument("--stage2-steps", type=int, default=4000)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--tower-lr", type=float, default=3e-4)
    ap.add_argument("--tower-layers", type=int, default=4, help="top vision layers trained in stage 2 (0: frozen; 4: all)")
    ap.add_argument("--batch-size", type=int, default=48)
    ap.add_argument("--projector", choices=("mlp2x_gelu", "linear"), default="mlp2x_gelu",
                    help="LLaVA-1.5's MLP, or LLaVA's linear H_v = W Z_v (two stacked linear maps, no activation)")
    ap.add_argument("--oversample", default="", help="KIND:FACTOR,... draw these question kinds FACTOR times as often "
                    "in stage 2 (e.g. shape:2); empty: all kinds equally")
    ap.add_argument("--data", choices=("conversation", "single"), default="conversation",
                    help="stage 2: one multi-turn conversation per scene (LLaVA-1.5), or one question per sequence")
    ap.add_argument("--max-turns", type=int, default=6, help="questions per conversation (--data conversation)")
    ap.add_argument("--balance-kinds", action=argparse.BooleanOptionalAction, default=True,
                    help="pick a conversation's questions round-robin over the question kinds (colour and shape are "
                    "rarer among a scene's questions); --no-balance-kinds: a random subset")
    ap.add_argument("--mc-rate", type=float, default=0.0, help="share of conversations with a multiple-choice turn "
                    "(naive or explicit prompt, notebook 07)")
    ap.add_argument("--eval-every", type=int, default=0, help="measure on the held-out questions every N steps")
    ap.add_argument("--attn", choices=("eager", "sdpa"), default="eager",
                    help="attention kernel for training (eager: ~20 %% faster for these tiny sequences on a CPU)")
    ap.add_argument("--init", default=None, help="start from a trained course LLaVA (a folder) instead of the "
                    "shipped CLIP + llama-tiny; its vocabulary is carried over to build_tokenizer()'s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, ... (the shipped model was trained on the CPU)")
    ap.add_argument("--out", default=None, help="folder to save_pretrained the model and processor into")
    return ap


def main(argv=None):
    args = parser().parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    log = functools.partial(print, flush=True)
    t0 = time.perf_counter()
    tok = R.build_tokenizer()
    if args.init:
        from transformers import AutoTokenizer, LlavaForConditionalGeneration

        model = R.carry_over(LlavaForConditionalGeneration.from_pretrained(args.init),
                             AutoTokenizer.from_pretrained(args.init), tok)
    else:
        model = R.build_model(tok, projector_hidden_act={"mlp2x_gelu": "gelu", "linear": "linear"}[args.projector])
    model = model.to(args.device)
    train_scenes = R.scenes_1_to_3("train", args.train_scenes)
    images = shapes.render_batch(train_scenes)
    test_scenes = R.scenes_1_to_3("test", args.test_scenes)
    test_images = shapes.render_batch(test_scenes)
    test = R.balanced(R.qa_examples(test_scenes), args.eval_per_kind, seed=1)
    report = {"args": {k: v for k, v in vars(args).items() if k != "out"}, "stages": []}

    mc_test = {style: R.balanced(R.mc_examples(test_scenes, style, kinds=("color", "shape", "count", "position")),
                                 args.eval_per_kind // 2, seed=1) for style in R.MC_PROMPTS}

    def judge(name, blind_too=True):
        minutes = (time.perf_counter() - t0) / 60           # training time, without the measurement
        acc = R.evaluate(model, tok, test_images, test)
        blind = R.evaluate(model, tok, test_images, test, use_image=False) if blind_too else {}
        mc = {style: R.mc_scores(model, tok, test_images, ex) for style, ex in mc_test.items()}
        print(f"[{name}] {minutes:.1f} min | with image: " + " ".join(f"{k} {v:.3f}" for k, v in acc.items())
              + " | text only: " + " ".join(f"{k} {v:.3f}" for k, v in blind.items())
              + " | multiple choice: " + " ".join(f"{s} marker {v['marker']:.3f} letter {v['letter']:.3f}"
                                                  for s, v in mc.items()), flush=True)
        report["stages"].append({"stage": name, "minutes": round(minutes, 2), "accuracy": acc, "text_only": blind,
                                 "multiple_choice": mc})

    if args.stage1_steps:
        R.train(model, tok, images, R.caption_examples(train_scenes, args.seed),
                R.StageConfig(args.stage1_steps, lr=args.stage1_lr, train_lm=False, batch_size=args.batch_size),
                seed=args.seed, log_every=50, log=log)
        judge("stage 1")
    if args.data == "conversation":
        stage2 = R.conversation_examples(train_scenes, args.max_turns, args.mc_rate, seed=args.seed,
                                         balance_kinds=args.balance_kinds)
    else:
        stage2 = R.balanced(R.qa_examples(train_scenes), args.train_scenes, seed=args.seed)
    for item in filter(None, args.oversample.split(",")):
        kind, factor = item.split(":")
        stage2 += [e for e in stage2 if e[3] == kind] * (int(factor) - 1)
    model.set_attn_implementation(args.attn)
    R.train(model, tok, images, stage2,
            R.StageConfig(args.stage2_steps, lr=args.lr, tower_lr=args.tower_lr, tower_layers=args.tower_layers,
                          batch_size=args.batch_size), seed=args.seed + 1, log_every=100, log=log,
            hook=lambda step: judge(f"stage 2, step {step}", blind_too=False), hook_every=args.eval_every)
    model.set_attn_implementation("sdpa")
    judge("stage 2")
    print(json.dumps(report))
    if args.out:
        model.cpu().save_pretrained(args.out)
        R.build_processor(tok).save_pretrained(args.out)
        report["script"] = "scripts/train_llava.py"
        report["parameters"] = sum(p.numel() for p in model.parameters())
        with open(f"{args.out}/training_info.json", "w") as f:
            json.dump(report, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
