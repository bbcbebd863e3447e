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

import contextlib
import functools
import itertools
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


# ============================================================================================
# course/pixtral-shapes: a tiny Pixtral-style VLM trained from scratch on Shapes World canvases of several
# aspect ratios (notebook 06, section 6; scripts/train_pixtral.py)
# ============================================================================================
SHAPES_ID = "course/pixtral-shapes"
# (height, width) of the canvases: square, wide, tall and a larger square, all read at native size.
ASPECTS = ((32, 32), (32, 64), (64, 32), (48, 48))
PATCH = 8                 # 8-px patches: 4 x 4 tokens for 32 x 32, 4 x 8 for 32 x 64, 6 x 6 for 48 x 48
LONGEST_EDGE = 64         # no canvas is resized: PixtralImageProcessor only rounds sides up to the patch
QA_KINDS = ("color", "shape", "count", "existence", "position")
# The processor's chat template: pixtral-12b's layout, [INST]text\n[IMG][/INST]answer</s> (the prompt() string).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for chunk in message['content'] %}"
    "{% if chunk['type'] == 'text' %}{{ chunk['text'] }}{% elif chunk['type'] == 'image' %}{{ '\\n' }}[IMG]{% endif %}"
    "{% endfor %}{% endif %}[/INST]{% else %}{{ message['content'] }}{{ eos_token }}{% endif %}{% endfor %}")
VISION = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=4, num_attention_heads=4, head_dim=16,
              num_channels=3, image_size=LONGEST_EDGE, patch_size=PATCH, hidden_act="silu", rope_theta=10000.0)


def aspect_scenes(split: str, n: int, start: int = 0, objects: str = "1-4") -> list:
    """``n`` Shapes World scenes, scene ``k`` on the canvas ``ASPECTS[k % 4]``; ``objects="1-3"`` cycles through
    1, 2 and 3 objects per canvas (the held-out sets), ``"1-4"`` draws 1-4 from the seed (training)."""
    from ..world import shapes

    if objects not in ("1-3", "1-4"):
        raise ValueError(f"objects must be '1-3' or '1-4', got {objects!r}")
    out = []
    for k, seed in enumerate(shapes.split_seeds(split, n, start)):
        h, w = ASPECTS[k % len(ASPECTS)]
        n_obj = 1 + (k // len(ASPECTS)) % 3 if objects == "1-3" else None
        out.append(shapes.make_scene(seed, size=h, width=w, n_objects=n_obj))
    return out


def squash(image, side: int = 32):
    """What a fixed-resolution encoder sees: the image resized to ``side`` x ``side`` whatever its aspect ratio
    (bilinear, like CLIP's processors without their center crop)."""
    from PIL import Image

    return image.resize((side, side), Image.BILINEAR)


def build_tokenizer():
    """Word-level tokenizer: Mistral's 14 control tokens first (``[IMG]`` = 10, ``[IMG_BREAK]`` = 12,
    ``[IMG_END]`` = 13, as pixtral-12b), then the words of ``world.text.shapes_tokenizer`` (the course decoder's
    vocabulary); lower-cases the text, keeps the control tokens whole."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from ..world.text import shapes_tokenizer

    words = [w for w, _ in sorted(shapes_tokenizer().get_vocab().items(), key=lambda kv: kv[1])
             if not w.startswith("<")]
    vocab = {t: i for i, t in enumerate((*CONTROL_TOKENS, *words))}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tk.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                        pad_token="<unk>")
    tokenizer.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS[3:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 256
    if tokenizer.convert_tokens_to_ids(IMG) != 10 or tokenizer.encode(f"[INST]How{IMG}[/INST]",
                                                                       add_special_tokens=False)[1] != vocab["how"]:
        raise RuntimeError("the control tokens did not keep their ids")
    return tokenizer


def build_processor(tokenizer):
    """``PixtralProcessor``: ``PixtralImageProcessor`` (longest edge 64 px, 8-px patches, CLIP mean/std) and the
    tokenizer; the same class, special tokens and calls as pixtral-12b's."""
    from transformers import PixtralImageProcessor, PixtralProcessor

    image_processor = PixtralImageProcessor(size={"longest_edge": LONGEST_EDGE}, patch_size=PATCH)
    return PixtralProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                            spatial_merge_size=1, chat_template=CHAT_TEMPLATE)


def build_model(tokenizer, seed: int = 0, vision: dict | None = None):
    """``LlavaForConditionalGeneration`` with pixtral-12b's structure: a **randomly initialised**
    ``PixtralVisionModel`` tower (RoPE-2D, gated FFN, packing; trained from scratch, as Pixtral's encoder),
    an FFN-GeLU projector, and a ``mistral`` decoder carrying ``course/llama-tiny``'s weights (Mistral's
    layers are Llama's: the course decoder, word embeddings mapped to the new ids, new tokens at the mean)."""
    from transformers import LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration, MistralConfig, \
        PixtralVisionConfig

    from .. import hub
    from ..world.text import shapes_tokenizer

    lm = LlamaForCausalLM.from_pretrained(hub.resolve("course/llama-tiny"))
    lc = lm.config
    text_config = MistralConfig(vocab_size=len(tokenizer), hidden_size=lc.hidden_size,
                                intermediate_size=lc.intermediate_size, num_hidden_layers=lc.num_hidden_layers,
                                num_attention_heads=lc.num_attention_heads,
                                num_key_value_heads=lc.num_key_value_heads, head_dim=lc.head_dim,
                                hidden_act=lc.hidden_act, max_position_embeddings=256, rms_norm_eps=lc.rms_norm_eps,
                                rope_parameters=dict(lc.rope_parameters), sliding_window=None,
                                tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    config = LlavaConfig(vision_config=PixtralVisionConfig(**(vision or VISION)), text_config=text_config,
                         image_token_index=tokenizer.convert_tokens_to_ids(IMG), projector_hidden_act="gelu",
                         multimodal_projector_bias=True, vision_feature_layer=-1,
                         vision_feature_select_strategy="full", image_seq_length=1)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    old, new = shapes_tokenizer().get_vocab(), tokenizer.get_vocab()
    # Llama-tiny's specials -> Mistral's: BOS, end of turn, unknown
    mapping = {new[w]: i for w, i in old.items() if w in new}
    mapping |= {new["<s>"]: old["<|begin_of_text|>"], new["</s>"]: old["<|eot_id|>"], new["<unk>"]: old["<unk>"]}
    sd = lm.state_dict()
    with torch.no_grad():
        for name, param in (("model.embed_tokens.weight", model.get_input_embeddings().weight),
                            ("lm_head.weight", model.lm_head.weight)):
            table = sd.pop(name)
            param.copy_(table.mean(0, keepdim=True).expand_as(param))
            for i_new, i_old in mapping.items():
                param[i_new] = table[i_old]
    result = model.model.language_model.load_state_dict({k.removeprefix("model."): v for k, v in sd.items()},
                                                        strict=False)
    if set(result.missing_keys) != {"embed_tokens.weight"} or result.unexpected_keys:
        raise RuntimeError(f"llama-tiny did not load into the Mistral decoder cleanly: {result}")
    return model.eval()


def image_tensor(image) -> torch.Tensor:
    """A PIL canvas as ``(3, H, W)`` uint8 (kept small in memory; ``normalize`` makes the processor's input)."""
    import numpy as np

    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)


def normalize(images_uint8: torch.Tensor) -> torch.Tensor:
    """``PixtralImageProcessor``'s rescale + normalize (CLIP mean/std) on uint8 ``(..., 3, H, W)`` tensors."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    mean = torch.tensor(OPENAI_CLIP_MEAN).view(3, 1, 1)
    std = torch.tensor(OPENAI_CLIP_STD).view(3, 1, 1)
    return (images_uint8.float() / 255.0 - mean) / std


def encode(tokenizer, grid, question: str, answer: str | None):
    """``(ids, answer_mask)`` of ``<s>[INST]question\\n[IMG]...[/INST]answer</s>``: the ``prompt()`` layout with
    the image's ``[IMG]`` rows, ``[IMG_BREAK]``s and ``[IMG_END]`` (``grid = (n_h, n_w)``; ``None``: no image,
    the text-only baseline). The mask marks the answer and its ``</s>``."""
    tid = tokenizer.convert_tokens_to_ids
    ids = [tid("<s>"), tid("[INST]")] + tokenizer.encode(question, add_special_tokens=False)
    if grid is not None:
        ids += [tid(t) for t in image_token_layout(*grid)]
    ids.append(tid("[/INST]"))
    mask = [0] * len(ids)
    if answer is not None:
        ans = tokenizer.encode(answer, add_special_tokens=False) + [tokenizer.eos_token_id]
        ids, mask = ids + ans, mask + [1] * len(ans)
    return ids, mask


class ShapesData:
    """Canvases of scenes as uint8 tensors (native, or squashed to ``squash_side`` x ``squash_side``) and their
    open questions ``(scene index, question, answer, kind)``."""

    def __init__(self, scenes, squash_side: int = 0, kinds=QA_KINDS):
        self.scenes = scenes
        self.squash_side = squash_side
        self.images = [image_tensor(squash(s.image, squash_side) if squash_side else s.image) for s in scenes]
        self.grids = [(im.shape[1] // PATCH, im.shape[2] // PATCH) for im in self.images]
        self.examples = [(i, q.question, q.answer, q.kind) for i, s in enumerate(scenes) for q in s.qa
                         if q.kind in kinds]

    @functools.cached_property
    def patch_labels(self) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Per image, ``(color, shape, region)`` class of each patch (row-major), ``0`` = background: the object
        that covers at least 8 of the patch's 64 pixels (most of them, if two do), as drawn on the canvas the model
        reads; ``region`` is that object's place in the canvas (``shapes.REGIONS``, the "where is ...?" answer),
        which RoPE-2D alone cannot give a token: it only encodes positions relative to the other patches."""
        import numpy as np
        from PIL import Image

        from ..world import shapes

        colors, kinds = ["background", *shapes.COLORS], ["background", *shapes.SHAPES]
        regions = ["background", *(r for row in shapes.REGIONS for r in row)]
        out = []
        for scene, im in zip(self.scenes, self.images):
            h, w = scene.shape_hw
            owner = np.zeros((h, w), dtype=np.uint8)       # 0: background, k: the k-th object
            for k, o in enumerate(scene.objects, start=1):
                drawn = shapes.render_objects([o], h, scene.background, width=w).astype(int)
                owner[np.abs(drawn - np.array(scene.background)).sum(-1) > 60] = k
            if self.squash_side:
                owner = np.asarray(Image.fromarray(owner).resize((im.shape[2], im.shape[1]), Image.NEAREST))
            gh, gw = im.shape[1] // PATCH, im.shape[2] // PATCH
            blocks = torch.from_numpy(owner.astype(np.int64)).view(gh, PATCH, gw, PATCH).permute(0, 2, 1, 3)
            counts = torch.nn.functional.one_hot(blocks.reshape(gh * gw, -1), len(scene.objects) + 1).sum(1)
            counts[:, 0] = 0
            best = counts.argmax(-1)
            best[counts.max(-1).values < 8] = 0
            lut_c = torch.tensor([0] + [colors.index(o.color) for o in scene.objects])
            lut_s = torch.tensor([0] + [kinds.index(o.shape) for o in scene.objects])
            lut_r = torch.tensor([0] + [regions.index(o.region) for o in scene.objects])
            out.append((lut_c[best], lut_s[best], lut_r[best]))
        return out

    def pixels(self, idx):
        """``pixel_values (B, 3, H_max, W_max)`` (zero-padded, as the processor pads) and ``image_sizes``."""
        ims = [self.images[i] for i in idx]
        h, w = max(im.shape[1] for im in ims), max(im.shape[2] for im in ims)
        out = torch.zeros(len(ims), 3, h, w)
        for k, im in enumerate(ims):
            out[k, :, :im.shape[1], :im.shape[2]] = normalize(im)
        return out, [tuple(im.shape[1:]) for im in ims]

    def batch(self, tokenizer, examples, cache=None):
        """Right-padded ``input_ids``, ``attention_mask``, ``labels`` (-100 off the answer) + pixels."""
        from ..llava import answer_labels

        cache = {} if cache is None else cache
        enc = []
        for i, q, a, _ in examples:
            key = (self.grids[i], q, a)
            enc.append(cache[key] if key in cache else cache.setdefault(key, encode(tokenizer, self.grids[i], q, a)))
        t = max(len(ids) for ids, _ in enc)
        input_ids = torch.full((len(enc), t), tokenizer.pad_token_id, dtype=torch.long)
        answer, attn = torch.zeros_like(input_ids), torch.zeros_like(input_ids)
        for k, (ids, mask) in enumerate(enc):
            input_ids[k, :len(ids)], answer[k, :len(ids)], attn[k, :len(ids)] = torch.tensor(ids), torch.tensor(mask), 1
        pixel_values, image_sizes = self.pixels([i for i, *_ in examples])
        return {"input_ids": input_ids, "attention_mask": attn, "pixel_values": pixel_values,
                "image_sizes": torch.tensor(image_sizes),
                "labels": answer_labels(input_ids, answer, tokenizer.convert_tokens_to_ids(IMG))}


def grouped_tower_forward(tower, pixel_values: torch.Tensor, image_sizes=None, **kwargs):
    """``PixtralVisionModel``'s output computed per group of equal-sized images (a batch each, no mask) instead of
    one packed sequence with a block-diagonal mask: the same numbers (section 4's proof that packed attention is
    attention within each image), without the ``(sum n)^2`` masked scores -- 48 canvases of ~30 patches are
    ~1,400 packed tokens, so packing computes ~48x the scores that matter. Output: packed order, ``(1, sum n, D)``."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    ps = tower.patch_size
    if image_sizes is None:
        image_sizes = [pixel_values.shape[-2:]] * pixel_values.shape[0]
    sizes = [tuple(int(v) for v in s) for s in image_sizes]
    patches = tower.patch_conv(pixel_values.to(tower.patch_conv.weight.dtype))  # (B, D, H/ps, W/ps)
    pieces: list = [None] * len(sizes)
    for size in dict.fromkeys(sizes):
        idx = [k for k, s in enumerate(sizes) if s == size]
        gh, gw = size[0] // ps, size[1] // ps
        x = tower.ln_pre(patches[idx, :, :gh, :gw].flatten(2).transpose(1, 2))      # (b, n, D), row-major patches
        hh, ww = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
        positions = torch.stack([hh.flatten(), ww.flatten()], dim=-1).to(x.device)  # (n, 2): (i, j) per patch
        x = tower.transformer(x, attention_mask=None,
                              position_embeddings=tower.patch_positional_embedding(x, positions)).last_hidden_state
        for j, k in enumerate(idx):
            pieces[k] = x[j]
    out = torch.cat(pieces, dim=0).unsqueeze(0)
    return BaseModelOutputWithPooling(last_hidden_state=out, hidden_states=(out,))


@contextlib.contextmanager
def grouped_vision_attention(model):
    """Within this block the model's ``PixtralVisionModel`` runs ``grouped_tower_forward`` (training speed); the
    LLaVA wrapper reads the last layer (``vision_feature_layer=-1``), the only one it returns."""
    if model.config.vision_feature_layer != -1:
        raise ValueError("grouped_vision_attention returns the last vision layer only: vision_feature_layer must be -1")
    tower = model.model.vision_tower
    if "forward" in vars(tower):   # already inside such a block
        yield model
        return
    tower.forward = functools.partial(grouped_tower_forward, tower)
    try:
        yield model
    finally:
        del tower.forward


def _run(model, batches, loss_fn, opt, steps: int, warmup: int, name: str, what: str, log_every: int, log,
         hook=None, hook_every: int = 0) -> list[float]:
    """``training.train_loop`` with a cosine schedule, a log line every ``log_every`` steps and ``hook(step)`` (in
    eval mode) every ``hook_every`` steps."""
    import time

    from ..training import cosine_schedule, train_loop

    t0, losses = time.perf_counter(), []

    def callback(step: int, loss: float) -> None:
        losses.append(loss)
        done = step + 1
        if log and (done % log_every == 0 or done == steps):
            tail = losses[-log_every:]
            log(f"{name} {done}/{steps} {what} {sum(tail) / len(tail):.4f} ({time.perf_counter() - t0:.0f} s)")
        if hook is not None and hook_every and done % hook_every == 0 and done < steps:
            model.eval()
            hook(done)
            model.train()

    train_loop(model, batches, loss_fn, opt, steps, scheduler=cosine_schedule(opt, steps, warmup),
               desc=name.split()[0], callback=callback)
    return losses


def pretrain_tower(model, data: ShapesData, steps: int, lr: float = 2e-3, batch_size: int = 64, seed: int = 0,
                   log_every: int = 100, log=print) -> list[float]:
    """Stage 0, the encoder alone from scratch: three linear heads on its last layer name each patch's color, shape
    and region (``patch_labels``; cross-entropy), so its tokens carry what is where before the decoder reads them. The heads
    are thrown away. (Pixtral's encoder learned from image-text pairs at scale; on a CPU this dense signal from
    Shapes World's ground truth does the same job in minutes; measured in scripts/train_pixtral.py's docstring.)"""
    import random

    from ..world import shapes

    torch.manual_seed(seed)
    rng = random.Random(seed)
    tower = model.model.vision_tower
    width = tower.config.hidden_size
    heads = torch.nn.ModuleDict({"color": torch.nn.Linear(width, len(shapes.COLORS) + 1),
                                 "shape": torch.nn.Linear(width, len(shapes.SHAPES) + 1),
                                 "region": torch.nn.Linear(width, sum(map(len, shapes.REGIONS)) + 1)})
    trained = torch.nn.ModuleDict({"tower": tower, "heads": heads})
    opt = torch.optim.AdamW(trained.parameters(), lr=lr, weight_decay=0.0)
    labels = data.patch_labels

    def batches():
        while True:
            yield [rng.randrange(len(data.images)) for _ in range(batch_size)]

    def loss_fn(_, idx):
        pixel_values, image_sizes = data.pixels(idx)
        feats = grouped_tower_forward(tower, pixel_values, image_sizes).last_hidden_state[0]   # (sum n, D), packed
        # the sum of three cross-entropies, one per head, over every patch of the batch
        return sum(torch.nn.functional.cross_entropy(heads[name](feats), torch.cat([labels[i][j] for i in idx]))
                   for j, name in enumerate(("color", "shape", "region")))

    return _run(trained, batches(), loss_fn, opt, steps, min(100, steps // 10), "stage 0 step", "patch loss",
                log_every, log)


def train(model, tokenizer, data: ShapesData, steps: int, lr: float = 1e-3, batch_size: int = 48, seed: int = 0,
          warmup: int = 100, log_every: int = 100, log=print, hook=None, hook_every: int = 0,
          first_kinds: tuple = (), first_steps: int = 0, freeze_tower: bool = False):
    """AdamW, cosine LR, the loss on the answers only; batches balanced by question kind and mixing all aspect
    ratios (the tower packs them, no padding tokens). Every weight trains, or, with ``freeze_tower``, the
    adapter and the decoder only (LLaVA's recipe: the encoder's stage-0 features kept as they are).

    ``first_kinds`` / ``first_steps``: a curriculum -- the first steps ask only these kinds. With all kinds from
    the start the decoder first learns each kind's most frequent answer and sits at that plateau (measured: 0.34
    overall after 1,000 steps, existence and position at chance); color questions cannot be answered without the image, so they force the
    decoder to read the image tokens first."""
    import random

    torch.manual_seed(seed)
    rng = random.Random(seed)
    by_kind: dict[str, list] = {}
    for e in data.examples:
        by_kind.setdefault(e[3], []).append(e)
    kinds = sorted(by_kind)
    model.model.vision_tower.requires_grad_(not freeze_tower)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    cache: dict = {}

    def batches():
        for step in itertools.count():
            pool = list(first_kinds) if step < first_steps else kinds
            yield data.batch(tokenizer, [rng.choice(by_kind[pool[k % len(pool)]]) for k in range(batch_size)], cache)

    return _run(model, batches(), lambda m, batch: m(**batch).loss, opt, steps, warmup, "step", "loss", log_every,
                log, hook, hook_every)


@torch.no_grad()
def answer(model, tokenizer, data: ShapesData, examples, use_image: bool = True, max_new_tokens: int = 4):
    """Greedy answers to ``examples`` (left-padded batch; ``use_image=False``: the prompt without the image)."""
    enc = [encode(tokenizer, data.grids[i] if use_image else None, q, None)[0] for i, q, _, _ in examples]
    t = max(map(len, enc))
    ids = torch.full((len(enc), t), tokenizer.pad_token_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for k, e in enumerate(enc):
        ids[k, t - len(e):], attn[k, t - len(e):] = torch.tensor(e), 1
    extra = {}
    if use_image:
        pixel_values, image_sizes = data.pixels([i for i, *_ in examples])
        extra = {"pixel_values": pixel_values.to(model.dtype), "image_sizes": torch.tensor(image_sizes)}
    out = model.generate(input_ids=ids, attention_mask=attn, **extra, max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return [tokenizer.decode(o[t:], skip_special_tokens=True).strip() for o in out]


def evaluate(model, tokenizer, data: ShapesData, n_per_kind: int = 0, use_image: bool = True,
             batch_size: int = 128) -> dict:
    """Exact match per canvas ``"HxW"`` and kind: ``{"32x64": {"color": .., ..., "overall": mean over kinds},
    ..., "overall": mean over canvases}`` (``n_per_kind``: the first n questions of each kind per canvas)."""
    groups: dict[str, dict[str, list]] = {}
    for e in data.examples:
        h, w = data.scenes[e[0]].shape_hw
        groups.setdefault(f"{h}x{w}", {}).setdefault(e[3], []).append(e)
    result = {}
    for canvas, kinds in groups.items():
        acc = {}
        for kind, exs in sorted(kinds.items()):
            exs = exs[:n_per_kind] if n_per_kind else exs
            hits = 0
            for k in range(0, len(exs), batch_size):
                chunk = exs[k:k + batch_size]
                preds = answer(model, tokenizer, data, chunk, use_image=use_image)
                hits += sum(p == gold.lower() for p, (_, _, gold, _) in zip(preds, chunk))
            acc[kind] = hits / len(exs)
        acc["overall"] = sum(acc.values()) / len(acc)
        result[canvas] = acc
    result["overall"] = sum(r["overall"] for r in result.values()) / len(result)
    return result
