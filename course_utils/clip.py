"""CLIP: contrastive language-image pre-training, zero-shot classification, DiffusionCLIP losses
(introduced in notebook 01; the two DiffusionCLIP losses are used again in notebook 13).

The pieces, in the order the notebook derives them:

- ``clip_loss``: the symmetric cross-entropy (InfoNCE) over ``logit_scale * cos`` similarities,
  identical to open_clip's ``ClipLoss`` (``logit_scale`` is already exponentiated, as there);
- ``zero_shot_classifier`` / ``zero_shot_predict``: class embeddings averaged over prompt templates
  ("a photo of a {}.", ...), L2-normalized; prediction = argmax of the similarities (open_clip's
  ``build_zero_shot_classifier``);
- ``directional_clip_loss`` / ``global_clip_loss``: the DiffusionCLIP losses of the lecture;
- the course CLIP: a transformers ``CLIPModel`` (small ViT + small text transformer) with the real
  CLIP BPE tokenizer that open_clip ships, restricted to the words of Shapes World (same merges,
  same byte-level alphabet, ids renumbered densely), saved in one folder in both the transformers
  layout (``model.safetensors``) and open_clip's ``local-dir:`` layout (``open_clip_model.safetensors``
  + ``open_clip_config.json``), so that ``CLIPModel.from_pretrained(folder)`` and
  ``open_clip.create_model_and_transforms("local-dir:" + folder)`` load the same weights.
"""
from __future__ import annotations

import gzip
import json
import math
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F

# CLIP's image normalization (open_clip's OPENAI_DATASET_MEAN / _STD).
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# Learnable temperature: logit_scale = ln(1 / 0.07) at init (exp = 14.29), clamped at ln(100).
INIT_LOGIT_SCALE = math.log(1 / 0.07)
MAX_LOGIT_SCALE = math.log(100)

# Prompt templates for zero-shot classification (in the spirit of open_clip's SIMPLE_IMAGENET_TEMPLATES).
TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "there is a {} in the image.",
)

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"


# ============================================================================================
# Losses
# ============================================================================================
def _check_2d(name: str, x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 2-D tensor (batch, dim), got {shape}")


def _check_same_shape(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor, *, broadcast_b: bool = False) -> None:
    _check_2d(name_a, a)
    _check_2d(name_b, b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {name_a} has shape {tuple(a.shape)} and {name_b} has shape "
                         f"{tuple(b.shape)}; both must be (batch, dim) with the same dim")
    if a.shape[0] != b.shape[0] and not (broadcast_b and b.shape[0] == 1):
        extra = " (or 1)" if broadcast_b else ""
        raise ValueError(f"batch sizes differ: {name_a} has shape {tuple(a.shape)} and {name_b} has shape "
                         f"{tuple(b.shape)}; {name_b} needs the same batch size{extra}")


def clip_logits(image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
    """``(logits_per_image, logits_per_text)``, both ``(N, N)``, as in open_clip's ``ClipLoss``."""
    _check_same_shape("image_features", image_features, "text_features", text_features)
    # logits_per_image[i, j] = s * <I_i, T_j>   (features already L2-normalized: a cosine)
    logits_per_image = logit_scale * image_features @ text_features.T  # (N, N)
    # logits_per_text = logits_per_image^T
    logits_per_text = logit_scale * text_features @ image_features.T  # (N, N)
    return logits_per_image, logits_per_text


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor,
              logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric contrastive loss of CLIP (notebook 01); equal to ``open_clip.ClipLoss()``.

    ``image_features``, ``text_features``: ``(N, D)``, L2-normalized; row ``i`` of each is a pair.
    ``logit_scale``: the multiplier already exponentiated (``model.logit_scale.exp()``).

        L = 1/2 [ CE(s I T^T, arange(N)) + CE(s T I^T, arange(N)) ]
    """
    logits_per_image, logits_per_text = clip_logits(image_features, text_features, logit_scale)
    # the matching caption of image i is caption i: labels = 0, 1, ..., N-1
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    # image -> text and text -> image cross-entropies, averaged
    return (F.cross_entropy(logits_per_image, labels) + F.cross_entropy(logits_per_text, labels)) / 2


def directional_clip_loss(img_gen: torch.Tensor, img_ref: torch.Tensor,
                          txt_tar: torch.Tensor, txt_ref: torch.Tensor) -> torch.Tensor:
    """DiffusionCLIP's directional loss (notebooks 01 and 13), the mean over the batch of

        L_direction = 1 - <dI, dT> / (|dI| |dT|),  dI = E_I(x_gen) - E_I(x_ref),  dT = E_T(y_tar) - E_T(y_ref)

    Arguments are embeddings ``(N, D)``; the text ones may have batch 1 (one edit for the whole
    batch). DiffusionCLIP L2-normalizes each embedding before taking differences: pass normalized
    embeddings to reproduce it exactly.
    """
    _check_same_shape("img_gen", img_gen, "img_ref", img_ref)
    _check_same_shape("txt_tar", txt_tar, "txt_ref", txt_ref)
    _check_same_shape("img_gen", img_gen, "txt_tar", txt_tar, broadcast_b=True)
    delta_i = img_gen - img_ref  # (N, D)
    delta_t = txt_tar - txt_ref  # (N or 1, D)
    # 1 - cos(dI, dT), averaged over the batch
    return (1 - F.cosine_similarity(delta_i, delta_t.expand_as(delta_i), dim=-1)).mean()


def global_clip_loss(img_gen: torch.Tensor, txt_tar: torch.Tensor) -> torch.Tensor:
    """DiffusionCLIP's global loss (notebooks 01 and 13): mean over the batch of

        L_global = D_CLIP(x_gen, y_tar) = 1 - cos(E_I(x_gen), E_T(y_tar))

    ``img_gen`` ``(N, D)``; ``txt_tar`` ``(N, D)`` or ``(1, D)``.
    """
    _check_same_shape("img_gen", img_gen, "txt_tar", txt_tar, broadcast_b=True)
    return (1 - F.cosine_similarity(img_gen, txt_tar.expand_as(img_gen), dim=-1)).mean()


# ============================================================================================
# Zero-shot classification
# ============================================================================================
def zero_shot_classifier(encode_text: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                         templates: Sequence[str] = TEMPLATES) -> torch.Tensor:
    """Zero-shot weights ``(D, C)`` (notebook 01), as open_clip's ``build_zero_shot_classifier``.

    For each class c: w_c = normalize( mean_t normalize(E_T(template_t(c))) ).
    ``encode_text(list_of_strings) -> (n, D)`` embeds texts (normalization is done here).
    """
    if not classnames:
        raise ValueError("zero_shot_classifier needs at least one class name")
    if not templates or any("{}" not in t for t in templates):
        raise ValueError(f"templates must be a non-empty list of strings with a '{{}}' slot, got {list(templates)!r}")
    texts = [t.format(c) for c in classnames for t in templates]
    with torch.no_grad():
        emb = encode_text(texts)
    if emb.ndim != 2 or emb.shape[0] != len(texts):
        raise ValueError(f"encode_text returned shape {tuple(emb.shape)}; expected ({len(texts)}, D)")
    emb = F.normalize(emb.float(), dim=-1).reshape(len(classnames), len(templates), -1)  # (C, T, D)
    # average over templates, then normalize again
    weights = F.normalize(emb.mean(dim=1), dim=-1)  # (C, D)
    return weights.T.contiguous()  # (D, C)


def zero_shot_predict(image_features: torch.Tensor, classifier: torch.Tensor,
                      logit_scale: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predictions (N,), logits (N, C))``: logits = s * normalize(I) @ W, prediction = argmax."""
    _check_2d("image_features", image_features)
    _check_2d("classifier", classifier)
    if image_features.shape[1] != classifier.shape[0]:
        raise ValueError(f"image_features has shape {tuple(image_features.shape)} but classifier has shape "
                         f"{tuple(classifier.shape)}; expected (N, D) and (D, C)")
    logits = logit_scale * F.normalize(image_features.float(), dim=-1) @ classifier
    return logits.argmax(dim=-1), logits


# ============================================================================================
# The course CLIP: tokenizer (real CLIP BPE restricted to the course's words), model, I/O
# ============================================================================================
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (as in open_clip's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_bpe_merges() -> list[tuple[str, str]]:
    """The 48,894 merges of CLIP's BPE, read from the file open_clip ships (works offline)."""
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]


def _bpe_trace(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to one pre-token (already byte-encoded), in order."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(parts) > 1:
        pairs = {(a, b) for a, b in zip(parts, parts[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, math.inf))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def shapes_corpus(n_scenes: int = 2000) -> list[str]:
    """Texts whose words the course tokenizer must know: Shapes World captions, questions and the
    vocabulary itself, the zero-shot templates and a few words for the real photographs."""
    from . import shapes

    texts = []
    for s in shapes.scenes("train", n_scenes):
        texts += s.captions + [q.question for q in s.qa] + [q.answer for q in s.qa]
    words = list(shapes.COLORS) + list(shapes.SHAPES) + list(shapes.SIZES) + list(shapes.OBJECT_NOUNS)
    words += [w for syn in shapes.SHAPE_SYNONYMS.values() for w in syn]
    words += [w for syn in shapes.SIZE_SYNONYMS.values() for w in syn]
    words += [w for row in shapes.REGIONS for w in row] + list(shapes.RELATIONS)
    words += list(shapes.NUMBER_WORDS.values()) + [str(i) for i in range(10)]
    texts += words + [t.format(w) for t in TEMPLATES for w in words]
    texts += ["is there a red circle?", "an object", "a shape", "the background is plain", "a cat", "a dog",
              "an astronaut", "a cup of coffee", "a rocket", "a flower", "a woman", "a man", "a building"]
    return texts


def build_tokenizer(texts: Iterable[str], context_length: int = 48):
    """A transformers ``CLIPTokenizer`` with CLIP's real BPE restricted to the words of ``texts``.

    Every word of ``texts`` tokenizes exactly as with the full CLIP tokenizer (the same merges are
    applied, in the same order), other text falls back to smaller pieces of the same BPE (the 512
    byte-level symbols are always there). Ids are renumbered densely: the 512 byte symbols, the
    kept merges in rank order, then ``<|startoftext|>`` and ``<|endoftext|>`` (the largest id, as in
    CLIP, so open_clip's ``argmax`` pooling and transformers' ``eos_token_id`` pooling agree).
    """
    import regex as re
    from transformers import CLIPTokenizer

    merges = clip_bpe_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    byte_encoder = _bytes_to_unicode()
    # CLIP's pre-tokenization: lower case, then this pattern (open_clip's SimpleTokenizer)
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", re.IGNORECASE)
    kept: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for text in texts:
        for tok in re.findall(pat, " ".join(text.lower().split())):
            if tok not in seen:
                seen.add(tok)
                kept.update(_bpe_trace("".join(byte_encoder[b] for b in tok.encode("utf-8")), ranks))
    kept_merges = [m for m in merges if m in kept]  # rank order
    symbols = list(byte_encoder.values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in kept_merges] + [SOT_TOKEN, EOT_TOKEN]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):
        raise RuntimeError("duplicate tokens in the restricted CLIP vocabulary")
    tok = CLIPTokenizer(vocab=vocab, merges=kept_merges, model_max_length=context_length)
    if tok.eos_token_id != len(vocab) - 1 or tok.bos_token_id != len(vocab) - 2:
        raise RuntimeError(f"unexpected special-token ids: bos {tok.bos_token_id}, eos {tok.eos_token_id}")
    return tok


def make_config(vocab_size: int, eos_token_id: int, bos_token_id: int, *, image_size: int = 32, patch_size: int = 4,
                vision_width: int = 128, vision_layers: int = 4, vision_heads: int = 4,
                text_width: int = 128, text_layers: int = 3, text_heads: int = 4, context_length: int = 48,
                embed_dim: int = 128, mlp_ratio: float = 2.0):
    """A transformers ``CLIPConfig`` for the course CLIP (sdpa attention, exact GELU)."""
    from transformers import CLIPConfig

    text = dict(vocab_size=vocab_size, hidden_size=text_width, intermediate_size=int(text_width * mlp_ratio),
                num_hidden_layers=text_layers, num_attention_heads=text_heads, max_position_embeddings=context_length,
                hidden_act="gelu", projection_dim=embed_dim, eos_token_id=eos_token_id, bos_token_id=bos_token_id,
                pad_token_id=eos_token_id)
    vision = dict(hidden_size=vision_width, intermediate_size=int(vision_width * mlp_ratio),
                  num_hidden_layers=vision_layers, num_attention_heads=vision_heads, image_size=image_size,
                  patch_size=patch_size, num_channels=3, hidden_act="gelu", projection_dim=embed_dim)
    cfg = CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim,
                     logit_scale_init_value=INIT_LOGIT_SCALE)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(config):
    """A randomly initialized ``CLIPModel`` with sdpa attention (eager is ~7x slower on a CPU)."""
    from transformers import CLIPModel

    model = CLIPModel._from_config(config, attn_implementation="sdpa")
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"expected sdpa attention, got {model.config._attn_implementation!r}")
    return model


def normalize_images(images: torch.Tensor) -> torch.Tensor:
    """``(N, 3, H, W)`` uint8 or float in [0, 1] -> CLIP-normalized float ``(N, 3, H, W)``."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W), got shape {tuple(images.shape)}")
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    mean = torch.tensor(OPENAI_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


def encode_images(model, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``E_I``: ``(N, 3, H, W)`` images (uint8 or [0, 1]) -> ``(N, D)`` embeddings (L2-normalized)."""
    out = model.get_image_features(pixel_values=normalize_images(images)).pooler_output
    return F.normalize(out, dim=-1) if normalize else out


def encode_texts(model, tokenizer, texts: Sequence[str], normalize: bool = True) -> torch.Tensor:
    """``E_T``: a list of strings -> ``(N, D)`` embeddings (L2-normalized)."""
    if isinstance(texts, str):
        texts = [texts]
    enc = tokenizer(list(texts), padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                    return_tensors="pt")
    out = model.get_text_features(input_ids=enc.input_ids.to(model.device)).pooler_output
    return F.normalize(out, dim=-1) if normalize else out


def clamp_logit_scale_(model) -> None:
    """In place: logit_scale <- clamp(logit_scale, 0, ln(100)), as open_clip's training does."""
    with torch.no_grad():
        model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)


# ---- the same weights in open_clip's layout ---------------------------------------------------
def open_clip_model_cfg(config) -> dict:
    """open_clip's ``model_cfg`` for a transformers ``CLIPConfig`` built by ``make_config``."""
    v, t = config.vision_config, config.text_config
    for name, c in (("vision", v), ("text", t)):
        if c.hidden_act != "gelu":
            raise ValueError(f"{name} hidden_act is {c.hidden_act!r}; only 'gelu' maps to open_clip's nn.GELU")
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": False,
        "vision_cfg": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.hidden_size,
                       "layers": v.num_hidden_layers, "head_width": v.hidden_size // v.num_attention_heads,
                       "mlp_ratio": v.intermediate_size / v.hidden_size},
        "text_cfg": {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
                     "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
                     "mlp_ratio": t.intermediate_size / t.hidden_size,
                     # pool at the first <|endoftext|>, as transformers does with eos_token_id
                     "pool_type": "eos", "eos_id": t.eos_token_id, "pad_id": t.pad_token_id,
                     # get_tokenizer("local-dir:...") then loads the tokenizer saved in the folder
                     "hf_tokenizer_name": "course/clip-shapes"},
    }


def _blocks(sd: dict, src: str, dst: str, n_layers: int) -> dict:
    out = {}
    for i in range(n_layers):
        s, d = f"{src}.layers.{i}", f"{dst}.resblocks.{i}"
        out[f"{d}.ln_1.weight"] = sd[f"{s}.layer_norm1.weight"]
        out[f"{d}.ln_1.bias"] = sd[f"{s}.layer_norm1.bias"]
        # nn.MultiheadAttention packs q, k, v into one (3W, W) projection
        out[f"{d}.attn.in_proj_weight"] = torch.cat([sd[f"{s}.self_attn.{p}_proj.weight"] for p in "qkv"], 0)
        out[f"{d}.attn.in_proj_bias"] = torch.cat([sd[f"{s}.self_attn.{p}_proj.bias"] for p in "qkv"], 0)
        out[f"{d}.attn.out_proj.weight"] = sd[f"{s}.self_attn.out_proj.weight"]
        out[f"{d}.attn.out_proj.bias"] = sd[f"{s}.self_attn.out_proj.bias"]
        out[f"{d}.ln_2.weight"] = sd[f"{s}.layer_norm2.weight"]
        out[f"{d}.ln_2.bias"] = sd[f"{s}.layer_norm2.bias"]
        out[f"{d}.mlp.c_fc.weight"] = sd[f"{s}.mlp.fc1.weight"]
        out[f"{d}.mlp.c_fc.bias"] = sd[f"{s}.mlp.fc1.bias"]
        out[f"{d}.mlp.c_proj.weight"] = sd[f"{s}.mlp.fc2.weight"]
        out[f"{d}.mlp.c_proj.bias"] = sd[f"{s}.mlp.fc2.bias"]
    return out


def to_open_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """The transformers ``CLIPModel``'s weights renamed (and q/k/v packed) for open_clip's ``CLIP``."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cfg = model.config
    out = {
        # vision tower
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        # open_clip computes x @ proj (W, D); transformers a Linear with weight (D, W)
        "visual.proj": sd["visual_projection.weight"].T,
        # text tower
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T,
        "logit_scale": sd["logit_scale"],
    }
    out.update(_blocks(sd, "vision_model.encoder", "visual.transformer", cfg.vision_config.num_hidden_layers))
    out.update(_blocks(sd, "text_model.encoder", "transformer", cfg.text_config.num_hidden_layers))
    return {k: v.contiguous().clone() for k, v in out.items()}


def save_pretrained(model, tokenizer, folder: str | Path) -> Path:
    """Save the course CLIP in both layouts (transformers and open_clip ``local-dir:``) + tokenizer
    + image processor, so ``CLIPModel``/``CLIPProcessor.from_pretrained(folder)`` and
    ``open_clip.create_model_and_transforms("local-dir:" + folder)`` / ``get_tokenizer`` all work."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(OPENAI_MEAN), image_std=list(OPENAI_STD)).save_pretrained(folder)
    save_file(to_open_clip_state_dict(model), str(folder / "open_clip_model.safetensors"))
    oc = {"model_cfg": open_clip_model_cfg(model.config),
          "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD), "interpolation": "bicubic",
                             "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(oc, indent=2) + "\n", encoding="utf-8")
    return folder


def load_course_clip(name: str = "course/clip-shapes"):
    """``(model, tokenizer)`` of the shipped course CLIP through transformers (eval mode, sdpa)."""
    from transformers import CLIPModel, CLIPTokenizer

    from . import hub

    path = hub.resolve(name, verbose=False)
    model = CLIPModel.from_pretrained(path, attn_implementation="sdpa").eval()
    tokenizer = CLIPTokenizer.from_pretrained(path)
    return model, tokenizer


# ============================================================================================
# Text augmentation at several granularities (scripts/train_clip.py, notebook 01)
# ============================================================================================
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
# Phrasings for a partial description; "{}" is "circle", "red shape" or "red circle".
PARTIAL_TEMPLATES: tuple[str, ...] = ("a {}.", "{}.", "one {}.", "a single {}.") + TEMPLATES


PARTIAL_KINDS = ("shape", "color", "shape+color", "counts", "colors")


def partial_captions(objects, n: int, seed: int, return_kinds: bool = False):
    """``n`` partial descriptions of a Shapes World scene built from ``scene.objects`` (training
    text augmentation, notebook 01): the full captions almost always attach a color to the shape,
    so a text naming only the shape ("a photo of a circle.") or only the color ("a red shape.") is
    out of the text tower's training distribution unless we add such texts.

    One object: the shape only ("a circle.", "a photo of a square."; 1/2), the color only
    ("a red shape.", "a red object."; 1/4) or color and shape ("a drawing of a red circle."; 1/4).
    Several objects: the shapes with their counts ("a circle and two squares."; 2/3) or the colors
    ("red and blue shapes."; 1/3). Deterministic given ``seed``. With ``return_kinds``, also the
    kind of each text (an entry of ``PARTIAL_KINDS``): which other scenes it describes as well.
    """
    import random

    from . import shapes

    if not objects:
        raise ValueError("partial_captions needs a scene with at least one object")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    out, kinds = [], []
    for _ in range(n):
        if len(objects) == 1:
            o = objects[0]
            kind = rng.choice(("shape", "shape", "color", "shape+color"))
            if kind == "shape":
                out.append(rng.choice(PARTIAL_TEMPLATES).format(o.shape))
            elif kind == "color":
                noun = rng.choice(("shape", "shape", "object", "figure"))
                out.append(rng.choice(PARTIAL_TEMPLATES).format(f"{o.color} {noun}"))
            else:
                out.append(rng.choice(PARTIAL_TEMPLATES).format(f"{o.color} {o.shape}"))
            kinds.append(kind)
            continue
        kinds.append("counts" if rng.random() < 2 / 3 else "colors")
        if kinds[-1] == "counts":  # shapes with counts, colors ignored
            counts = {}
            for o in objects:
                counts[o.shape] = counts.get(o.shape, 0) + 1
            parts = [("a " + sh) if k == 1 else f"{shapes.NUMBER_WORDS[k]} {PLURALS[sh]}"
                     for sh, k in rng.sample(list(counts.items()), len(counts))]
        else:  # colors, shapes ignored
            colors = list(dict.fromkeys(o.color for o in objects))
            parts = rng.sample(colors, len(colors))
            parts[-1] += " " + rng.choice(shapes.OBJECT_NOUNS)
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        out.append(text + ".")
    return (out, kinds) if return_kinds else out


def clip_loss_multi_positive(image_features: torch.Tensor, text_features: torch.Tensor,
                             logit_scale: torch.Tensor | float, positives: torch.Tensor) -> torch.Tensor:
    """``clip_loss`` when a text may describe several images of the batch (partial descriptions,
    "a circle.", in scripts/train_clip.py; notebook 01): ``positives[i, j]`` says text j describes
    image i (the diagonal must be true). Each row's (and column's) cross-entropy uses as target the
    uniform distribution over its positives (as in UniCL); with ``positives = I`` it is ``clip_loss``.
    """
    _check_2d("image_features", image_features)
    _check_same_shape("image_features", image_features, "text_features", text_features)
    n = image_features.shape[0]
    if positives.shape != (n, n) or not bool(positives.diagonal().all()):
        raise ValueError(f"positives must be a ({n}, {n}) boolean matrix with a true diagonal, "
                         f"got shape {tuple(positives.shape)}")
    # S_ij = s <I_i, T_j>
    logits = logit_scale * image_features @ text_features.T  # (N, N)
    p = positives.to(logits.dtype)
    # image -> text: targets uniform over the positives of row i; text -> image: of column j
    loss_i2t = -(p / p.sum(1, keepdim=True) * logits.log_softmax(dim=1)).sum(1).mean()
    loss_t2i = -(p / p.sum(0, keepdim=True) * logits.log_softmax(dim=0)).sum(0).mean()
    return (loss_i2t + loss_t2i) / 2


# ============================================================================================
# Measuring the course CLIP on held-out Shapes World scenes (notebook 01, benchmarks/bench_clip.py)
# ============================================================================================
def class_prompts(task: str) -> tuple[list[str], list[str]]:
    """``(labels, class names)`` of a zero-shot task on single-object scenes:
    ``"color"`` ("red shape"), ``"shape"`` ("circle") or ``"shape+color"`` ("red circle")."""
    from . import shapes

    if task == "color":
        return list(shapes.COLORS), [f"{c} shape" for c in shapes.COLORS]
    if task == "shape":
        return list(shapes.SHAPES), list(shapes.SHAPES)
    if task == "shape+color":
        labels = [f"{c} {s}" for c in shapes.COLORS for s in shapes.SHAPES]
        return labels, labels
    raise ValueError(f"unknown zero-shot task {task!r}; allowed: 'color', 'shape', 'shape+color'")


def scene_label(scene, task: str) -> str:
    """The ground-truth label of a single-object scene for ``task``."""
    o = scene.objects[0]
    return {"color": o.color, "shape": o.shape, "shape+color": f"{o.color} {o.shape}"}[task]


@torch.no_grad()
def embed_scenes(model, scenes, batch_size: int = 500) -> torch.Tensor:
    """``(N, D)`` normalized image embeddings of Shapes World scenes (at the model's resolution)."""
    from . import shapes

    size = model.config.vision_config.image_size
    out = [encode_images(model, shapes.render_batch(scenes[i:i + batch_size], size=size))
           for i in range(0, len(scenes), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, scenes, task: str, templates: Sequence[str] = TEMPLATES,
                       image_features: torch.Tensor | None = None) -> dict:
    """Zero-shot top-1 on single-object scenes: ``{"accuracy", "predictions", "targets", "labels"}``."""
    if any(len(s.objects) != 1 for s in scenes):
        raise ValueError("zero_shot_accuracy needs single-object scenes (make_scene(seed, n_objects=1))")
    labels, names = class_prompts(task)
    weights = zero_shot_classifier(lambda t: encode_texts(model, tokenizer, t), names, templates)
    feats = embed_scenes(model, scenes) if image_features is None else image_features
    pred, _ = zero_shot_predict(feats, weights)
    target = torch.tensor([labels.index(scene_label(s, task)) for s in scenes])
    return {"accuracy": (pred == target).float().mean().item(), "predictions": pred, "targets": target,
            "labels": labels}


def accuracy_of_part(result: dict, part: str) -> float:
    """Accuracy of the ``"color"`` or ``"shape"`` half of a ``"shape+color"`` zero-shot result: the
    24-way prediction "red circle" read as color "red" / shape "circle" (marginalizing the other)."""
    k = {"color": 0, "shape": 1}.get(part)
    if k is None:
        raise ValueError(f"part must be 'color' or 'shape', got {part!r}")
    labels = result["labels"]
    if len(labels) != 24 or any(len(l.split()) != 2 for l in labels):
        raise ValueError("accuracy_of_part needs the result of zero_shot_accuracy(..., 'shape+color', ...)")
    pred = [labels[i].split()[k] for i in result["predictions"].tolist()]
    true = [labels[i].split()[k] for i in result["targets"].tolist()]
    return sum(a == b for a, b in zip(pred, true)) / len(true)


@torch.no_grad()
def existence_retrieval(model, tokenizer, scenes, templates: Sequence[str] = ("is there a {}?",)) -> dict:
    """Multi-object "is there a {color} {shape}?" as retrieval over the 24 color-shape prompts.

    For each scene the 24 prompts are ranked by similarity; with k distinct objects present,
    ``r_precision`` = fraction of the top k that are present, ``top1`` = the best one is present,
    ``auc`` = probability that a present pair outranks an absent one.
    """
    labels, names = class_prompts("shape+color")
    weights = zero_shot_classifier(lambda t: encode_texts(model, tokenizer, t), names, templates)
    _, logits = zero_shot_predict(embed_scenes(model, scenes), weights)
    top1 = rprec = auc = 0.0
    for s, row in zip(scenes, logits):
        present = torch.zeros(len(labels), dtype=torch.bool)
        for o in s.objects:
            present[labels.index(f"{o.color} {o.shape}")] = True
        k = int(present.sum())
        order = row.argsort(descending=True)
        top1 += float(present[order[0]])
        rprec += present[order[:k]].float().mean().item()
        pos, neg = row[present], row[~present]
        auc += (pos[:, None] > neg[None, :]).float().mean().item()
    n = len(scenes)
    return {"top1": top1 / n, "r_precision": rprec / n, "auc": auc / n}


@torch.no_grad()
def retrieval_recall(model, tokenizer, scenes, caption_index: int | None = None, seed: int = 0) -> dict:
    """Image->text and text->image R@1 over ``len(scenes)`` scene/caption pairs (one caption per
    scene, drawn with ``seed`` unless ``caption_index`` fixes it). ``*_r1``: a hit is the exact
    partner; a caption shared word for word by several scenes (e.g. "A small blue square.") counts
    as a miss unless it is the partner, so 100% is not always reachable. ``*_r1_dup_hits``: a
    retrieved item whose caption is word for word the partner's caption also counts as a hit.
    ``n_duplicated``: how many of the captions are shared by more than one scene."""
    import random

    rng = random.Random(seed)
    caps = [s.captions[caption_index if caption_index is not None else rng.randrange(5)] for s in scenes]
    img = embed_scenes(model, scenes)
    txt = torch.cat([encode_texts(model, tokenizer, caps[i:i + 500]) for i in range(0, len(caps), 500)])
    sim = img @ txt.T  # (N, N)
    target = torch.arange(len(scenes))
    i2t = (sim.argmax(dim=1) == target).float().mean().item()
    t2i = (sim.argmax(dim=0) == target).float().mean().item()
    # duplicates counted as hits: caption ids, equal for word-for-word equal captions
    cid = {c: k for k, c in enumerate(dict.fromkeys(caps))}
    cap_id = torch.tensor([cid[c] for c in caps])  # (N,)
    i2t_dup = (cap_id[sim.argmax(dim=1)] == cap_id).float().mean().item()
    t2i_dup = (cap_id[sim.argmax(dim=0)] == cap_id).float().mean().item()
    n_dup = sum(caps.count(c) > 1 for c in caps)
    return {"image_to_text_r1": i2t, "text_to_image_r1": t2i, "image_to_text_r1_dup_hits": i2t_dup,
            "text_to_image_r1_dup_hits": t2i_dup, "n_duplicated": n_dup, "captions": caps}
