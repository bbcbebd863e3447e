"""Train the course's tiny Llama 3 (``course/llama-tiny``, notebook 04) on Shapes World text.

A ``LlamaForCausalLM`` with Llama 3's design at toy size (RMSNorm, RoPE theta = 500,000, GQA with
4 query heads sharing 2 key/value heads, SwiGLU, untied head) learns the captions and question/answer
texts of the training seeds. Saved with ``save_pretrained`` (safetensors) together with the word-level
tokenizer, so ``LlamaForCausalLM.from_pretrained(hub.resolve("meta-llama/Llama-3.2-1B"))`` loads it offline.

    python scripts/train_llama.py            # ~5 min on a shared 2-core CPU (1,500 steps)
"""
from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import course_utils
from course_utils import llama as L, shapes

OUT = course_utils.DATA_DIR / "models" / "llama-tiny"


def tiny_llama_config(tokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rope_parameters={"rope_type": "default", "rope_theta": L.LLAMA3_THETA}, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--scenes", type=int, default=4000)
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    course_utils.setup(seed=0)
    tok = L.shapes_tokenizer()
    model = LlamaForCausalLM._from_config(tiny_llama_config(tok), attn_implementation="sdpa")
    texts = L.lm_texts(shapes.scenes("train", args.scenes))
    rng = random.Random(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    sched = course_utils.training.cosine_schedule(opt, args.steps, warmup=50)
    t0 = time.perf_counter()
    model.train()
    for step in range(args.steps):
        loss = model(**L.lm_batch(tok, rng.sample(texts, args.batch))).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    # held-out perplexity on test seeds
    test = L.lm_texts(shapes.scenes("test", 200))
    with torch.no_grad():
        val = model(**L.lm_batch(tok, test)).loss.item()
    print(f"test loss {val:.4f} (perplexity {torch.tensor(val).exp():.2f}) on {len(test)} held-out texts")
    args.out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(args.out)
    tok.save_pretrained(args.out)
    print(f"saved to {args.out} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
