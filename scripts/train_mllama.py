"""Train the course's tiny Llama 3.2 Vision (``course/mllama-shapes``, notebook 05) on Shapes World.

A ``MllamaForConditionalGeneration`` whose text layers are the frozen ``course/llama-tiny`` and whose
adapter -- a tiny Mllama vision encoder, the projector and tanh-gated cross-attention layers (gates
at zero at the start) -- learns to answer questions the text alone cannot: the color of a named
shape, whether an object is there, how many objects there are (``course_utils.recipes.mllama``).
Saved with ``save_pretrained`` together with its ``MllamaProcessor`` (image processor + tokenizer), so
``MllamaForConditionalGeneration.from_pretrained(hub.resolve("meta-llama/Llama-3.2-11B-Vision-Instruct"))``
loads it offline. Needs ``data/models/llama-tiny`` (``python scripts/train_llama.py``).

    python scripts/train_mllama.py            # 1,500 steps: ~10 min alone on a shared 2-core CPU (589 s), 853 s next to another run
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

from transformers import AutoTokenizer, LlamaForCausalLM

import course_utils
from course_utils import hub
from course_utils.recipes import mllama as R

OUT = course_utils.DATA_DIR / "models" / "mllama-shapes"
KINDS = ("color", "existence", "count")
# what mattered (measured on 500 test scenes, notebook 05): 4 px patches (64 image tokens instead of 16)
# and one cross-attention layer before every text layer
PATCH_SIZE, EVERY, LR, STEPS = 4, 1, 2e-3, 1500


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--scenes", type=int, default=8000)
    ap.add_argument("--patch-size", type=int, default=PATCH_SIZE)
    ap.add_argument("--every", type=int, default=EVERY)
    ap.add_argument("--lr", type=float, default=LR)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    course_utils.setup(seed=0)
    path = hub.resolve("course/llama-tiny")
    tok = AutoTokenizer.from_pretrained(path)
    llama = LlamaForCausalLM.from_pretrained(path)
    proc = R.build_processor(tok)
    model = R.mllama_from_llama(llama, tok, every=args.every, patch_size=args.patch_size)
    train = R.vqa_data("train", args.scenes, proc, KINDS)
    test = R.vqa_data("test", 500, proc, KINDS)
    print(f"{len(train)} training questions; trainable parameters "
          f"{sum(p.numel() for p in model.parameters() if p.requires_grad):,} of {sum(p.numel() for p in model.parameters()):,}")
    t0 = time.perf_counter()
    hist, gates = R.train_mllama_vqa(model, train, args.steps, lr=args.lr, log_gates_every=100)
    for step, g in gates:
        print(f"step {step:5d}  gates attn {[round(x, 3) for x in g['attn']]}  mlp {[round(x, 3) for x in g['mlp']]}")
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s; last loss {hist.mean(50):.4f}")
    print("test, with image:", {k: round(v, 3) for k, v in R.vqa_accuracy(model, test).items()})
    print("test, text only: ", {k: round(v, 3) for k, v in R.vqa_accuracy(model, test, image=False).items()})
    for p in model.parameters():
        p.requires_grad_(True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(args.out)
    proc.save_pretrained(args.out)
    print(f"saved to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
