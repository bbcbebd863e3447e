"""Recipes for the course's tiny Llama 3.2 Vision (notebook 05, ``scripts/train_mllama.py``): a
transformers ``MllamaForConditionalGeneration`` built around the frozen ``course/llama-tiny``, the VQA
batches it trains on (``VQABatches`` over ``shapes.ShapesQADataset``), its training loop, accuracy,
gates, and ``answer_questions``: the notebook's real-model cell (course model offline, Llama 3.2 11B
Vision Instruct with its chat template online).
"""
from __future__ import annotations

import torch

from ..llama import IGNORE_INDEX, LLAMA3_THETA
from ..mllama import cross_attention_layer_indices
from ..world import shapes
from .llama import load_pretrained

ONE_WORD_KINDS = ("color", "existence", "count", "shape")
IMAGE_SIZE = 32  # the course model sees 32-px scenes as one tile


def vqa_prompt(question: str, image: bool = True) -> str:
    """The prompt a tiny Mllama sees: ``<|image|><|begin_of_text|>question`` (the processor's layout)."""
    return ("<|image|>" if image else "") + "<|begin_of_text|>" + question


def build_processor(tokenizer):
    """The ``MllamaProcessor`` of ``course/mllama-shapes``: one 32-px tile per image and the word tokenizer."""
    from transformers import MllamaImageProcessor, MllamaProcessor

    image_processor = MllamaImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, max_image_tiles=1)
    return MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer)


# --------------------------------------------------------------------------------------------
# A tiny Llama 3.2 Vision (transformers' Mllama) on Shapes World
# --------------------------------------------------------------------------------------------
def tiny_mllama_config(text_config, tokenizer, every: int = 2, image_size: int = 32, patch_size: int = 8,
                       vision_width: int = 64, vision_layers: int = 2):
    """``MllamaConfig``: a tiny Mllama vision encoder (one tile of ``image_size`` px cut in ``patch_size`` px
    patches, ``vision_layers`` local layers of width ``vision_width`` + one gated global layer) and the text
    sizes of ``text_config`` (a ``LlamaConfig``) with a cross-attention layer before every ``every``-th text layer."""
    from transformers import MllamaConfig

    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    # the vision output concatenates the last hidden state and one intermediate layer's: 2 * vision_width
    vision = dict(hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=vision_layers,
                  num_global_layers=1, attention_heads=4, image_size=image_size, patch_size=patch_size,
                  max_num_tiles=1, intermediate_layers_indices=[vision_layers - 1],
                  vision_output_dim=2 * vision_width, supported_aspect_ratios=[[1, 1]], num_channels=3)
    n_text = text_config.num_hidden_layers
    cross = cross_attention_layer_indices(n_text, every)
    rope = getattr(text_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": LLAMA3_THETA}
    # pad/bos/eos must lie inside the (small) vocabulary, unlike MllamaTextConfig's defaults
    text = dict(vocab_size=text_config.vocab_size, hidden_size=text_config.hidden_size,
                intermediate_size=text_config.intermediate_size, num_hidden_layers=n_text + len(cross),
                num_attention_heads=text_config.num_attention_heads, num_key_value_heads=text_config.num_key_value_heads,
                cross_attention_layers=cross, rope_parameters=dict(rope), rms_norm_eps=text_config.rms_norm_eps,
                max_position_embeddings=text_config.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return MllamaConfig(vision_config=vision, text_config=text,
                        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))


def mllama_from_llama(llama, tokenizer, every: int = 2, freeze_text: bool = True, **vision_kwargs):
    """A ``MllamaForConditionalGeneration`` whose text layers are ``llama``'s (a ``LlamaForCausalLM``).

    The cross-attention layers, vision encoder and projector are new (gates at zero); with
    ``freeze_text`` only they train, as in Llama 3.2 Vision where the language model stays frozen.
    ``vision_kwargs`` (``image_size``, ``patch_size``, ``vision_width``, ``vision_layers``) go to
    ``tiny_mllama_config``.
    """
    from transformers import MllamaForConditionalGeneration

    cfg = tiny_mllama_config(llama.config, tokenizer, every, **vision_kwargs)
    model = MllamaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    cross = cfg.text_config.cross_attention_layers
    text_idx = [j for j in range(cfg.text_config.num_hidden_layers) if j not in cross]
    src = llama.state_dict()
    dst = model.state_dict()
    with torch.no_grad():
        for k, v in src.items():
            if k.startswith("model.layers."):
                i, rest = k[len("model.layers."):].split(".", 1)
                dst[f"model.language_model.layers.{text_idx[int(i)]}.{rest}"].copy_(v)
            elif k == "model.embed_tokens.weight":  # Mllama keeps 8 extra rows after the vocabulary
                dst["model.language_model.embed_tokens.weight"][: v.shape[0]].copy_(v)
            elif k == "model.norm.weight":
                dst["model.language_model.norm.weight"].copy_(v)
            elif k == "lm_head.weight":
                dst["lm_head.weight"].copy_(v)
            else:
                raise RuntimeError(f"unexpected Llama weight {k!r}; expected a LlamaForCausalLM state dict")
    if freeze_text:
        text_params = {f"model.language_model.layers.{j}." for j in text_idx}
        for name, p in model.named_parameters():
            if (any(name.startswith(t) for t in text_params) or name in (
                    "model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight")):
                p.requires_grad_(False)
    return model.eval()


class VQABatches:
    """Model inputs for a tiny Mllama from a ``shapes.ShapesQADataset`` (notebook 05; the course's one QA data).

    The scenes' images go through ``image_processor`` once; ``batch(idx)`` tokenizes
    ``<|image|><|begin_of_text|>question answer<|eot_id|>`` for items ``idx`` (in the dataset's order:
    scene by scene, questions in ``scene.qa`` order) with labels on the answer and ``<|eot_id|>`` only,
    and ``answer_pos``: the last prompt token, whose logits predict the answer.
    """

    def __init__(self, dataset, tokenizer, image_processor):
        kinds = {q.kind for _, q in dataset.items}
        if not kinds <= set(ONE_WORD_KINDS):
            raise ValueError(f"the tiny Mllama answers with one word: build the ShapesQADataset with kinds among "
                             f"{list(ONE_WORD_KINDS)}, got {sorted(kinds)}")
        self.dataset, self.tokenizer = dataset, tokenizer
        self.scenes = dataset.scenes
        self.items = dataset.items  # (scene index, QA)
        enc = image_processor(images=[[s.image] for s in self.scenes], return_tensors="pt")
        self.pixel_values = enc["pixel_values"]          # (N, 1 image, 1 tile, 3, S, S)
        self.aspect_ratio_ids = enc["aspect_ratio_ids"]  # (N, 1)
        self.aspect_ratio_mask = enc["aspect_ratio_mask"]

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx, with_answer: bool = True, image: bool = True) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        items = [self.items[k] for k in idx]
        prompts = [vqa_prompt(q.question, image) for _, q in items]
        texts = [p + (f" {q.answer}{tok.eos_token}" if with_answer else "") for p, (_, q) in zip(prompts, items)]
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        out = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
        plen = torch.tensor([len(tok(p, add_special_tokens=False).input_ids) for p in prompts])
        out["answer_pos"] = plen - 1
        if with_answer:
            pos = torch.arange(enc.input_ids.shape[1])[None]
            keep = (pos >= plen[:, None]) & (enc.attention_mask == 1)
            out["labels"] = enc.input_ids.masked_fill(~keep, IGNORE_INDEX)
        if image:
            scene_idx = torch.tensor([i for i, _ in items])
            out["pixel_values"] = self.pixel_values[scene_idx]
            out["aspect_ratio_ids"] = self.aspect_ratio_ids[scene_idx]
            out["aspect_ratio_mask"] = self.aspect_ratio_mask[scene_idx]
            # every token after <|image|> (here: all of them) may look at the single image tile
            out["cross_attention_mask"] = enc.attention_mask[:, :, None, None].clone()
        return out


def vqa_data(split: str, n: int, processor, kinds=("color", "existence"), start: int = 0) -> VQABatches:
    """``VQABatches`` over ``shapes.ShapesQADataset(split, n, start=start, kinds=kinds)`` at the course's 32 px."""
    dataset = shapes.ShapesQADataset(split, n, size=IMAGE_SIZE, start=start, kinds=kinds)
    return VQABatches(dataset, processor.tokenizer, processor.image_processor)


def to_model(batch: dict, model) -> dict:
    """``batch`` on the model's device, pixels in its dtype (``cfg.device`` / ``cfg.dtype`` in the notebook)."""
    p = next(model.parameters())
    return {k: v.to(p.device, p.dtype if k == "pixel_values" else None) for k, v in batch.items()}


@torch.no_grad()
def vqa_predictions(model, data: VQABatches, image: bool = True, batch_size: int = 256) -> list[str]:
    """The model's one-word answer (argmax after the question) for every item of ``data``."""
    preds = []
    for s in range(0, len(data), batch_size):
        b = data.batch(range(s, min(s + batch_size, len(data))), with_answer=False, image=image)
        pos = b.pop("answer_pos")
        logits = model(**to_model(b, model)).logits.cpu()  # (B, T, V)
        ids = logits[torch.arange(len(pos)), pos].argmax(-1)
        preds.extend(data.tokenizer.convert_ids_to_tokens(ids.tolist()))
    return preds


def vqa_accuracy(model, data: VQABatches, image: bool = True) -> dict[str, float]:
    """Exact-match accuracy per question kind (and ``all``) on ``data``."""
    preds = vqa_predictions(model, data, image)
    acc: dict[str, list[int]] = {}
    for p, (_, q) in zip(preds, data.items):
        acc.setdefault(q.kind, []).append(int(p == q.answer))
        acc.setdefault("all", []).append(int(p == q.answer))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def mllama_gates(model) -> dict[str, list[float]]:
    """tanh of every cross-attention layer's attention and MLP gates in an ``Mllama*`` model."""
    layers = [l for l in model.model.language_model.layers if hasattr(l, "cross_attn_attn_gate")]
    return {"attn": [float(l.cross_attn_attn_gate.detach().tanh()) for l in layers],
            "mlp": [float(l.cross_attn_mlp_gate.detach().tanh()) for l in layers]}


def train_mllama_vqa(model, data: VQABatches, steps: int, batch_size: int = 64, lr: float = 5e-3,
                     gate_lr: float | None = None, seed: int = 0, log_gates_every: int = 10):
    """Train the adapter (vision encoder, projector, cross-attention layers) on ``data``; the frozen
    text model is untouched. Returns ``(history, gate_log)``, ``gate_log`` = list of ``(step, gates)``.

    The scalar gates get their own step size ``gate_lr`` (default ``10 * lr``): with one AdamW step size
    for everything, the adapter's matrices grow instead and the gates barely leave zero.
    """
    from ..training import cosine_schedule, train_loop

    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("_gate") and "cross_attn" in n]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not (n.endswith("_gate") and "cross_attn" in n)]
    if not others:
        raise ValueError("the model has no trainable parameters; build it with mllama_from_llama(...)")
    opt = torch.optim.AdamW([{"params": others, "lr": lr}, {"params": gates, "lr": gate_lr or 10 * lr}],
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            for idx in torch.randperm(len(data), generator=gen).split(batch_size):
                if len(idx) == batch_size:
                    yield idx.tolist()

    def loss_fn(m, idx):
        b = data.batch(idx)
        b.pop("answer_pos")
        return m(**to_model(b, m)).loss

    gate_log = [(0, mllama_gates(model))]

    def callback(step, loss):
        if (step + 1) % log_gates_every == 0:
            gate_log.append((step + 1, mllama_gates(model)))

    hist = train_loop(model, batches(), loss_fn, opt, steps, scheduler=cosine_schedule(opt, steps, warmup=20),
                      desc="adapter", callback=callback)
    return hist, gate_log


# --------------------------------------------------------------------------------------------
# Notebook 05's real-model cell
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def answer_questions(model_or_path, scene, questions, *, processor=None, device=None, dtype=None,
                     max_new_tokens: int = 8) -> dict:
    """Greedy answers of an ``MllamaForConditionalGeneration`` (a hub id / folder loaded here on ``device`` in
    ``dtype``, or a loaded model with its ``processor``) to ``questions`` about a Shapes World ``scene``.

    With a chat template (Llama 3.2 11B Vision Instruct) the question goes in a user turn with the image,
    asking for one word; without one (the course model) the prompt is ``vqa_prompt``. The scene is
    rendered at the processor's tile size. Returns the model, the processor, ``answers`` (``(question,
    answer)`` pairs) and ``input_shapes`` (the processor's outputs for the first question).
    """
    from transformers import AutoProcessor, MllamaForConditionalGeneration

    model, processor = load_pretrained(model_or_path, MllamaForConditionalGeneration, AutoProcessor, processor,
                                       device=device, dtype=dtype)
    chat = getattr(processor, "chat_template", None) is not None
    image = scene.render(processor.image_processor.size["height"])
    answers, shapes_first = [], None
    for q in questions:
        if chat:
            messages = [{"role": "user", "content": [{"type": "image"},
                                                     {"type": "text", "text": q + " Answer with one word."}]}]
            prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        else:
            prompt = vqa_prompt(q)  # "<|image|><|begin_of_text|>question"
        inputs = to_model(processor(images=image, text=prompt, add_special_tokens=False, return_tensors="pt"), model)
        shapes_first = shapes_first or {k: tuple(v.shape) for k, v in inputs.items()}
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=processor.tokenizer.pad_token_id)
        answer = processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        answers.append((q, answer))
    return {"model": model, "processor": processor, "answers": answers, "input_shapes": shapes_first}
