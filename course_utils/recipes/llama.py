"""Recipes for the course's tiny Llama 3 (notebook 04, ``scripts/train_llama.py``): its config, the
Shapes World language-modelling texts and batches, the training loop that made ``course/llama-tiny``,
and ``hub_parity``: the notebook's real-model check (course ``Llama`` == ``LlamaForCausalLM``).
"""
from __future__ import annotations

import random
import time

import torch

from ..bridges.transformers_llama import llama_from_hf
from ..llama import IGNORE_INDEX, LLAMA3_THETA, count_parameters, generate_greedy

# Prompts of the offline check (the course model speaks Shapes World) and of the online one.
COURSE_PROMPTS = ("is there a red circle in the image ?", "what color is the", "a small")
HUB_PROMPTS = ("The Llama 3 herd of models is", "Rotary position embeddings")


def tiny_llama_config(tokenizer):
    """The ``LlamaConfig`` of ``course/llama-tiny``: Llama 3's design at toy size (GQA 4/2, untied head)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       rope_parameters={"rope_type": "default", "rope_theta": LLAMA3_THETA}, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)


def lm_texts(scene_list, answers_only: bool = False) -> list[str]:
    """Training texts from scenes: the five captions and every ``question answer`` pair."""
    out = []
    for s in scene_list:
        if not answers_only:
            out.extend(s.captions)
        out.extend(f"{q.question} {q.answer}" for q in s.qa)
    return out


def lm_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """``<|begin_of_text|> text <|eot_id|>`` padded right; labels are the ids with padding ignored."""
    enc = tokenizer([tokenizer.bos_token + t + tokenizer.eos_token for t in texts], padding=True,
                    return_tensors="pt", add_special_tokens=False)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def train_llama_lm(model, tokenizer, texts: list[str], steps: int, batch_size: int = 64, lr: float = 3e-3,
                   seed: int = 0, log_every: int = 100) -> list[float]:
    """Next-token training on ``texts`` (random batches of ``batch_size``, AdamW, cosine schedule with 50
    warm-up steps, gradient clipping at 1): how ``course/llama-tiny`` was made. Returns the losses."""
    from ..training import cosine_schedule

    rng = random.Random(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = cosine_schedule(opt, steps, warmup=50)
    t0, losses = time.perf_counter(), []
    model.train()
    for step in range(steps):
        loss = model(**lm_batch(tokenizer, rng.sample(texts, batch_size))).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    return losses


def load_pretrained(model_or_path, model_class, preprocessor_class, preprocessor=None, *, device=None, dtype=None):
    """``(model, preprocessor)`` for a real-model cell: a hub id / folder loaded with the library's own
    ``from_pretrained`` (``dtype`` or float32), or an already loaded model with its ``preprocessor``
    (tokenizer / processor); the model goes to ``device`` in ``dtype``, in eval mode."""
    if isinstance(model_or_path, str):
        preprocessor = preprocessor_class.from_pretrained(model_or_path)
        model = model_class.from_pretrained(model_or_path, dtype=dtype or torch.float32)
    elif preprocessor is None:
        raise ValueError(f"pass the {preprocessor_class.__name__.removeprefix('Auto').lower()} with a loaded model "
                         "(or pass a hub id / folder instead)")
    else:
        model = model_or_path
    return model.to(device=device, dtype=dtype).eval(), preprocessor


@torch.no_grad()
def hub_parity(model_or_path, prompts=None, *, tokenizer=None, device=None, dtype=None, max_new_tokens: int = 10,
               long_len: int | None = None, seed: int = 0) -> dict:
    """Notebook 04's real-model check: a ``LlamaForCausalLM`` (a hub id / folder, loaded here on ``device`` in
    ``dtype``, or a loaded model with its ``tokenizer``) against the course ``Llama`` built from its config
    by the bridge, with its weights.

    Compares the logits on the first prompt and at the last 64 of ``long_len`` random tokens (default: as
    many as the model's original context, capped at ``max_position_embeddings``: positions where Llama
    3.1's RoPE scaling matters), then greedy generation on every prompt (the course prompts for the course model,
    ``HUB_PROMPTS`` otherwise). Returns the models, the parameter counts, ``rel_diff`` = max |logit
    difference| / max |logit| and the generations ``(prompt, text, same_tokens)``.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    from .. import hub

    course = isinstance(model_or_path, str) and hub.is_course_path(model_or_path)
    model, tokenizer = load_pretrained(model_or_path, LlamaForCausalLM, AutoTokenizer, tokenizer,
                                       device=device, dtype=dtype)
    ours = llama_from_hf(model)
    c = model.config
    tied = bool(getattr(c, "tie_word_embeddings", False))
    n_formula = count_parameters(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                                 c.num_key_value_heads, c.vocab_size, tied_embeddings=tied)
    prompts = list(prompts or (COURSE_PROMPTS if course else HUB_PROMPTS))

    def encode(p):  # the course tokenizer adds no special tokens: <|begin_of_text|> by hand
        text = tokenizer.bos_token + p if course else p
        return tokenizer(text, add_special_tokens=not course, return_tensors="pt").input_ids.to(model.device)

    if long_len is None:
        rope = getattr(c, "rope_parameters", None) or {}
        long_len = min(c.max_position_embeddings, rope.get("original_max_position_embeddings", c.max_position_embeddings))
    gen = torch.Generator().manual_seed(seed)
    checks = [encode(prompts[0])]
    if long_len:
        checks.append(torch.randint(0, c.vocab_size, (1, long_len), generator=gen).to(model.device))
    diff = scale = 0.0
    for ids in checks:  # the last 64 positions' logits (a real vocabulary x 8K positions would not fit a small GPU)
        keep = min(64, ids.shape[1])
        ref = model(ids, logits_to_keep=keep).logits.float()
        mine = ours.lm_head(ours.hidden_states(ids)[:, -keep:]).float()
        diff = max(diff, (mine - ref).abs().max().item())
        scale = max(scale, ref.abs().max().item())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    generations = []
    for p in prompts:
        ids = encode(p)
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                             do_sample=False, pad_token_id=pad)
        new = out[0, ids.shape[1]:]
        mine = generate_greedy(ours, ids, len(new), eos_token_id=tokenizer.eos_token_id)[0, ids.shape[1]:]
        generations.append((p, tokenizer.decode(new, skip_special_tokens=True), torch.equal(mine, new)))
    return {"model": model, "tokenizer": tokenizer, "ours": ours, "course_model": course,
            "n_params": sum(p.numel() for p in model.parameters()), "n_formula": n_formula,
            "rel_diff": diff / scale, "long_len": long_len, "generations": generations}
