"""Pixtral with the library's own classes (notebook 06): the "Pipeline real" code.

``mistral-community/pixtral-12b`` is a transformers ``LlavaForConditionalGeneration`` with a ``pixtral`` vision
config (``PixtralVisionModel`` tower, last layer, all patches: ``vision_feature_layer=-1``,
``vision_feature_select_strategy="full"``), an FFN-GeLU projector and a ``mistral`` text config, called through
``PixtralProcessor`` (``[IMG]`` / ``[IMG_BREAK]`` / ``[IMG_END]``, ``image_sizes`` for images of any size).

- ``load_pixtral(path, device, dtype)``: model + processor from a folder or hub id (online);
- ``hub_shaped_model(config, seed)`` + ``tiny_processor(...)``: a tiny *random* model with the hub config's
  structure and a processor with the same special tokens, to run exactly the same calls offline;
- ``ask(model, processor, images, question)``: the calls themselves (processor -> generate -> decode), plus what
  the processor built (image sizes, token layout), so a notebook and a test can check them.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..bridges.transformers_pixtral import encoder_from_hf
from ..pixtral import IMG, IMG_BREAK, IMG_END, image_token_layout

HUB_ID = "mistral-community/pixtral-12b"
# Mistral's control tokens at the start of the vocabulary (Tekken / v3 tokenizers): [IMG] = 10 is
# pixtral-12b's image_token_index; [IMG_BREAK] = 12 and [IMG_END] = 13 follow Mistral's params.json.
CONTROL_TOKENS = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                  "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]", IMG, "[PREFIX]", IMG_BREAK, IMG_END)
TINY_WORDS = ("describe", "the", "image", "images", "what", "is", "in", "this", "how", "many", "shapes", "are",
              "there", "?", ".", "a", "red", "green", "blue", "circle", "square", "triangle")


def prompt(question: str, n_images: int = 1) -> str:
    """Pixtral's instruction format (transformers' Pixtral docs): ``<s>[INST]question\\n[IMG]...[/INST]``;
    the processor expands each ``[IMG]`` into the image's rows of tokens."""
    return f"<s>[INST]{question}\n" + IMG * n_images + "[/INST]"


def load_pixtral(path: str, device=None, dtype=None):
    """``(model, processor)``: ``LlavaForConditionalGeneration`` + ``AutoProcessor`` from ``path`` (a hub id such as
    ``HUB_ID`` or a folder), on ``device`` in ``dtype`` (bfloat16 on a GPU for the 12B: ~25 GB)."""
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path)
    model = LlavaForConditionalGeneration.from_pretrained(path, dtype=dtype or torch.float32,
                                                          device_map="auto" if device is None else None)
    if device is not None:
        model = model.to(device)
    return model.eval(), processor


def read_hub_config(config) -> dict:
    """A hub-shaped config as a dict: a path to a JSON file or a dict; keys starting with ``_`` (notes) dropped."""
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text(encoding="utf-8"))
    if not isinstance(config, dict) or config.get("model_type") != "llava":
        raise ValueError("expected a LLaVA config (model_type 'llava') with a pixtral vision_config, as "
                         "mistral-community/pixtral-12b's config.json")
    if config.get("vision_config", {}).get("model_type") != "pixtral":
        raise ValueError("the vision_config of a Pixtral model has model_type 'pixtral'")
    return {k: v for k, v in config.items() if not k.startswith("_")}


def hub_shaped_model(config, seed: int = 0):
    """A tiny **random** ``LlavaForConditionalGeneration`` built from a config with pixtral-12b's structure (same
    classes, feature layer, strategy, activations, RoPE, head layout; sizes shrunk). Its outputs mean nothing:
    it exists to run the online calls offline and to check shapes and layouts."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration._from_config(LlavaConfig.from_dict(read_hub_config(config)),
                                                       attn_implementation="sdpa")
    return model.eval()


def tiny_processor(longest_edge: int = 64, patch_size: int = 16, words=TINY_WORDS):
    """A ``PixtralProcessor`` for tiny models: ``PixtralImageProcessor`` (``longest_edge`` px, CLIP mean/std) and a
    word-level tokenizer whose first ids are Mistral's control tokens (``[IMG]`` = 10, ``[IMG_BREAK]`` = 12,
    ``[IMG_END]`` = 13), then ``words``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PixtralImageProcessor, PixtralProcessor, PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate((*CONTROL_TOKENS, *words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS[3:])})
    image_processor = PixtralImageProcessor(size={"longest_edge": longest_edge}, patch_size=patch_size)
    return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                            spatial_merge_size=1)


@torch.no_grad()
def ask(model, processor, images, question: str, max_new_tokens: int = 20) -> dict:
    """Ask ``question`` about ``images`` (PIL images of any sizes): exactly the calls that run pixtral-12b.

    Returns ``answer`` (decoded new tokens), ``image_sizes`` (after the resize rule), ``input_ids`` (the prompt
    with each ``[IMG]`` expanded into ``n_h`` rows of ``[IMG]``s ended by ``[IMG_BREAK]``/``[IMG_END]``) and
    ``image_features`` (the projected image tokens the decoder receives, ``(sum n_h n_w, d_text)``).
    """
    images = list(images) if isinstance(images, (list, tuple)) else [images]
    # the prompt already starts with <s>: no second BOS from the tokenizer
    inputs = processor(images=images, text=prompt(question, len(images)), add_special_tokens=False,
                       return_tensors="pt")
    inputs = inputs.to(model.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    feats = model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    feats = getattr(feats, "pooler_output", feats)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    n = inputs["input_ids"].shape[1]
    return {"answer": processor.decode(out[0, n:], skip_special_tokens=True).strip(),
            "image_sizes": [tuple(int(v) for v in s) for s in inputs["image_sizes"]],
            "input_ids": inputs["input_ids"][0].cpu(),
            "image_features": torch.cat(list(feats), dim=0) if isinstance(feats, (list, tuple)) else feats}


def tower_parity(model, pixel_values: torch.Tensor, image_sizes) -> float:
    """Max |course ``VisionEncoder`` - the model's ``PixtralVisionModel`` tower| on the same images (weights copied
    by the bridge): the encoder inside the real pipeline is the one the notebook writes."""
    tower = model.model.vision_tower if hasattr(model, "model") else model.vision_tower
    course = encoder_from_hf(tower)
    with torch.no_grad():
        ref = tower(pixel_values.to(tower.dtype), image_sizes=image_sizes).last_hidden_state
        ps = tower.config.patch_size
        crops = [im[:, : (h // ps) * ps, : (w // ps) * ps] for im, (h, w) in zip(pixel_values, image_sizes)]
        ours = course(crops)
    return (ours - ref).abs().max().item()
