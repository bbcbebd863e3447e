"""The course CLIP: build, train, save, load and measure it, and the real CLIPs' pipelines (notebook 01).

- build: ``make_config`` / ``build_model`` -- a transformers ``CLIPModel`` (small ViT + small text
  transformer, sdpa attention) with CLIP's real BPE restricted to Shapes World's words
  (``course_utils.world.text.build_tokenizer``);
- call: ``encode_images`` (E_I) / ``encode_texts`` (E_T), on the model's device and dtype;
- train: ``train`` (what ``scripts/train_clip.py`` runs; ``TrainConfig`` holds the shipped recipe);
- ship: ``save_pretrained`` writes one folder in both the transformers layout and open_clip's
  ``local-dir:`` layout (``course_utils.bridges.open_clip``), so ``CLIPModel.from_pretrained(folder)``
  and ``open_clip.create_model_and_transforms("local-dir:" + folder)`` load the same weights;
  ``load_course_clip`` loads it back;
- judge: zero-shot accuracy, multi-object existence and retrieval R@k on held-out test scenes;
- the "pipeline real" section: ``open_clip_source`` / ``load_open_clip`` / ``open_clip_zero_shot``
  (OpenCLIP ViT-B/32 online, the course CLIP through ``local-dir:`` offline) and ``load_hf_clip`` /
  ``hf_clip_zero_shot`` (``openai/clip-vit-base-patch32`` through ``CLIPModel`` + ``CLIPProcessor``).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import clip, hub, training
from ..bridges.open_clip import open_clip_model_cfg, to_open_clip_state_dict
from ..world import shapes
from ..world import text as world_text

COURSE_CLIP = "course/clip-shapes"
OPEN_CLIP_NAME = "open_clip/ViT-B-32/laion2b_s34b_b79k"
HF_CLIP_NAME = "openai/clip-vit-base-patch32"


# ============================================================================================
# Build and call
# ============================================================================================
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
                     logit_scale_init_value=clip.INIT_LOGIT_SCALE)
    cfg._attn_implementation = "sdpa"
    return cfg


def build_model(config):
    """A randomly initialized ``CLIPModel`` with sdpa attention (eager is ~7x slower on a CPU)."""
    from transformers import CLIPModel

    model = CLIPModel._from_config(config, attn_implementation="sdpa")
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"expected sdpa attention, got {model.config._attn_implementation!r}")
    return model


def encode_images(model, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """``E_I``: ``(N, 3, H, W)`` images (uint8 or [0, 1]) -> ``(N, D)`` embeddings (L2-normalized),
    computed on the model's device in its dtype."""
    pixels = clip.normalize_images(images.to(model.device), dtype=model.dtype)
    out = model.get_image_features(pixel_values=pixels).pooler_output
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
        model.logit_scale.clamp_(0, clip.MAX_LOGIT_SCALE)


# ============================================================================================
# Ship and load
# ============================================================================================
def save_pretrained(model, tokenizer, folder: str | Path) -> Path:
    """Save a CLIP in both layouts (transformers and open_clip ``local-dir:``) + tokenizer + image
    processor, so ``CLIPModel``/``CLIPProcessor.from_pretrained(folder)`` and
    ``open_clip.create_model_and_transforms("local-dir:" + folder)`` / ``get_tokenizer`` all work."""
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    size = model.config.vision_config.image_size
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=list(clip.OPENAI_MEAN), image_std=list(clip.OPENAI_STD)).save_pretrained(folder)
    save_file(to_open_clip_state_dict(model), str(folder / "open_clip_model.safetensors"))
    oc = {"model_cfg": open_clip_model_cfg(model.config),
          "preprocess_cfg": {"mean": list(clip.OPENAI_MEAN), "std": list(clip.OPENAI_STD), "interpolation": "bicubic",
                             "resize_mode": "shortest"}}
    (folder / "open_clip_config.json").write_text(json.dumps(oc, indent=2) + "\n", encoding="utf-8")
    return folder


def load_course_clip(name: str = COURSE_CLIP, *, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32):
    """``(model, tokenizer)`` of the shipped course CLIP through transformers (eval mode, sdpa)."""
    return load_hf_clip(hub.resolve(name, verbose=False), device=device, dtype=dtype, processor=False)


# ============================================================================================
# Train (scripts/train_clip.py)
# ============================================================================================
@dataclass
class TrainConfig:
    """The shipped recipe (``data/models/clip-shapes/training_info.json`` records it)."""

    steps: int = 500
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup: int = 30
    n_scenes: int = 20000        # training scenes (seeds 0..n-1 of the train split)
    single_fraction: float = 0.5  # share of single-object training scenes
    twin_pairs: int = 64          # per batch, this many single-object scenes together with their shape twins
    partial_prob: float = 0.3     # probability of replacing a caption by a partial description
    image_size: int = 32
    patch_size: int = 4
    vision_width: int = 64
    vision_layers: int = 4
    text_width: int = 64
    text_layers: int = 2
    embed_dim: int = 64
    context_length: int = 48
    seed: int = 0
    eval_scenes: int = 1000


N_PARTIAL = 4  # partial descriptions per scene for the text augmentation


def shape_twin(scene, k: int):
    """The same single-object scene (seed, color, size, position) with another shape: a hard negative."""
    o = scene.objects[0]
    others = [sh for sh in shapes.SHAPES if sh != o.shape]
    return shapes.make_scene(scene.seed, size=scene.size, objects=[
        {"color": o.color, "shape": others[k % len(others)], "size": o.size, "cx": o.cx, "cy": o.cy}])


def build_data(n_scenes: int, tokenizer, context_length: int, image_size: int, single_fraction: float,
               twins: bool):
    """Pre-rendered training scenes and their five tokenized captions: the first
    ``single_fraction * n_scenes`` train seeds as single-object scenes, the next ones with 1-4 objects;
    with ``twins``, one "shape twin" per single-object scene is appended (index n_scenes + j).

    Returns ``(images (N, 3, S, S) uint8, ids (N, 5, L), partial ids (N, N_PARTIAL, L), partial kinds
    (N, N_PARTIAL), attributes (N, 4), n_single)``."""
    n_single = int(round(single_fraction * n_scenes))
    scene_list = (shapes.scenes("train", n_single, size=image_size, n_objects=1)
                  + shapes.scenes("train", n_scenes - n_single, size=image_size, start=n_single))
    if twins:
        scene_list += [shape_twin(s, j) for j, s in enumerate(scene_list[:n_single])]
    images = shapes.render_batch(scene_list)  # (N, 3, S, S) uint8
    caps = [c for s in scene_list for c in s.captions]
    ids = tokenizer(caps, padding="max_length", truncation=True, max_length=context_length,
                    return_tensors="pt").input_ids.view(len(scene_list), 5, context_length)  # (N, 5, L)
    # text augmentation: N_PARTIAL partial descriptions per scene ("a circle.", "a red shape.",
    # "a circle and two squares."), so that shape-only and color-only texts are in distribution
    part, kinds = [], []
    for i, s in enumerate(scene_list):
        texts, k = world_text.partial_captions(s.objects, N_PARTIAL, seed=i, return_kinds=True)
        part += texts
        kinds += [world_text.PARTIAL_KINDS.index(x) for x in k]
    part_ids = tokenizer(part, padding="max_length", truncation=True, max_length=context_length,
                         return_tensors="pt").input_ids.view(len(scene_list), N_PARTIAL, context_length)
    # what each scene is, to know which scenes a partial description also describes
    sig = {}
    attrs = torch.tensor([[shapes.SHAPES.index(s.objects[0].shape) if len(s.objects) == 1 else -1,
                           list(shapes.COLORS).index(s.objects[0].color) if len(s.objects) == 1 else -1,
                           sig.setdefault(("n",) + tuple(sorted(o.shape for o in s.objects)), len(sig)),
                           sig.setdefault(("c",) + tuple(sorted({o.color for o in s.objects})), len(sig))]
                          for s in scene_list])  # (N, 4): shape, color (single object), shape counts, colors
    return images, ids, part_ids, torch.tensor(kinds).view(len(scene_list), N_PARTIAL), attrs, n_single


def positives(t: torch.Tensor, kind: torch.Tensor, attrs: torch.Tensor) -> torch.Tensor:
    """``(B, B)`` bool: text j describes image i (its own pair, an identical text, or a partial
    description that is true of scene i too: "a circle." for every single circle)."""
    sh, co, cnt, col = attrs.unbind(1)  # (B,) each
    same_sh = (sh[:, None] == sh[None, :]) & (sh[None, :] >= 0)
    same_co = (co[:, None] == co[None, :]) & (co[None, :] >= 0)
    k = kind[None, :]  # -1: a full caption
    pos = ((k == 0) & same_sh) | ((k == 1) & same_co) | ((k == 2) & same_sh & same_co)
    pos |= ((k == 3) & (cnt[:, None] == cnt[None, :])) | ((k == 4) & (col[:, None] == col[None, :]))
    pos |= (t[:, None, :] == t[None, :, :]).all(-1)  # identical token ids (diagonal included)
    return pos


def train(tc: TrainConfig, out: str | Path | None = None, *, log=print) -> dict:
    """Train the course CLIP on Shapes World with ``tc`` (CPU); save it to ``out`` when given
    (``save_pretrained`` + ``training_info.json``). Returns ``{"model", "tokenizer", "history",
    "zero_shot", "train_seconds"}``.

    Loss: ``clip.clip_loss_multi_positive`` (``clip_loss`` with every text of the batch that
    describes an image counted as its positive); batches of ``tc.batch_size`` hold ``tc.twin_pairs``
    single-object scenes with their shape twins; with probability ``tc.partial_prob`` a caption is
    replaced by a partial description (``world.text.partial_captions``); temperature learned from
    ln(1/0.07), clamped at ln(100). Fixed seeds: the same ``tc`` reproduces the same weights (up to
    CPU-kernel nondeterminism).
    """
    from ..config import setup

    t_start = time.perf_counter()
    setup(seed=tc.seed, deterministic=False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = world_text.build_tokenizer(world_text.shapes_corpus(), context_length=tc.context_length)
    config = make_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id,
                         image_size=tc.image_size, patch_size=tc.patch_size, vision_width=tc.vision_width,
                         vision_layers=tc.vision_layers, text_width=tc.text_width, text_layers=tc.text_layers,
                         embed_dim=tc.embed_dim, context_length=tc.context_length)
    model = build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"vocabulary {len(tokenizer)} tokens, {n_params / 1e6:.2f} M parameters")

    twins = tc.twin_pairs > 0
    images, ids, part_ids, part_kinds, attrs, n_single = build_data(tc.n_scenes, tokenizer, tc.context_length,
                                                                    tc.image_size, tc.single_fraction, twins)
    log(f"{tc.n_scenes} training scenes ready after {time.perf_counter() - t_start:.0f} s")
    gen = torch.Generator().manual_seed(tc.seed)

    def batches():
        while True:
            idx = torch.randint(tc.n_scenes, (tc.batch_size - 2 * tc.twin_pairs,), generator=gen)
            if twins:  # single-object scenes together with their shape twins: negatives that differ only in shape
                j = torch.randint(n_single, (tc.twin_pairs,), generator=gen)
                idx = torch.cat([idx, j, tc.n_scenes + j])
            k = torch.randint(5, (tc.batch_size,), generator=gen)
            t = ids[idx, k]  # (B, L) one of the five full captions
            # with probability partial_prob, one of the partial descriptions instead
            use = torch.rand(tc.batch_size, generator=gen) < tc.partial_prob
            kp = torch.randint(N_PARTIAL, (tc.batch_size,), generator=gen)
            t = torch.where(use[:, None], part_ids[idx, kp], t)
            kind = torch.where(use, part_kinds[idx, kp], -1)
            yield images[idx], t, positives(t, kind, attrs[idx])

    def loss_fn(model, batch):
        x, t, pos = batch
        # drop the padding columns after the longest caption of the batch (pooling is at the first EOS)
        t = t[:, : int((t == tokenizer.eos_token_id).int().argmax(dim=1).max()) + 1]
        img = encode_images(model, x)  # (B, D), normalized
        txt = F.normalize(model.get_text_features(input_ids=t).pooler_output, dim=-1)
        # clip_loss, with every text that describes image i counted as a positive of i (= clip_loss
        # when all texts are distinct full captions)
        loss = clip.clip_loss_multi_positive(img, txt, model.logit_scale.exp(), pos)
        return loss, {"logit_scale": model.logit_scale.exp().item()}

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = training.cosine_schedule(opt, tc.steps, warmup=tc.warmup)
    t0 = time.perf_counter()

    def callback(step, loss):
        clamp_logit_scale_(model)  # logit_scale <= ln(100)
        if step % 50 == 0 or step == tc.steps - 1:
            log(f"step {step:4d}  loss {loss:.4f}  scale {model.logit_scale.exp().item():6.2f}  "
                f"{time.perf_counter() - t0:5.0f} s")

    hist = training.train_loop(model, batches(), loss_fn, opt, tc.steps, scheduler=sched, callback=callback,
                               desc="clip")
    train_s = time.perf_counter() - t0
    model.eval()

    test = shapes.scenes("test", tc.eval_scenes, n_objects=1)
    feats = embed_scenes(model, test)
    res = {task: zero_shot_accuracy(model, tokenizer, test, task, image_features=feats)["accuracy"]
           for task in ("color", "shape", "shape+color")}
    log("zero-shot top-1 on held-out single-object test scenes: " + ", ".join(f"{k} {v:.4f}" for k, v in res.items()))
    if out is not None:
        out = Path(out)
        save_pretrained(model, tokenizer, out)
        meta = {"script": "scripts/train_clip.py", "args": asdict(tc), "parameters": n_params,
                "final_loss": round(hist.mean(20), 4),
                "zero_shot_test_single_object": {k: round(v, 4) for k, v in res.items()}}
        (out / "training_info.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        size_mb = sum(f.stat().st_size for f in out.iterdir()) / 1e6
        log(f"saved to {out} ({size_mb:.1f} MB); training {train_s:.0f} s, total {time.perf_counter() - t_start:.0f} s")
    return {"model": model, "tokenizer": tokenizer, "history": hist, "zero_shot": res, "train_seconds": train_s}


# ============================================================================================
# Judge on held-out Shapes World scenes (notebook 01, benchmarks/bench_clip.py)
# ============================================================================================
def class_prompts(task: str) -> tuple[list[str], list[str]]:
    """``(labels, class names)`` of a zero-shot task on single-object scenes:
    ``"color"`` ("red shape"), ``"shape"`` ("circle") or ``"shape+color"`` ("red circle")."""
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
    size = model.config.vision_config.image_size
    out = [encode_images(model, shapes.render_batch(scenes[i:i + batch_size], size=size))
           for i in range(0, len(scenes), batch_size)]
    return torch.cat(out)


@torch.no_grad()
def zero_shot_accuracy(model, tokenizer, scenes, task: str, templates: Sequence[str] = clip.TEMPLATES,
                       image_features: torch.Tensor | None = None) -> dict:
    """Zero-shot top-1 on single-object scenes: ``{"accuracy", "predictions", "targets", "labels"}``
    (predictions and targets on the CPU)."""
    if any(len(s.objects) != 1 for s in scenes):
        raise ValueError("zero_shot_accuracy needs single-object scenes (make_scene(seed, n_objects=1))")
    labels, names = class_prompts(task)
    weights = clip.zero_shot_classifier(lambda t: encode_texts(model, tokenizer, t), names, templates)
    feats = embed_scenes(model, scenes) if image_features is None else image_features
    pred = clip.zero_shot_predict(feats, weights)[0].cpu()
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
    weights = clip.zero_shot_classifier(lambda t: encode_texts(model, tokenizer, t), names, templates)
    logits = clip.zero_shot_predict(embed_scenes(model, scenes), weights)[1].float().cpu()
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
def retrieval_recall(model, tokenizer, scenes, caption_index: int | None = None, seed: int = 0,
                     gallery_size: int | None = None) -> dict:
    """Image->text and text->image R@1 over ``len(scenes)`` scene/caption pairs (one caption per
    scene, drawn with ``seed`` unless ``caption_index`` fixes it), each query searching a gallery of
    ``gallery_size`` pairs (consecutive scenes; default all of them), averaged over galleries
    (``clip.recall_at_k``). ``*_r1``: a hit is the exact partner; a caption shared word for word by
    several scenes (e.g. "A small blue square.") counts as a miss unless it is the partner, so 100%
    is not always reachable. ``*_r1_dup_hits``: a retrieved item whose caption is word for word the
    partner's caption also counts as a hit. ``n_duplicated``: how many of the captions are shared by
    more than one scene (in the whole set). ``chance``: 1 / gallery size."""
    rng = random.Random(seed)
    caps = [s.captions[caption_index if caption_index is not None else rng.randrange(5)] for s in scenes]
    img = embed_scenes(model, scenes)
    txt = torch.cat([encode_texts(model, tokenizer, caps[i:i + 500]) for i in range(0, len(caps), 500)])
    sim = (img @ txt.T).float().cpu()  # (N, N)
    i2t, t2i = clip.recall_at_k(sim, 1, gallery_size=gallery_size)
    # duplicates counted as hits: caption ids, equal for word-for-word equal captions
    cid = {c: k for k, c in enumerate(dict.fromkeys(caps))}
    cap_id = torch.tensor([cid[c] for c in caps])  # (N,)
    i2t_dup, t2i_dup = clip.recall_at_k(sim, 1, ids=cap_id, gallery_size=gallery_size)
    n_dup = sum(caps.count(c) > 1 for c in caps)
    g = len(scenes) if gallery_size is None else gallery_size
    return {"image_to_text_r1": i2t.item(), "text_to_image_r1": t2i.item(), "image_to_text_r1_dup_hits": i2t_dup.item(),
            "text_to_image_r1_dup_hits": t2i_dup.item(), "n_duplicated": n_dup, "captions": caps,
            "gallery_size": g, "chance": 1 / g}


# ============================================================================================
# Pipeline real (notebook 01, section 9): the same calls on the hub models and on the course CLIP
# ============================================================================================
def open_clip_source(name: str = OPEN_CLIP_NAME) -> tuple[str, str | None, bool]:
    """``(model_name, pretrained, offline)`` for ``open_clip.create_model_and_transforms``:
    ``("ViT-B-32", "laion2b_s34b_b79k", False)`` when downloads are allowed, else the course CLIP's
    folder through open_clip's ``local-dir:`` schema (``pretrained`` is then ignored)."""
    resolved = hub.resolve(name)
    if hub.is_course_path(resolved):
        return "local-dir:" + resolved, None, True
    parts = resolved.split("/")
    if len(parts) != 3 or parts[0] != "open_clip":
        raise ValueError(f"expected an open_clip name 'open_clip/<architecture>/<pretrained tag>', got {resolved!r}")
    return parts[1], parts[2], False


def load_open_clip(model_name: str, pretrained: str | None = None, *, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32):
    """``(model, preprocess, tokenizer)`` through open_clip's own loaders, the model on ``device``
    in ``dtype`` and in eval mode (``model_name`` may be ``"local-dir:<folder>"``)."""
    import open_clip

    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    model = model.to(device=device, dtype=dtype).eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


@torch.no_grad()
def open_clip_zero_shot(model, preprocess, tokenizer, images: Sequence, classes: Sequence[str],
                        template: str = "a photo of a {}.") -> dict:
    """Zero-shot over ``classes`` with open_clip's calls: ``{"probs" (n, C), "image_features" (n, D),
    "text_features" (C, D), "prompts"}``; ``images`` are PIL images, ``preprocess`` open_clip's."""
    p = next(model.parameters())
    prompts = [template.format(c) for c in classes]
    pixel = torch.stack([preprocess(im) for im in images]).to(p.device, p.dtype)  # (n, 3, H, W)
    image_features = model.encode_image(pixel, normalize=True)  # (n, D)
    text_features = model.encode_text(tokenizer(prompts).to(p.device), normalize=True)  # (C, D)
    # p(class | image) = softmax(100 cos(I, T)), open_clip's zero-shot scale
    probs = (100.0 * image_features @ text_features.T).float().softmax(dim=-1)  # (n, C)
    return {"probs": probs, "image_features": image_features, "text_features": text_features, "prompts": prompts}


def load_hf_clip(name_or_path: str, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 processor: bool = True):
    """``(model, processor)`` through transformers' loaders (``CLIPModel`` with sdpa attention, on
    ``device`` in ``dtype``, eval mode; ``CLIPProcessor``); with ``processor=False``, the tokenizer
    instead of the processor."""
    from transformers import CLIPModel, CLIPProcessor, CLIPTokenizer

    model = CLIPModel.from_pretrained(name_or_path, attn_implementation="sdpa").to(device=device, dtype=dtype).eval()
    extra = CLIPProcessor.from_pretrained(name_or_path) if processor else CLIPTokenizer.from_pretrained(name_or_path)
    return model, extra


@torch.no_grad()
def hf_clip_zero_shot(model, processor, images: Sequence, classes: Sequence[str],
                      template: str = "a photo of a {}.") -> dict:
    """Zero-shot over ``classes`` with transformers' calls (``CLIPProcessor`` + ``CLIPModel``):
    ``{"probs" (n, C), "image_embeds" (n, D), "text_embeds" (C, D), "prompts"}`` (embeddings
    L2-normalized; texts padded to the model's context length, as open_clip's tokenizer does)."""
    prompts = [template.format(c) for c in classes]
    inputs = processor(text=prompts, images=list(images), return_tensors="pt", padding="max_length",
                       max_length=model.config.text_config.max_position_embeddings, truncation=True)
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    out = model(**inputs)
    return {"probs": out.logits_per_image.float().softmax(dim=-1), "image_embeds": F.normalize(out.image_embeds, dim=-1),
            "text_embeds": F.normalize(out.text_embeds, dim=-1), "prompts": prompts}
