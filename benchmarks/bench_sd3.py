"""The course's text-to-image model (notebooks 11-12): held-out prompt adherence and speed vs diffusers.

Quality, judged by ``recipes.judges.ShapesJudge`` (palette colour + a shape CNN trained on real renders) and
cross-checked by the course CLIP's zero-shot colour/shape readings: every one-object prompt ("a red circle",
24 of them) with several seeds, and two-object prompts from test-split scenes ("a blue square to the left of
a yellow triangle"), over Euler steps x classifier-free guidance, sampled with the shipped
``StableDiffusion3Pipeline``. Reference rows: the judge on real test renders and on their VAE round trips
(what the latent space lets through). Speed: the course ``mmdit.MMDiT`` vs diffusers'
``SD3Transformer2DModel`` with the shipped weights.
"""
from __future__ import annotations

import torch

from benchmarks import time_per_call
from course_utils import hub
from course_utils.bridges.diffusers_sd3 import from_diffusers
from course_utils.recipes import judges, sd3_shapes
from course_utils.recipes.clip import load_course_clip
from course_utils.world import shapes


def _real_rows(pipe, judge, n: int) -> list[dict]:
    scenes = [shapes.make_scene(s, n_objects=1) for s in shapes.split_seeds("test", n)]
    images = shapes.render_batch(scenes)
    with torch.no_grad():
        x = sd3_shapes.to_model_range(images)
        recon = pipe.vae.decode(pipe.vae.encode(x).latent_dist.mean).sample
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    rows = []
    for name, imgs in (("real test renders", images), ("their VAE round trips", recon)):
        res = [judges.judge_single(d, s.objects[0].color, s.objects[0].shape) for d, s in zip(judge.detect(imgs), scenes)]
        rows.append({"model": name, "color": round(sum(r["color"] for r in res) / n, 4),
                     "shape": round(sum(r["shape"] for r in res) / n, 4), "both": round(sum(r["both"] for r in res) / n, 4)})
    return rows


def run(fast: bool = True) -> dict:
    if not hub.COURSE_MODELS[sd3_shapes.COURSE_SD3].path.is_dir():
        return {"title": "Text-to-image (sd3-shapes)", "rows": [],
                "notes": "Not measured: run scripts/train_mmdit.py to build data/models/sd3-shapes."}
    pipe = sd3_shapes.load_pipeline()
    judge = judges.load_shapes_judge()
    clip_model, clip_tok = load_course_clip()
    rows = _real_rows(pipe, judge, 200 if fast else 1000)
    per_prompt, n_pairs = (4, 48) if fast else (16, 200)
    grid = ((10, 4.0), (20, 1.0), (20, 2.0), (20, 4.0), (20, 7.0)) if fast else \
        tuple((s, w) for s in (4, 10, 20, 28) for w in (1.0, 2.0, 4.0, 7.0))
    for steps, w in grid:
        res = sd3_shapes.evaluate(pipe, judge, samples_per_prompt=per_prompt, n_pairs=n_pairs, steps=steps,
                                  guidance_scale=w, clip_model=clip_model, clip_tokenizer=clip_tok)
        rows.append({"model": "sd3-shapes", "steps": steps, "guidance": w, **res["single"],
                     "CLIP color": res["clip"]["color"], "CLIP shape": res["clip"]["shape"],
                     **{f"pair {k}": v for k, v in res["pairs"].items()}})
    # speed: the shipped transformer in the course MMDiT and in diffusers
    ref = pipe.transformer.eval()
    ours = from_diffusers(ref).eval()
    g = torch.Generator().manual_seed(0)
    x, c, p, t = (torch.randn(64, 4, 16, 16, generator=g), torch.randn(64, 40, 128, generator=g),
                  torch.randn(64, 128, generator=g), torch.rand(64, generator=g) * 1000)
    reps = 5 if fast else 20
    with torch.no_grad():
        err = float((ours(x, t, c, p) - ref(hidden_states=x, encoder_hidden_states=c, pooled_projections=p,
                                            timestep=t).sample).abs().max())
        t_ours = time_per_call(lambda: ours(x, t, c, p), reps)
        t_ref = time_per_call(lambda: ref(hidden_states=x, encoder_hidden_states=c, pooled_projections=p, timestep=t), reps)
    rows.append({"model": "speed: course MMDiT forward, batch 64", "ms": round(1000 * t_ours, 2), "max |diff|": err})
    rows.append({"model": "speed: diffusers SD3Transformer2DModel forward, batch 64", "ms": round(1000 * t_ref, 2)})
    notes = (f"{24 * per_prompt} one-object samples per row ({per_prompt} seeds x the 24 colour-shape prompts) and "
             f"{n_pairs} two-object prompts from test-split scenes (distinct colours); 'pair objects' = both objects "
             "with the right colour and shape, 'pair relation' = their box centres in the prompt's relation, 'pair all' "
             "= both. guidance = the pipeline's guidance_scale (1 = no guidance), negative prompt ''. The judge reads "
             "colours off the palette and shapes with a CNN trained on real renders (1.0 on 1448 held-out masks). "
             "Targets (issue 11): one-object prompts at <= 20 steps: colour >= 0.95, shape >= 0.80, both >= 0.75. "
             "CPU timings, shared machine.")
    return {"title": "Text-to-image (sd3-shapes): held-out prompt adherence and speed", "rows": rows, "notes": notes}
