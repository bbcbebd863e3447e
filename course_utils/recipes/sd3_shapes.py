"""Recipe: the course's own text-to-image model, a tiny Stable Diffusion 3 on Shapes World (notebooks 11-12).

Everything is a real diffusers / transformers component, so the shipped folder loads with exactly the
code that loads ``stabilityai/stable-diffusion-3.5-medium``::

    StableDiffusion3Pipeline.from_pretrained(hub.resolve("course/sd3-shapes"))

- ``vae``: a tiny ``AutoencoderKL`` (two blocks: 32 x 32 x 3 images <-> 16 x 16 x 4 latents, SD3's
  ``use_quant_conv=False``), trained with L1 + L2 + a small KL on Shapes World renders; its
  ``scaling_factor`` / ``shift_factor`` standardise the latents as SD3's VAE config does (1.5305 / 0.0609);
- ``text_encoder`` / ``text_encoder_2``: the course CLIP's text tower (``CLIPTextModelWithProjection``
  read from ``data/models/clip-shapes``) in both CLIP slots -- SD3 has CLIP-L and OpenCLIP bigG, the course
  has one CLIP -- so pooled = 64 + 64 = 128 and the penultimate hidden states are 64 + 64 = 128 wide,
  exactly ``joint_attention_dim`` (no zero padding needed, unlike SD3's 2048 -> 4096);
  ``text_encoder_3`` (T5) is dropped: the pipeline puts ``max_sequence_length`` zero tokens in its place,
  and the model is trained with ``T5_TOKENS`` of them (pass ``max_sequence_length=T5_TOKENS``);
- ``transformer``: an ``SD3Transformer2DModel`` (patch 2 -> 64 image tokens, hidden 128, 4 joint blocks,
  RMS QK-norm), trained with rectified flow (logit-normal t, v = noise - x0, the timestep passed as
  1000 t as ``FlowMatchEulerDiscreteScheduler`` does), captions dropped to "" 10 % of the time so the
  pipeline's classifier-free guidance (negative prompt "") works;
- ``scheduler``: ``FlowMatchEulerDiscreteScheduler(shift=1.0)`` (SD3.5 uses 3.0 for 1024 px; 16 x 16
  latents need no shift).

``build_sd3_shapes`` is what ``scripts/train_mmdit.py`` runs. ``judges.ShapesJudge`` measures it.
"""
from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .. import hub
from ..config import seed_everything
from ..flow import interpolate, sample_timesteps, velocity_target
from ..training import History, cosine_schedule, train_loop
from ..world import shapes

__all__ = ["IMAGE_SIZE", "T5_TOKENS", "MAX_PROMPT_TOKENS", "COURSE_SD3", "short_prompt", "training_prompts",
           "make_vae", "train_vae", "set_latent_stats", "make_transformer", "make_pipeline", "train_transformer",
           "load_pipeline", "generate", "build_sd3_shapes"]

COURSE_SD3 = "course/sd3-shapes"
IMAGE_SIZE = 32
T5_TOKENS = 8  # zero tokens standing in for T5 (SD3's default max_sequence_length is 256)
MAX_PROMPT_TOKENS = 32  # the CLIP tokenizers' model_max_length in the pipeline (SD3: 77)
CAPTION_DROPOUT = 0.1
VAE_STEPS = 1000
MMDIT_STEPS = 2800
MMDIT_BATCH = 32
SEED = 0


# --------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------
def short_prompt(objects: Sequence[shapes.ShapeObject], rng: random.Random | None = None) -> str:
    """The evaluation prompts' form: ``"a red circle"``, ``"a blue square to the left of a yellow triangle"``
    (two objects: the relation of ``shapes.relation``, either object first)."""
    if len(objects) == 1:
        return _a(objects[0].label)
    if len(objects) != 2:
        raise ValueError(f"short prompts describe 1 or 2 objects, got {len(objects)}")
    a, b = objects if rng is None or rng.random() < 0.5 else objects[::-1]
    return f"{_a(a.label)} {shapes.relation(a, b)} {_a(b.label)}"


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def training_prompts(scene: shapes.Scene) -> list[str]:
    """What a scene is trained with: its short prompt (twice as likely, both orders for two objects) and its
    five Shapes World captions."""
    objs = scene.objects
    shorts = [short_prompt(objs)] * 2 if len(objs) == 1 else [short_prompt(objs), short_prompt(objs[::-1])]
    return shorts + list(scene.captions)


# --------------------------------------------------------------------------------------------
# The VAE
# --------------------------------------------------------------------------------------------
def make_vae(seed: int = SEED):
    """A tiny SD3-style ``AutoencoderKL``: (N, 3, 32, 32) in [-1, 1] <-> (N, 4, 16, 16); 159 k parameters."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                         up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                         latent_channels=4, norm_num_groups=8, sample_size=IMAGE_SIZE, mid_block_add_attention=False,
                         use_quant_conv=False, use_post_quant_conv=False)


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float in [-1, 1] (the VAE's range, as diffusers' ``VaeImageProcessor``)."""
    return images.float() / 127.5 - 1.0


def train_vae(images: torch.Tensor, steps: int = VAE_STEPS, *, seed: int = SEED, batch_size: int = 32,
              lr: float = 2e-3, kl_weight: float = 1e-4) -> tuple[torch.nn.Module, History]:
    """Train ``make_vae()`` on ``images`` ((N, 3, 32, 32) in [-1, 1]): L1 + L2 + kl_weight * KL per latent element
    (SD's autoencoder adds a perceptual and a GAN loss; flat-coloured shapes do without)."""
    vae = make_vae(seed)
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            yield images[torch.randint(0, len(images), (batch_size,), generator=g)]

    def loss_fn(model, x):
        post = model.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)  # reparameterised sample
        x_hat = model.decode(z).sample
        kl = post.kl().mean() / z[0].numel()
        return (x_hat - x).abs().mean() + ((x_hat - x) ** 2).mean() + kl_weight * kl, {"kl": kl.item()}

    opt = torch.optim.Adam(vae.parameters(), lr=lr)
    hist = train_loop(vae, batches(), loss_fn, opt, steps, scheduler=cosine_schedule(opt, steps, warmup=50), desc="VAE")
    return vae.eval(), hist


@torch.no_grad()
def encode_latents(vae, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The posterior means (N, 4, 16, 16) of ``images`` in [-1, 1], unscaled."""
    return torch.cat([vae.encode(images[i:i + batch_size]).latent_dist.mean for i in range(0, len(images), batch_size)])


def set_latent_stats(vae, latents: torch.Tensor) -> tuple[float, float]:
    """SD3's latent standardisation: ``shift_factor`` = mean, ``scaling_factor`` = 1 / std of the training latents,
    so the transformer sees (z - shift) * scale with unit variance and the pipeline decodes z / scale + shift."""
    shift = round(latents.mean().item(), 4)
    scale = round(1.0 / (latents - shift).std().item(), 4)
    vae.register_to_config(scaling_factor=scale, shift_factor=shift)
    return scale, shift


# --------------------------------------------------------------------------------------------
# Text encoders, transformer, pipeline
# --------------------------------------------------------------------------------------------
def text_components(clip_folder: str | Path | None = None):
    """(tokenizer, text encoder) from the course CLIP: a ``CLIPTokenizer`` with ``model_max_length`` 32 and the
    ``CLIPTextModelWithProjection`` part of its ``CLIPModel`` (the vision tower's weights are not read)."""
    from transformers import CLIPTextModelWithProjection, CLIPTokenizer
    from transformers.utils import logging

    folder = hub.resolve("course/clip-shapes", verbose=False) if clip_folder is None else clip_folder
    tok = CLIPTokenizer.from_pretrained(folder, model_max_length=MAX_PROMPT_TOKENS)
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # "vision_model.* not used": expected, the text tower is all SD3 needs
    try:
        enc = CLIPTextModelWithProjection.from_pretrained(folder).eval()
    finally:
        logging.set_verbosity(verbosity)
    return tok, enc.requires_grad_(False)


def make_transformer(seed: int = SEED, num_layers: int = 4, hidden: int = 128, head_dim: int = 32):
    """``SD3Transformer2DModel`` for 16 x 16 x 4 latents: patch 2 (64 tokens), ``hidden`` wide, RMS QK-norm,
    joint_attention_dim = pooled_projection_dim = 128 (two 64-wide CLIP slots)."""
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(seed)
    return SD3Transformer2DModel(sample_size=IMAGE_SIZE // 2, patch_size=2, in_channels=4, out_channels=4,
                                 num_layers=num_layers, attention_head_dim=head_dim, num_attention_heads=hidden // head_dim,
                                 joint_attention_dim=128, caption_projection_dim=hidden, pooled_projection_dim=128,
                                 pos_embed_max_size=IMAGE_SIZE // 4, qk_norm="rms_norm")


def make_pipeline(transformer, vae, clip_folder: str | Path | None = None):
    """A ``StableDiffusion3Pipeline`` around the course components (T5 slot empty)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    tok, enc = text_components(clip_folder)
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                                    vae=vae, text_encoder=enc, tokenizer=tok, text_encoder_2=enc, tokenizer_2=tok,
                                    text_encoder_3=None, tokenizer_3=None)


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The pipeline's own ``encode_prompt`` (so training sees exactly what sampling feeds): (B, 32 + 8, 128), (B, 128)."""
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=list(prompts), prompt_2=None, prompt_3=None,
                                              do_classifier_free_guidance=False, max_sequence_length=T5_TOKENS)
    return embeds, pooled


def train_transformer(pipe, latents: torch.Tensor, prompts: Sequence[Sequence[str]], steps: int = MMDIT_STEPS, *,
                      seed: int = SEED, batch_size: int = MMDIT_BATCH, lr: float = 1e-3, log=print) -> History:
    """Rectified flow on the standardised latents (N, 4, 16, 16) with each scene's prompts (one drawn per sample,
    "" with probability ``CAPTION_DROPOUT``)::

        x_t = (1 - t) x0 + t noise,  t = sigmoid(u), u ~ N(0, 1);   L = || v_theta(x_t, 1000 t, c) - (noise - x0) ||^2

    Measured (one-object held-out prompts, 20 steps, guidance 4, 192 samples): 1500 steps of batch 64 (21 min)
    drew blobs for squares -- shape 0.75 (square 0.31); about the same compute as 2800 steps of batch 32
    (0.52 s a step alone at 2 threads: 24.4 min; the shipped run took 24.6 min at 1 thread beside another job)
    draws them -- shape 0.84 (square 0.77), colour 0.98: at this stage more updates beat larger batches. With
    the VAE (5.6 min) the whole build takes about 30 min. An EMA of the weights (decay 0.998) gave the same
    adherence as the plain weights (shape 0.7604 vs 0.75 in the 1500-step run), so the plain weights ship.
    """
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    model = pipe.transformer

    def batches():
        while True:
            idx = torch.randint(0, len(latents), (batch_size,), generator=g)
            texts = ["" if rng.random() < CAPTION_DROPOUT else rng.choice(prompts[i]) for i in idx.tolist()]
            yield latents[idx], texts

    def loss_fn(m, batch):
        x0, texts = batch
        embeds, pooled = encode_prompts(pipe, texts)
        noise = torch.randn(x0.shape, generator=g)
        t = sample_timesteps(x0.shape[0], "logit_normal", generator=g)  # (B,)
        # x_t = (1 - t) x0 + t noise
        x_t = interpolate(x0, noise, t)
        v = m(hidden_states=x_t, encoder_hidden_states=embeds, pooled_projections=pooled, timestep=1000 * t).sample
        # || v_theta - (noise - x0) ||^2
        return F.mse_loss(v, velocity_target(x0, noise))

    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    return train_loop(model, batches(), loss_fn, opt, steps, scheduler=cosine_schedule(opt, steps, warmup=100),
                      desc="MM-DiT", callback=lambda s, loss: log(f"step {s}: loss {loss:.4f}") if s % 200 == 0 else None)


# --------------------------------------------------------------------------------------------
# Loading and sampling
# --------------------------------------------------------------------------------------------
def load_pipeline(name_or_path: str | None = None, *, device: str | torch.device = "cpu",
                  dtype: torch.dtype = torch.float32):
    """``StableDiffusion3Pipeline.from_pretrained`` on the shipped folder (or a hub id) without T5, as diffusers'
    SD3 docs load SD3 / SD3.5 with ``text_encoder_3=None, tokenizer_3=None``; progress bars off."""
    from diffusers import StableDiffusion3Pipeline

    path = hub.resolve(COURSE_SD3, verbose=False) if name_or_path is None else name_or_path
    if name_or_path is None and not (Path(path) / "model_index.json").exists():
        raise RuntimeError(f"{path} holds no pipeline; run `python scripts/train_mmdit.py` (about 25 min) first")
    pipe = StableDiffusion3Pipeline.from_pretrained(path, text_encoder_3=None, tokenizer_3=None, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, prompts: Sequence[str], *, steps: int = 20, guidance_scale: float = 4.0, seed: int = 0,
             max_sequence_length: int = T5_TOKENS) -> torch.Tensor:
    """Sample one image per prompt with the pipeline's ``__call__``: uint8 (N, 3, 32, 32)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    gen = torch.Generator().manual_seed(seed)
    out = pipe(prompt=list(prompts), num_inference_steps=steps, guidance_scale=guidance_scale, generator=gen,
               max_sequence_length=max_sequence_length, output_type="pt", height=IMAGE_SIZE, width=IMAGE_SIZE).images
    return (out.clamp(0, 1) * 255).round().to(torch.uint8).cpu()


# --------------------------------------------------------------------------------------------
# The whole build (scripts/train_mmdit.py)
# --------------------------------------------------------------------------------------------
def training_scenes(n: int) -> list[shapes.Scene]:
    """Train-split scenes, half with one object and half with two (the prompts the model is asked for)."""
    return [shapes.make_scene(s, n_objects=1 + s % 2) for s in shapes.split_seeds("train", n)]


def build_sd3_shapes(out: str | Path, *, n_scenes: int = 20000, vae_steps: int = VAE_STEPS,
                     mmdit_steps: int = MMDIT_STEPS, seed: int = SEED, log=print) -> dict:
    """Train the VAE, standardise its latents, train the transformer, save the pipeline to ``out``."""
    seed_everything(seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    facts: dict = {"seed": seed, "n_scenes": n_scenes}
    t0 = time.time()
    scenes = training_scenes(n_scenes)
    images = to_model_range(shapes.render_batch(scenes))
    log(f"{len(scenes)} scenes rendered in {time.time() - t0:.0f} s")
    t1 = time.time()
    vae, vae_hist = train_vae(images, vae_steps, seed=seed)
    facts["vae"] = {"steps": vae_steps, "final_loss": round(vae_hist.mean(50), 4), "minutes": round((time.time() - t1) / 60, 1)}
    latents = encode_latents(vae, images)
    scale, shift = set_latent_stats(vae, latents)
    latents = (latents - shift) * scale
    log(f"VAE: loss {facts['vae']['final_loss']} in {facts['vae']['minutes']} min; scaling_factor {scale}, shift_factor {shift}")
    pipe = make_pipeline(make_transformer(seed), vae)
    t2 = time.time()
    hist = train_transformer(pipe, latents, [training_prompts(s) for s in scenes], mmdit_steps, seed=seed, log=log)
    facts["transformer"] = {"steps": mmdit_steps, "batch_size": MMDIT_BATCH, "final_loss": round(hist.mean(50), 4),
                            "minutes": round((time.time() - t2) / 60, 1),
                            "parameters": sum(p.numel() for p in pipe.transformer.parameters())}
    log(f"MM-DiT: loss {facts['transformer']['final_loss']} in {facts['transformer']['minutes']} min")
    out = Path(out)
    pipe.save_pretrained(out)
    facts["minutes"] = round((time.time() - t0) / 60, 1)
    return facts


# --------------------------------------------------------------------------------------------
# Measuring it (the benchmark and the notebooks): the shapes judge, cross-checked by the course CLIP
# --------------------------------------------------------------------------------------------
def single_prompts() -> list[tuple[str, str, str]]:
    """All 24 one-object prompts ``("a red circle", "red", "circle")``, ``("an orange cross", ...)``."""
    return [(_a(f"{c} {s}"), c, s) for c in shapes.COLORS for s in shapes.SHAPES]


def pair_prompts(n: int, split: str = "test") -> list[tuple[str, tuple[str, str], str, tuple[str, str]]]:
    """``n`` two-object prompts ``("a blue square to the left of a yellow triangle", ("blue", "square"),
    "to the left of", ("yellow", "triangle"))`` from ``split`` scenes with two distinct colours."""
    out = []
    for s in shapes.split_seeds(split, 4 * n):
        a, b = shapes.make_scene(s, n_objects=2).objects
        if a.color != b.color:
            if s % 2:
                a, b = b, a
            out.append((short_prompt([a, b]), (a.color, a.shape), shapes.relation(a, b), (b.color, b.shape)))
            if len(out) == n:
                break
    return out


def evaluate(pipe, judge, *, samples_per_prompt: int = 8, n_pairs: int = 64, steps: int = 20,
             guidance_scale: float = 4.0, seed: int = 0, clip_model=None, clip_tokenizer=None,
             batch_size: int = 96) -> dict:
    """Generate for every one-object prompt (``samples_per_prompt`` seeds each) and ``n_pairs`` test-split
    two-object prompts; judge them (``judges.judge_single`` / ``judge_pair``). With the course CLIP, its
    zero-shot colour and shape readings of the one-object samples are reported beside the judge's."""
    from . import judges

    singles = [p for p in single_prompts() for _ in range(samples_per_prompt)]
    pairs = pair_prompts(n_pairs) if n_pairs else []
    texts = [p[0] for p in singles] + [p[0] for p in pairs]
    images = torch.cat([generate(pipe, texts[i:i + batch_size], steps=steps, guidance_scale=guidance_scale,
                                 seed=seed + i) for i in range(0, len(texts), batch_size)])
    dets = judge.detect(images)
    one = [judges.judge_single(d, c, s) for d, (_, c, s) in zip(dets, singles)]
    two = [judges.judge_pair(d, a, rel, b) for d, (_, a, rel, b) in zip(dets[len(singles):], pairs)]
    rate = lambda rows, k: round(sum(r[k] for r in rows) / max(len(rows), 1), 4)  # noqa: E731
    res = {"steps": steps, "guidance_scale": guidance_scale, "n_single": len(one), "n_pairs": len(two),
           "single": {k: rate(one, k) for k in ("color", "shape", "both")},
           "pairs": {k: rate(two, k) for k in ("colors", "objects", "relation", "all")},
           "images": images, "prompts": texts}
    if clip_model is not None:
        from .. import clip as clip_core
        from .clip import class_prompts, encode_images, encode_texts

        with torch.no_grad():
            feats = encode_images(clip_model, images[:len(singles)])
            for task, col in (("color", 1), ("shape", 2)):
                labels, names = class_prompts(task)
                w = clip_core.zero_shot_classifier(lambda t: encode_texts(clip_model, clip_tokenizer, t), names)
                pred = clip_core.zero_shot_predict(feats, w)[0].tolist()
                res.setdefault("clip", {})[task] = round(
                    sum(labels[p] == row[col] for p, row in zip(pred, singles)) / len(singles), 4)
    return res
