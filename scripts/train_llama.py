"""Train the course's tiny Llama 3 (``course/llama-tiny``, notebook 04) on Shapes World text.

A ``LlamaForCausalLM`` with Llama 3's design at toy size (RMSNorm, RoPE theta = 500,000, GQA with
4 query heads sharing 2 key/value heads, SwiGLU, untied head) learns the captions and question/answer
texts of the training seeds (``course_utils.recipes.llama``). Saved with ``save_pretrained`` (safetensors)
together with the word-level tokenizer, so ``LlamaForCausalLM.from_pretrained(hub.resolve("meta-llama/Llama-3.2-1B"))``
loads it offline.

    python scripts/train_llama.py            # ~5 min on a shared 2-core CPU (1,500 steps)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from transformers import LlamaForCausalLM

import course_utils
from course_utils import shapes
from course_utils.recipes import llama as R
from course_utils.world.text import shapes_tokenizer

OUT = course_utils.DATA_DIR / "models" / "llama-tiny"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    course_utils.setup(seed=0)
    tok = shapes_tokenizer()
    model = LlamaForCausalLM._from_config(R.tiny_llama_config(tok), attn_implementation="sdpa")
    texts = R.lm_texts(shapes.scenes("train", args.scenes))
    t0 = time.perf_counter()
    R.train_llama_lm(model, tok, texts, args.steps, batch_size=args.batch)
    model.eval()
    # held-out perplexity on test seeds
    test = R.lm_texts(shapes.scenes("test", 200))
    with torch.no_grad():
        val = model(**R.lm_batch(tok, test)).loss.item()
    print(f"test loss {val:.4f} (perplexity {torch.tensor(val).exp():.2f}) on {len(test)} held-out texts")
    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"saved to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
