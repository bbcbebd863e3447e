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
- ``ask(model, processor, image, question)``: the calls of ``llava-hf/llava-1.5-7b-hf``'s model card
  (``check_question`` rejects a missing image, an empty question or a hand-written ``<image>``);
  ``load_llava(path)`` loads the course model or the hub one; ``hub_shaped_model`` + ``tiny_processor``
  build a tiny random model with llava-1.5's structure (``<image>`` = 32000, ``<pad>`` = 32001) so the
  same calls run offline in the tests.
"""
from __future__ import annotations

import math
import random
import re
import time
from dataclasses import dataclass

import torch

from .. import clip, evaluation, hub, llava
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
    extra = _words(["user: assistant: options: the correct answer is: final answer:"] + list(MC_PROMPTS.values())
                   + list(instruct.DETAIL_QUESTIONS) + list(instruct.BRIEF_QUESTIONS))
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
    text_config._name_or_path = "course/llama-tiny"   # not this machine's folder (it is saved with the model)
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


def carry_over(model, old_tokenizer, tokenizer):
    """A trained course LLaVA on a larger vocabulary: ``tokenizer`` (a newer ``build_tokenizer()``) gets the rows of
    ``old_tokenizer``'s words in the input embeddings and ``lm_head``; its new words start at the mean embedding."""
    old_vocab, new_vocab = old_tokenizer.get_vocab(), tokenizer.get_vocab()
    if not set(old_vocab) <= set(new_vocab):
        raise ValueError("the new tokenizer must keep every word of the old one (build it with build_tokenizer())")
    with torch.no_grad():
        old_in, old_out = model.get_input_embeddings().weight.clone(), model.lm_head.weight.clone()
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        new_in, new_out = model.get_input_embeddings().weight, model.lm_head.weight
        new_in.copy_(old_in.mean(0, keepdim=True).expand_as(new_in))
        new_out.copy_(old_out.mean(0, keepdim=True).expand_as(new_out))
        for word, i in old_vocab.items():
            new_in[new_vocab[word]], new_out[new_vocab[word]] = old_in[i], old_out[i]
    model.config.image_token_index = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    return model


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


# The lecture's two evaluation prompts (Pixtral's report): VLMEvalKit's naive one, and the explicit one that asks
# for a parseable "Final Answer:" line. The tiny LLaVA learns both (notebook 07 scores them).
MC_PROMPTS = {
    "naive": "Please select the correct answer from the options above.",
    "explicit": ("Answer in this format:\nFinal Answer: <answer>\nwhere <answer> is:\n- The single correct letter "
                 "choice A, B, C, D, E, F, etc. when options are provided.\nOnly include the letter."),
}


def mc_prompt(qa: shapes.QA, style: str) -> str:
    """A multiple-choice question (``scene.multiple_choice``) in the lecture's layout: question, ``Options:``, the
    lettered options, then the naive or the explicit instruction."""
    if style not in MC_PROMPTS:
        raise ValueError(f"unknown prompt style {style!r}; allowed: {', '.join(MC_PROMPTS)}")
    if qa.options is None:
        raise ValueError("expected a multiple-choice QA (from scene.multiple_choice), got an open question")
    options = [f"{letter}. {option}" for letter, option in zip("ABCD", qa.options)]
    return "\n".join([qa.question, "Options:", *options, MC_PROMPTS[style]])


def mc_response(qa: shapes.QA, style: str, rng: random.Random) -> str:
    """The training answer: to the naive prompt, the correct option in prose with no marker (as GPT-4o's
    "...the correct answer is: D. Both are pests of potato"); to the explicit one, the option then
    ``Final Answer: <letter>``."""
    option = qa.options["ABCD".index(qa.answer)]
    if style == "naive":
        return rng.choice([f"The correct answer is: {qa.answer}. {option}", f"{qa.answer}. {option}"])
    return f"{option}. Final Answer: {qa.answer}"


def mc_examples(scenes, style: str, kinds=QA_KINDS) -> list[tuple[int, str, str, str]]:
    """``(scene index, prompt, gold letter, kind)`` for every multiple-choice QA of the given kinds."""
    return [(i, mc_prompt(q, style), q.answer, q.kind) for i, s in enumerate(scenes) for q in s.multiple_choice
            if q.kind in kinds]


def conversation_examples(scenes, max_turns: int = 6, mc_rate: float = 0.3, kinds=QA_KINDS, seed: int = 0,
                          balance_kinds: bool = False):
    """Stage-2 data as LLaVA-1.5 trains it: one multi-turn conversation per scene, the image in the first turn
    only. Its open questions of ``kinds`` (shuffled, existence yes/no kept balanced, at most ``max_turns``), and
    with probability ``mc_rate`` a multiple-choice turn in the naive or the explicit style. ``balance_kinds``:
    pick the turns round-robin over the kinds (a scene has fewer colour and shape questions than count and
    existence ones) instead of a random subset. Items: ``(scene index, questions tuple, answers tuple,
    "conversation")`` for ``collate``."""
    rng = random.Random(seed)
    out = []
    for i, scene in enumerate(scenes):
        if balance_kinds:
            by_kind = {}
            for q in scene.qa:
                if q.kind in kinds:
                    by_kind.setdefault(q.kind, []).append((q.question, q.answer))
            for pool in by_kind.values():
                rng.shuffle(pool)
            order = sorted(by_kind)
            rng.shuffle(order)
            turns = []
            while len(turns) < max_turns and any(by_kind.values()):
                turns += [by_kind[k].pop() for k in order if by_kind[k]][:max_turns - len(turns)]
            rng.shuffle(turns)
        else:
            turns = [(q.question, q.answer) for q in scene.qa if q.kind in kinds]
            rng.shuffle(turns)
            turns = turns[:max_turns]
        if mc_rate and rng.random() < mc_rate and scene.multiple_choice:
            qa, style = rng.choice(scene.multiple_choice), rng.choice(sorted(MC_PROMPTS))
            turns.insert(rng.randrange(len(turns) + 1), (mc_prompt(qa, style), mc_response(qa, style, rng)))
        out.append((i, tuple(q for q, _ in turns), tuple(a for _, a in turns), "conversation"))
    return out


def prompt_text(question: str) -> str:
    return f"USER: {IMAGE_TOKEN}\n{question} ASSISTANT:"


def encode(tokenizer, n_image_tokens: int, question, answer):
    """Token ids (``<image>`` expanded) and the answer mask (each answer and its EOS).

    ``question``/``answer``: one turn (strings; ``answer=None`` for a generation prompt), or a conversation
    (tuples of the same length): ``USER: <image>\\n q1 ASSISTANT: a1<eot> USER: q2 ASSISTANT: a2<eot> ...``, the
    layout ``CHAT_TEMPLATE`` writes, the image in the first turn only (LLaVA-1.5's multi-turn training)."""
    turns = [(question, answer)] if isinstance(question, str) else list(zip(question, answer, strict=True))
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    ids, mask = [tokenizer.bos_token_id], [0]
    for k, (q, a) in enumerate(turns):
        prompt = tokenizer.encode(prompt_text(q) if k == 0 else f"USER: {q} ASSISTANT:", add_special_tokens=False)
        if k == 0:
            prompt = llava.expand_image_tokens(prompt, image_id, n_image_tokens)
        ids, mask = ids + prompt, mask + [0] * len(prompt)
        if a is None:
            break
        ans = tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids, mask = ids + ans, mask + [1] * len(ans)
    return ids, mask


def collate(tokenizer, n_image_tokens: int, images: torch.Tensor, batch, cache: dict | None = None):
    """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 off the answer), ``pixel_values``.
    ``cache``: a dict that keeps each (question, answer)'s encoding (training draws the same ones many times)."""
    cache = {} if cache is None else cache
    enc = [cache[q, a] if (q, a) in cache else cache.setdefault((q, a), encode(tokenizer, n_image_tokens, q, a))
           for _, q, a, _ in batch]     # (q, a): strings for one turn, tuples for a conversation
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


def train(model, tokenizer, images, examples, stage: StageConfig, seed: int = 0, log_every: int = 100, log=print,
          hook=None, hook_every: int = 0):
    """One stage: AdamW over the projector (+ LM, + the top of the tower), cosine LR, labels on answers only.
    ``hook(step)`` runs every ``hook_every`` steps in eval mode (a held-out measurement during training)."""
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
    losses, t0, cache = [], time.perf_counter(), {}
    for step in range(stage.steps):
        batch = collate(tokenizer, n_img, images, [rng.choice(examples) for _ in range(stage.batch_size)], cache)
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
        if hook is not None and hook_every and (step + 1) % hook_every == 0 and step + 1 < stage.steps:
            model.eval()
            hook(step + 1)
            model.train()
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


def mc_options(prompt: str) -> list[str]:
    """The option texts of an ``mc_prompt``, in order (its ``A. ...`` lines)."""
    return [line[3:] for line in prompt.splitlines() if re.match(r"[A-D]\. ", line)]


def mc_scores(model, tokenizer, images, examples, batch_size: int = 128) -> dict:
    """Multiple-choice answers (``mc_examples``) scored with notebook 07's metrics: ``marker`` = exact match of the
    ``Final Answer:`` line (``parse_final_answer``; 0 without the marker), ``letter`` = exact match of what
    ``flexible_parse`` reads (the marker, else a lone letter, else the option's text)."""
    marker = letter = 0.0
    for k in range(0, len(examples), batch_size):
        batch = examples[k:k + batch_size]
        for (_, prompt, gold, _), pred in zip(batch, answer(model, tokenizer, images, batch, max_new_tokens=16)):
            marker += evaluation.exact_match(evaluation.parse_final_answer(pred), gold)
            letter += evaluation.exact_match(evaluation.flexible_parse(pred, mc_options(prompt)), gold)
    return {"marker": marker / len(examples), "letter": letter / len(examples)}


def check_question(question, image) -> str:
    """The chat's input rules: one image, and a question as text (the chat template places ``<image>``)."""
    if image is None:
        raise ValueError("LLaVA answers about an image: pass a PIL image (a Shapes World scene's .image, a photo)")
    if not isinstance(question, str) or not question.strip():
        raise ValueError(f"the question must be a non-empty string, got {question!r}")
    if IMAGE_TOKEN in question:
        raise ValueError(f"do not write {IMAGE_TOKEN} in the question: the chat template puts it (once) before "
                         "the text, and the processor expands it into the image's tokens")
    return question.strip()


@torch.no_grad()
def ask(model, processor, image, question: str, max_new_tokens: int = 8) -> str:
    """One question about one image, with exactly the calls of ``llava-hf/llava-1.5-7b-hf``'s model card:
    ``apply_chat_template`` -> processor -> ``generate`` -> decode the new tokens."""
    question = check_question(question, image)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    inputs = processor(images=image, text=prompt, return_tensors="pt").to(model.device, model.dtype)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.decode(out[0][inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


# ============================================================================================
# The real pipeline: llava-hf/llava-1.5-7b-hf, and a tiny random model with its structure
# ============================================================================================
HUB_ID = "llava-hf/llava-1.5-7b-hf"


def load_llava(path: str, device=None, dtype=None):
    """``(model, processor)``: ``LlavaForConditionalGeneration`` + ``AutoProcessor`` from ``path`` (a hub id such
    as ``HUB_ID``, or a folder such as ``course/llava-shapes``'), on ``device`` in ``dtype`` (float16 or bfloat16
    on a GPU for the 7B: ~14 GB)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32)
    return model.to(device or "cpu").eval(), processor


def read_hub_config(config) -> dict:
    """A hub-shaped config as a dict: a path to a JSON file or a dict; keys starting with ``_`` (notes) dropped."""
    import json
    from pathlib import Path

    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("model_type") != "llava":
        raise ValueError("expected a LLaVA config (model_type 'llava'), as llava-hf/llava-1.5-7b-hf's config.json")
    if config.get("vision_config", {}).get("model_type") != "clip_vision_model":
        raise ValueError("LLaVA-1.5's vision_config is a CLIP vision tower (model_type 'clip_vision_model')")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def hub_shaped_model(config, seed: int = 0):
    """A tiny **random** ``LlavaForConditionalGeneration`` with llava-1.5-7b-hf's structure (same classes, image
    and pad ids, vocabulary size, feature layer and strategy, activations; sizes shrunk). Its answers mean
    nothing: it runs the online calls offline and checks shapes and token layouts."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    return LlavaForConditionalGeneration._from_config(LlavaConfig.from_dict(read_hub_config(config)),
                                                      attn_implementation="sdpa").eval()


def tiny_processor(config, words=("what", "color", "is", "the", "circle", "?", "describe", "image", ".")):
    """A ``LlavaProcessor`` for ``hub_shaped_model``: ``CLIPImageProcessor`` at the config's image size (OpenAI
    CLIP mean/std, resize + center crop as CLIP ViT-L/14-336's) and a word-level tokenizer with Llama's
    ``<unk>``/``<s>``/``</s>`` = 0/1/2, ``<image>`` at ``image_token_index`` and ``<pad>`` at ``pad_token_id``
    (32000 / 32001 as in llava-1.5), the rest of the vocabulary filled with placeholders."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import CLIPImageProcessor, LlavaProcessor, PreTrainedTokenizerFast

    cfg = read_hub_config(config)
    n_vocab, image_id, pad_id = cfg["text_config"]["vocab_size"], cfg["image_token_index"], cfg["pad_token_id"]
    fixed = {"<unk>": 0, "<s>": 1, "</s>": 2, IMAGE_TOKEN: image_id, "<pad>": pad_id}
    names = iter(["user", "assistant", ":", *words])
    vocab = {}
    for i in range(n_vocab):
        name = next((t for t, j in fixed.items() if j == i), None) or next(names, None) or f"<extra_{i}>"
        vocab[name] = i
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])  # Llama's BOS
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", extra_special_tokens={"image_token": IMAGE_TOKEN})
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    vc = cfg["vision_config"]
    size = vc["image_size"]
    image_processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=vc["patch_size"],
                          vision_feature_select_strategy=cfg["vision_feature_select_strategy"],
                          num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE)
