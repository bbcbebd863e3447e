"""Train the course CLIP on Shapes World and save it to data/models/clip-shapes (notebook 01).

    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_clip.py            # the shipped checkpoint
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python scripts/train_clip.py --steps 50 --out /tmp/clip-test

A transformers ``CLIPModel`` (ViT on 32 px images with 4x4 patches, width 64, 4 layers + a 2-layer
text transformer, sdpa attention) with CLIP's real BPE restricted to the course's words, trained
with the course's own loss (``course_utils.clip.clip_loss_multi_positive``: ``clip_loss`` with every
text of the batch that describes an image counted as its positive) on (image, caption) pairs of training-split
scenes (one of the five captions drawn at random each time; half of the 20,000 scenes have a single
object), temperature learned from ln(1/0.07) and clamped at ln(100). Each batch of 256 holds 64
single-object scenes together with their "shape twins" (same seed, color, size and position, another
shape): negatives that differ only in shape. Text augmentation at several granularities: with
probability 0.3 the caption is replaced by a partial description generated from ``scene.objects``
(``clip.partial_captions``: "a circle.", "a photo of a square.", "a red shape.", "a circle and two
squares."), so shape-only and color-only prompts are in the text tower's distribution. 500 steps;
fixed seeds, so running it again reproduces the checkpoint (up to CPU-kernel nondeterminism).
Measured here: 378 s of training, 469 s in all (data, training, evaluation) on 2 cores shared with
other jobs (load ~4); an earlier run of the same recipe under load 7-8 needed ~620 s of training.
Prints the zero-shot accuracies on held-out test scenes at the end.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import course_utils  # noqa: E402  (sets OMP_WAIT_POLICY before torch starts)
import torch  # noqa: E402

from course_utils import clip, shapes  # noqa: E402
from course_utils.training import cosine_schedule, train_loop  # noqa: E402


def shape_twin(scene, k: int):
    """The same single-object scene (seed, color, size, position) with another shape: a hard negative."""
    o = scene.objects[0]
    others = [sh for sh in shapes.SHAPES if sh != o.shape]
    return shapes.make_scene(scene.seed, size=scene.size, objects=[
        {"color": o.color, "shape": others[k % len(others)], "size": o.size, "cx": o.cx, "cy": o.cy}])


N_PARTIAL = 4  # partial descriptions per scene for the text augmentation


def build_data(n_scenes: int, tokenizer, context_length: int, image_size: int, single_fraction: float,
               twins: bool):
    """Pre-rendered training scenes and their five tokenized captions: the first
    ``single_fraction * n_scenes`` train seeds as single-object scenes, the next ones with 1-4 objects;
    with ``twins``, one "shape twin" per single-object scene is appended (index n_scenes + j)."""
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
        texts, k = clip.partial_captions(s.objects, N_PARTIAL, seed=i, return_kinds=True)
        part += texts
        kinds += [clip.PARTIAL_KINDS.index(x) for x in k]
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


def positives(t, kind, attrs):
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "data" / "models" / "clip-shapes")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--n-scenes", type=int, default=20000, help="training scenes (seeds 0..n-1 of the train split)")
    ap.add_argument("--single-fraction", type=float, default=0.5, help="share of single-object training scenes")
    ap.add_argument("--twin-pairs", type=int, default=64,
                    help="per batch, this many single-object scenes together with their shape twins")
    ap.add_argument("--partial-prob", type=float, default=0.3,
                    help="probability of replacing a caption by a partial description (text augmentation)")
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--patch-size", type=int, default=4)
    ap.add_argument("--vision-width", type=int, default=64)
    ap.add_argument("--vision-layers", type=int, default=4)
    ap.add_argument("--text-width", type=int, default=64)
    ap.add_argument("--text-layers", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=64)
    ap.add_argument("--context-length", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--eval-scenes", type=int, default=1000)
    args = ap.parse_args(argv)

    t_start = time.perf_counter()
    cfg = course_utils.setup(seed=args.seed, deterministic=False)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    tokenizer = clip.build_tokenizer(clip.shapes_corpus(), context_length=args.context_length)
    config = clip.make_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id,
                              image_size=args.image_size, patch_size=args.patch_size, vision_width=args.vision_width, vision_layers=args.vision_layers,
                              text_width=args.text_width, text_layers=args.text_layers,
                              embed_dim=args.embed_dim, context_length=args.context_length)
    model = clip.build_model(config)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"vocabulary {len(tokenizer)} tokens, {n_params / 1e6:.2f} M parameters", flush=True)

    twins = args.twin_pairs > 0
    images, ids, part_ids, part_kinds, attrs, n_single = build_data(args.n_scenes, tokenizer, args.context_length, args.image_size,
                                       args.single_fraction, twins)
    print(f"{args.n_scenes} training scenes ready after {time.perf_counter() - t_start:.0f} s", flush=True)
    gen = torch.Generator().manual_seed(args.seed)

    def batches():
        while True:
            idx = torch.randint(args.n_scenes, (args.batch_size - 2 * args.twin_pairs,), generator=gen)
            if twins:  # single-object scenes together with their shape twins: negatives that differ only in shape
                j = torch.randint(n_single, (args.twin_pairs,), generator=gen)
                idx = torch.cat([idx, j, args.n_scenes + j])
            k = torch.randint(5, (args.batch_size,), generator=gen)
            t = ids[idx, k]  # (B, L) one of the five full captions
            # with probability partial_prob, one of the partial descriptions instead
            use = torch.rand(args.batch_size, generator=gen) < args.partial_prob
            kp = torch.randint(N_PARTIAL, (args.batch_size,), generator=gen)
            t = torch.where(use[:, None], part_ids[idx, kp], t)
            kind = torch.where(use, part_kinds[idx, kp], -1)
            yield images[idx], t, positives(t, kind, attrs[idx])

    def loss_fn(model, batch):
        x, t, pos = batch
        # drop the padding columns after the longest caption of the batch (pooling is at the first EOS)
        t = t[:, : int((t == tokenizer.eos_token_id).int().argmax(dim=1).max()) + 1]
        img = clip.encode_images(model, x)  # (B, D), normalized
        txt = torch.nn.functional.normalize(model.get_text_features(input_ids=t).pooler_output, dim=-1)
        # clip_loss, with every text that describes image i counted as a positive of i (= clip_loss
        # when all texts are distinct full captions)
        loss = clip.clip_loss_multi_positive(img, txt, model.logit_scale.exp(), pos)
        return loss, {"logit_scale": model.logit_scale.exp().item()}

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    sched = cosine_schedule(opt, args.steps, warmup=args.warmup)
    t0 = time.perf_counter()

    def callback(step, loss):
        clip.clamp_logit_scale_(model)  # logit_scale <= ln(100)
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss:.4f}  scale {model.logit_scale.exp().item():6.2f}  "
                  f"{time.perf_counter() - t0:5.0f} s", flush=True)

    hist = train_loop(model, batches(), loss_fn, opt, args.steps, scheduler=sched, callback=callback, desc="clip")
    train_s = time.perf_counter() - t0
    model.eval()

    test = shapes.scenes("test", args.eval_scenes, n_objects=1)
    feats = clip.embed_scenes(model, test)
    res = {task: clip.zero_shot_accuracy(model, tokenizer, test, task, image_features=feats)["accuracy"]
           for task in ("color", "shape", "shape+color")}
    print("zero-shot top-1 on held-out single-object test scenes:",
          ", ".join(f"{k} {v:.4f}" for k, v in res.items()), flush=True)

    clip.save_pretrained(model, tokenizer, args.out)
    meta = {"script": "scripts/train_clip.py", "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"},
            "parameters": n_params, "final_loss": round(hist.mean(20), 4),
            "zero_shot_test_single_object": {k: round(v, 4) for k, v in res.items()}}
    (args.out / "training_info.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    size_mb = sum(f.stat().st_size for f in args.out.iterdir()) / 1e6
    print(f"saved to {args.out} ({size_mb:.1f} MB); training {train_s:.0f} s, total {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
