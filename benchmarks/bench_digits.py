"""Digits DiT / rectified flow (notebooks 09-10): sample quality on held-out digits and speed vs diffusers.

Quality: class-consistency (the course classifier's agreement with the requested class) and
diversity (within-class mean pairwise distance of samples / that of the real test digits) and the
energy distance of the samples to the real test digits (64-d pixels; lower is closer), over
Euler steps x guidance for the logit-normal model (shipped ``course/dit-digits``), the uniform-t
model trained with the same compute, and the 2-RF (reflow) model. Speed: the course ``DiT`` vs
diffusers' ``DiTTransformer2DModel`` with the same weights.
"""
from __future__ import annotations

import torch

from benchmarks import time_per_call
from course_utils import hub
from course_utils.bridges.diffusers_dit import from_diffusers
from course_utils.data import load_digits
from course_utils.evaluation import class_consistency, diversity_ratio, energy_distance
from course_utils.recipes.digits import sample_digits
from course_utils.recipes.judges import load_digits_judge

MODELS = (("logit-normal (1-RF, shipped)", "course/dit-digits"), ("uniform (1-RF)", "course/dit-digits-uniform"),
          ("2-RF (reflow)", "course/dit-digits-reflow"))


def run(fast: bool = True) -> dict:
    from diffusers import DiTTransformer2DModel

    torch.manual_seed(0)
    x_test, y_test = load_digits("test", scale="symmetric")
    clf = load_digits_judge()
    n_per = 20 if fast else 100
    labels = torch.arange(10).repeat_interleave(n_per)
    noise = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(0))
    rows = [{"model": "real test digits", "steps": "", "guidance": "",
             "class-consistency": round(class_consistency(clf, x_test, y_test), 4), "diversity": 1.0}]
    x_train, y_train = load_digits("train", scale="symmetric")
    means = torch.stack([x_train[y_train == k].mean(0) for k in range(10)])[labels]
    rows.append({"model": "blurry class means", "steps": "", "guidance": "",
                 "class-consistency": round(class_consistency(clf, means, labels), 4),
                 "diversity": round(diversity_ratio(means, labels, x_test, y_test), 4),
                 "energy dist.": round(energy_distance(means, x_test), 4)})
    nets = {}
    skipped = []
    for name, hub_name in MODELS:
        if not hub.COURSE_MODELS[hub_name].path.is_dir():
            skipped.append(hub_name)
            continue
        net = DiTTransformer2DModel.from_pretrained(hub.resolve(hub_name, verbose=False)).eval()
        nets[name] = net
        grid = ((1, 2, 4, 10, 50), (1.0, 2.0, 4.0)) if "1-RF" in name else ((1, 2, 4, 10), (1.0, 2.0))
        for steps in grid[0]:
            for w in grid[1]:
                s = sample_digits(net, labels, steps, w, noise=noise)
                rows.append({"model": name, "steps": steps, "guidance": w,
                             "class-consistency": round(class_consistency(clf, s, labels), 4),
                             "diversity": round(diversity_ratio(s, labels, x_test, y_test), 4),
                             "energy dist.": round(energy_distance(s, x_test), 4)})
    # speed: the same weights in the course DiT and in diffusers
    ref = nets[MODELS[0][0]]
    ours = from_diffusers(ref)
    xb, tb, yb = torch.randn(256, 1, 8, 8), torch.rand(256) * 1000, torch.randint(0, 10, (256,))
    reps = 5 if fast else 20
    with torch.no_grad():
        err = float((ours(xb, tb, yb) - ref(xb, tb, yb).sample).abs().max())
        t_ours = time_per_call(lambda: ours(xb, tb, yb), reps)
        t_ref = time_per_call(lambda: ref(xb, tb, yb).sample, reps)
    rows.append({"model": "speed: course DiT forward, batch 256", "ms": round(1000 * t_ours, 2), "max |diff|": err})
    rows.append({"model": "speed: diffusers DiTTransformer2DModel forward, batch 256", "ms": round(1000 * t_ref, 2)})
    notes = (f"{len(labels)} samples per cell ({n_per} per class), same noise for every cell; judge = course CNN "
             "(digits-classifier), diversity = within-class mean pairwise L2 / that of the 359 real test digits, "
             "energy dist. = energy distance of the samples to the 359 real test digits. The uniform-t model is "
             "trained with the same recipe, seed and steps as the logit-normal one (equal compute). "
             "guidance w: v = v_uncond + w (v_cond - v_uncond), w = 1 is no guidance. Targets: shipped model at "
             "<= 10 steps: consistency >= 0.98 with w <= 2 and >= 0.97 at w = 1, diversity >= 0.8 at w = 1; "
             "2-RF at 1-2 steps: consistency >= 0.95, diversity >= 0.6. CPU timings, shared machine.")
    if skipped:
        notes += f" Not measured (checkpoint not built; run scripts/train_digits.py): {', '.join(skipped)}."
    return {"title": "Digits DiT (rectified flow): held-out sample quality and speed", "rows": rows, "notes": notes}
