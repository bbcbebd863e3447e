"""A tiny LLaVA for Shapes World (notebook 03): build it from the course's CLIP vision tower and tiny Llama,
train it in LLaVA's two stages, judge it by exact match on held-out scenes.

- ``build_tokenizer()``: the word-level vocabulary of ``world.text.shapes_tokenizer`` (same ids, so
  ``course/llama-tiny``'s embeddings carry over) plus ``<image>``, the chat words and the words of the
  notebook-02 instructions; ``CHAT_TEMPLATE`` is LLaVA-1.5's ``USER: <image>\\n... ASSISTANT:`` layout.
- ``build_model(tokenizer)``: a ``transformers.LlavaForConditionalGeneration`` whose vision tower is
  ``course/clip-shapes``' and whose language model is ``course/llama-tiny`` (embeddings resized), with an
  ``mlp2x_gelu`` projector; ``build_processor(tokenizer)`` the matching ``LlavaProcessor``.
- ``qa_examples`` / ``caption_examples`` / ``encode``: training sequences with labels -100 on the image and
  the prompt; ``train`` the loop (stage 1: projector only; stage 2: projector + LM, optionally the top of
  the tower); ``evaluate`` exact match per question type.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

import torch

from .. import clip, hub, llava
from ..world import instruct, shapes
from ..world.text import shapes_tokenizer

IMAGE_TOKEN = llava.DEFAULT_IMAGE_TOKEN
EOS = "<|eot_id|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}USER: {% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{% if message['role'] == 'user' %} {% else %}<|eot_id|> {% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}")
QA_KINDS = ("color", "shape", "count", "existence", "position")


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"\w+|[^\w\s]", t.lower())}


def build_tokenizer(n_instruction_scenes: int = 300):
    """Word-level tokenizer: ``shapes_tokenizer``'s ids first, then ``<image>``, chat words, instruction words."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    base = shapes_tokenizer()
    vocab = dict(sorted(base.get_vocab().items(), key=lambda kv: kv[1]))
    extra = _words(["user: assistant:"] + list(instruct.DETAIL_QUESTIONS) + list(instruct.BRIEF_QUESTIONS))
    scenes = shapes.scenes("train", n_instruction_scenes, start=50_000)
    for kind in llava.RESPONSE_TYPES:
        for rec in instruct.generate_records(scenes, instruct.offline_backend(), kind):
            extra |= _words(t["value"].replace(IMAGE_TOKEN, "") for t in rec["conversations"])
    vocab[IMAGE_TOKEN] = len(vocab)
    for w in sorted(extra):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token=EOS,
                                   pad_token="<|finetune_right_pad_id|>", unk_token="<unk>",
                                   extra_special_tokens={"image_token": IMAGE_TOKEN})
    fast.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    fast.model_max_length = 256
    fast.chat_template = CHAT_TEMPLATE
    if fast.convert_tokens_to_ids(IMAGE_TOKEN) != base.vocab_size or fast.encode(IMAGE_TOKEN) != [vocab[IMAGE_TOKEN]]:
        raise RuntimeError("the <image> token did not get its own id")
    return fast


def build_processor(tokenizer):
    """``LlavaProcessor`` over the course CLIP's image processor (``num_additional_image_tokens=1``: CLS)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    image_processor = CLIPImageProcessor.from_pretrained(hub.resolve("course/clip-shapes"))
    patch = 4
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, projector_hidden_act: str = "gelu"):
    """``LlavaForConditionalGeneration``: course CLIP vision tower + course tiny Llama (vocabulary resized)."""
    from transformers import CLIPModel, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

    clip = CLIPModel.from_pretrained(hub.resolve("course/clip-shapes"))
    lm = LlamaForCausalLM.from_pretrained(hub.resolve("course/llama-tiny"))
    text_config = lm.config
    old_vocab = text_config.vocab_size
    text_config.vocab_size = len(tokenizer)
    config = LlavaConfig(vision_config=clip.config.vision_config, text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                         vision_feature_layer=-2, vision_feature_select_strategy="default",
                         projector_hidden_act=projector_hidden_act,
                         image_seq_length=(clip.config.vision_config.image_size // clip.config.vision_config.patch_size) ** 2)
    config._attn_implementation = "sdpa"
    model = LlavaForConditionalGeneration(config)
    model.model.vision_tower.load_state_dict(clip.vision_model.state_dict(), strict=True)
    sd = lm.state_dict()
    with torch.no_grad():
        for name, new in (("model.embed_tokens.weight", model.model.language_model.embed_tokens.weight),
                          ("lm_head.weight", model.lm_head.weight)):
            old = sd.pop(name)
            new.copy_(old.mean(0, keepdim=True).expand_as(new))   # new words start at the mean embedding
            new[:old_vocab] = old
    missing = model.model.language_model.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()},
                                                         strict=False)
    if set(missing.missing_keys) != {"embed_tokens.weight"} or missing.unexpected_keys:
        raise RuntimeError(f"llama-tiny did not load cleanly: {missing}")
    return model.eval()


# ============================================================================================
# Data
# ============================================================================================
def scenes_1_to_3(split: str, n: int, start: int = 0) -> list[shapes.Scene]:
    """Scenes of 1, 2 and 3 objects in turn (the benchmark's held-out scenes)."""
    return [shapes.make_scene(s, n_objects=1 + k % 3) for k, s in enumerate(shapes.split_seeds(split, n, start))]


def qa_examples(scenes, kinds=QA_KINDS) -> list[tuple[int, str, str, str]]:
    """``(scene index, question, answer, kind)`` for every QA of the given kinds."""
    return [(i, q.question, q.answer, q.kind) for i, s in enumerate(scenes) for q in s.qa if q.kind in kinds]


def caption_examples(scenes, seed: int = 0) -> list[tuple[int, str, str, str]]:
    """Stage 1 (feature alignment): a brief-description instruction and one of the scene's captions."""
    rng = random.Random(seed)
    return [(i, rng.choice(instruct.BRIEF_QUESTIONS), c, "caption") for i, s in enumerate(scenes) for c in s.captions]


def balanced(examples, n_per_kind: int, seed: int = 0):
    """The same number of examples of each kind (sampled without replacement where possible)."""
    rng = random.Random(seed)
    by_kind: dict[str, list] = {}
    for e in examples:
        by_kind.setdefault(e[3], []).append(e)
    out = []
    for kind in sorted(by_kind):
        pool = by_kind[kind]
        out += rng.sample(pool, n_per_kind) if len(pool) >= n_per_kind else [rng.choice(pool) for _ in range(n_per_kind)]
    return out


def prompt_text(question: str) -> str:
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def encode(tokenizer, n_image_tokens: int, question: str, answer: str | None):
    """Token ids (``<image>`` expanded) and the answer mask (the answer and its EOS)."""
    ids = tokenizer.encode(prompt_text(question), add_special_tokens=False)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids = [tokenizer.bos_token_id] + llava.expand_image_tokens(ids, image_id, n_image_tokens)
    if answer is None:
        return ids, [0] * len(ids)
    ans = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
    return ids + ans, [0] * len(ids) + [1] * len(ans)


def collate(tokenizer, n_image_tokens: int, images: torch.Tensor, batch):
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 off the answer), ``pixel_values``."""
    enc = [encode(tokenizer, n_image_tokens, q, a) for _, q, a, _ in batch]
    t = max(len(ids) for ids, _ in enc)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(batch), t), pad, dtype=torch.long)
    answer = torch.zeros((len(batch), t), dtype=torch.long)
    attn = torch.zeros((len(batch), t), dtype=torch.long)
    for k, (ids, mask) in enumerate(enc):
        input_ids[k, :len(ids)], answer[k, :len(ids)], attn[k, :len(ids)] = torch.tensor(ids), torch.tensor(mask), 1
    labels = llava.answer_labels(input_ids, answer, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))
    return {"input_ids": input_ids, "attention_mask": attn, "labels": labels,
            "pixel_values": clip.normalize_images(images[[i for i, *_ in batch]])}


# ============================================================================================
# Training and evaluation
# ============================================================================================
@dataclass
class StageConfig:
    steps: int
    lr: float = 1e-3
    tower_lr: float = 0.0          # 0: frozen tower; > 0: train the top ``tower_layers`` layers
    tower_layers: int = 0
    train_lm: bool = True
    batch_size: int = 64
    warmup: int = 30


def train(model, tokenizer, images, examples, stage: StageConfig, seed: int = 0, log_every: int = 100, log=print):
    """One stage: AdamW over the projector (+ LM, + the top of the tower), cosine LR, labels on answers only."""
    from ..training import cosine_schedule

    torch.manual_seed(seed)
    rng = random.Random(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    groups = [{"params": list(model.model.multi_modal_projector.parameters()), "lr": stage.lr}]
    if stage.train_lm:
        groups.append({"params": list(model.model.language_model.parameters()) + list(model.lm_head.parameters()),
                       "lr": stage.lr})
    if stage.tower_lr > 0 and stage.tower_layers > 0:
        layers = model.model.vision_tower.encoder.layers
        groups.append({"params": [p for layer in layers[-stage.tower_layers:] for p in layer.parameters()],
                       "lr": stage.tower_lr})
    for g in groups:
        for p in g["params"]:
            p.requires_grad_(True)
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    sched = cosine_schedule(opt, stage.steps, stage.warmup)
    n_img = model.config.image_seq_length
    device = model.device
    model.train()
    losses, t0 = [], time.perf_counter()
    for step in range(stage.steps):
        batch = collate(tokenizer, n_img, images, [rng.choice(examples) for _ in range(stage.batch_size)])
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in groups for p in g["params"]], 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % log_every == 0:
            log(f"step {step + 1}/{stage.steps} loss {sum(losses[-log_every:]) / log_every:.4f} "
                f"({time.perf_counter() - t0:.0f} s)")
    model.eval()
    return losses


@torch.no_grad()
def answer(model, tokenizer, images, batch, max_new_tokens: int = 4, use_image: bool = True) -> list[str]:
    """Greedy answers (``max_new_tokens`` words at most); ``use_image=False`` drops the image tokens and the
    pixels (the same model as a text-only baseline)."""
    n_img = model.config.image_seq_length if use_image else 0
    enc = [encode(tokenizer, n_img, q, None)[0] for _, q, _, _ in batch]
    t = max(map(len, enc))
    pad = tokenizer.pad_token_id
    ids = torch.full((len(batch), t), pad, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for k, e in enumerate(enc):                  # left padding for generation
        ids[k, t - len(e):], attn[k, t - len(e):] = torch.tensor(e), 1
    extra = ({"pixel_values": clip.normalize_images(images[[i for i, *_ in batch]]).to(model.device, model.dtype)}
             if use_image else {})
    out = model.generate(input_ids=ids.to(model.device), attention_mask=attn.to(model.device), **extra, max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=pad)
    return [tokenizer.decode(o[t:].cpu(), skip_special_tokens=True).strip() for o in out]


def evaluate(model, tokenizer, images, examples, batch_size: int = 128, use_image: bool = True) -> dict:
    """Exact-match accuracy per question kind and overall (mean over kinds)."""
    hits: dict[str, list[int]] = {}
    for k in range(0, len(examples), batch_size):
        batch = examples[k:k + batch_size]
        for (_, _, gold, kind), pred in zip(batch, answer(model, tokenizer, images, batch, use_image=use_image)):
            hits.setdefault(kind, []).append(int(pred == gold.lower()))
    acc = {kind: sum(h) / len(h) for kind, h in sorted(hits.items())}
    acc["overall"] = sum(acc.values()) / len(acc) if acc else math.nan
    return acc


def ask(model, processor, image, question: str, max_new_tokens: int = 8) -> str:
    """One question about one image, with exactly the calls of ``llava-hf/llava-1.5-7b-hf``'s model card:
    ``apply_chat_template`` -> processor -> ``generate`` -> decode the new tokens."""
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, model.dtype)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
