"""Train the digits models of notebooks 09-10 and save them under data/models/ (fixed seeds).

Stages (``--only`` picks some; default: all, in this order):
- ``classifier``: a small CNN judge (data/models/digits-classifier, safetensors);
- ``dit``:        class-conditional DiT-Digits/2 (pixel space, 8x8x1, ~1.3M parameters) trained with
                  rectified flow and logit-normal timesteps -> data/models/dit-digits (diffusers
                  ``DiTTransformer2DModel.save_pretrained`` through the weight mapping of course_utils.dit);
- ``reflow``:     2-RF: pairs (noise, 1-RF sample) from the dit-digits model, then the same network
                  fine-tuned on them -> data/models/dit-digits-reflow;
- ``uniform``:    the same recipe as ``dit`` with uniform timesteps (equal compute) -> data/models/dit-digits-uniform.

Measured on this 2-core machine (2 threads, quiet): classifier 45 s, dit 561 s, reflow 125 s
(the three judged checkpoints: 12.2 min), uniform 588 s; all four stages 22 min.

Only the train split of the digits is used; the test split is kept for the held-out measures
(benchmarks/bench_digits.py). Usage: ``python scripts/train_digits.py [--only dit reflow] [--threads 1]
[--out-dir DIR]``.

Reproducibility: every stage seeds itself (``seed_everything`` with a fixed per-stage seed, see ``SEEDS``)
right before it builds its model and its data order, so a stage gives the same weights whether it runs alone
(``--only uniform``) or after the other stages in the same process.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from course_utils import dit, flow  # noqa: E402
from course_utils.config import seed_everything  # noqa: E402
from course_utils.data import load_digits  # noqa: E402
from course_utils.training import cosine_schedule  # noqa: E402

MODELS = ROOT / "data" / "models"
STAGES = ("classifier", "dit", "reflow", "uniform")
# fixed per-stage seeds; dit and uniform share theirs: same initial weights and data order, only t differs
SEEDS = {"classifier": 0, "dit": 0, "reflow_pairs": 1, "reflow": 2, "uniform": 0}


def log(msg: str) -> None:
    print(f"[train_digits {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def train_classifier(args) -> None:
    seed_everything(SEEDS["classifier"])
    x, y = load_digits("train", scale="symmetric")
    xt, yt = load_digits("test", scale="symmetric")
    model = dit.DigitsClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.classifier_steps
    sched = cosine_schedule(opt, steps, warmup=50)
    g = torch.Generator().manual_seed(SEEDS["classifier"])
    model.train()
    for step in range(steps):
        idx = torch.randint(0, len(x), (128,), generator=g)
        xb = x[idx]
        # augmentation: random shifts of up to one pixel (padding with the background value -1)
        dx, dy = torch.randint(-1, 2, (2,), generator=g).tolist()
        xb = torch.nn.functional.pad(xb, (1, 1, 1, 1), value=-1.0)[:, :, 1 + dy:9 + dy, 1 + dx:9 + dx]
        loss = torch.nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    acc = dit.class_consistency(model, xt, yt)
    log(f"classifier: held-out accuracy {acc:.4f} on {len(xt)} test digits")
    dit.save_classifier(model, args.out_dir / "digits-classifier")
    (args.out_dir / "digits-classifier" / "training.json").write_text(json.dumps(
        {"script": "scripts/train_digits.py", "steps": steps, "test_accuracy": round(acc, 4)}, indent=2) + "\n")


def new_dit() -> dit.DiT:
    # freq_shift=1: diffusers' timestep frequencies, so the saved DiTTransformer2DModel gives the same outputs
    return dit.DiT_from_name("DiT-Digits/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                             class_dropout_prob=0.1, freq_shift=1)


def train_flow(model: dit.DiT, data_x: torch.Tensor, data_y: torch.Tensor, steps: int, *, kind: str,
               lr: float, batch: int, seed: int, noise: torch.Tensor | None = None, ema_decay: float = 0.999,
               desc: str = "") -> dit.DiT:
    """Rectified-flow training (optionally on fixed (x0, noise) pairs for reflow); returns the EMA model."""
    seed_everything(seed)
    g = torch.Generator().manual_seed(seed)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    sched = cosine_schedule(opt, steps, warmup=min(100, steps // 10))
    model.train()
    t0, run = time.perf_counter(), 0.0
    for step in range(steps):
        idx = torch.randint(0, len(data_x), (batch,), generator=g)
        t = flow.sample_timesteps(batch, kind, generator=g)
        nz = noise[idx] if noise is not None else torch.randn(data_x[idx].shape, generator=g)
        loss = flow.rf_loss(lambda x, tt, y: model(x, 1000 * tt, y), data_x[idx], noise=nz, t=t, y=data_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        # EMA of the weights: theta_ema <- d theta_ema + (1 - d) theta
        d = min(ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - d)
        run = 0.98 * run + 0.02 * loss.item() if step else loss.item()
        if (step + 1) % 250 == 0 or step + 1 == steps:
            log(f"{desc} step {step + 1}/{steps} loss {run:.4f} ({(step + 1) / (time.perf_counter() - t0):.1f} steps/s)")
    model.eval()
    return ema


def train_rf_stage(x: torch.Tensor, y: torch.Tensor, steps: int, *, kind: str, seed: int, lr: float, batch: int,
                   desc: str = "") -> dit.DiT:
    """One 1-RF stage (``dit`` or ``uniform``), deterministic on its own: the global RNG is seeded right before the
    model is built (its initial weights) and ``train_flow`` seeds the data order, so the result does not depend on
    what ran before in the same process."""
    seed_everything(seed)
    return train_flow(new_dit(), x, y, steps, kind=kind, lr=lr, batch=batch, seed=seed, desc=desc)


def save_dit(model: dit.DiT, folder: Path, info: dict) -> None:
    ref = dit.to_diffusers(model)
    ref.save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"script": "scripts/train_digits.py", **info}, indent=2) + "\n")
    log(f"saved {folder}")


def quick_eval(model, name: str, out_dir: Path, steps_list=(1, 2, 10), n: int = 500) -> None:
    clf_dir = out_dir / "digits-classifier"
    if not (clf_dir / "model.safetensors").is_file():
        clf_dir = MODELS / "digits-classifier"
    if not (clf_dir / "model.safetensors").is_file():
        return
    clf = dit.load_classifier(clf_dir)
    real, real_y = load_digits("test", scale="symmetric")
    g = torch.Generator().manual_seed(123)
    labels = torch.arange(10).repeat_interleave(n // 10)
    for steps in steps_list:
        for w in (1.0, 2.0):
            s = dit.sample_digits(model, labels, steps, w, generator=g)
            log(f"{name}: {steps:>2} steps w={w:g}: consistency {dit.class_consistency(clf, s, labels):.3f} "
                f"diversity {dit.diversity_ratio(s, labels, real, real_y):.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=STAGES, default=list(STAGES))
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out-dir", type=Path, default=MODELS, help="where the model folders go (default data/models)")
    ap.add_argument("--classifier-steps", type=int, default=1500)
    ap.add_argument("--steps", type=int, default=3000, help="1-RF optimizer steps (dit and uniform)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--pairs", type=int, default=2048, help="reflow pairs generated by the 1-RF model")
    ap.add_argument("--pair-steps", type=int, default=12, help="Euler steps used to generate reflow pairs")
    ap.add_argument("--pair-guidance", type=float, default=1.5)
    ap.add_argument("--reflow-steps", type=int, default=600)
    ap.add_argument("--eval", action="store_true", help="print a quick held-out evaluation after each model")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = args.out_dir = args.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    x, y = load_digits("train", scale="symmetric")  # only the train split is ever trained on

    if "classifier" in args.only:
        t_stage = time.perf_counter()
        train_classifier(args)
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")
    def one_rf(stage: str, kind: str, folder: str):
        """A 1-RF stage: train with ``kind`` timesteps (dit and uniform share their seed: same initial
        weights and data order, only the timestep law differs), then save the EMA weights."""
        ema = train_rf_stage(x, y, args.steps, kind=kind, seed=SEEDS[stage], lr=args.lr, batch=args.batch,
                             desc=f"1-RF {kind.replace('_', '-')}")
        save_dit(ema, out / folder, {"objective": "rectified flow (v = noise - x0, t=0 data)",
                                     "timesteps": f"{kind}(0, 1)", "steps": args.steps,
                                     "batch": args.batch, "lr": args.lr, "ema": 0.999,
                                     "time_input": "1000 * t", "velocity_channels": "all (learn_sigma=False)"})
        return ema

    if "dit" in args.only:
        t_stage = time.perf_counter()
        ema = one_rf("dit", "logit_normal", "dit-digits")
        if args.eval:
            quick_eval(ema, "1-RF", out)
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")
    if "reflow" in args.only:
        t_stage = time.perf_counter()
        from diffusers import DiTTransformer2DModel

        seed_everything(SEEDS["reflow_pairs"])
        one = dit.from_diffusers(DiTTransformer2DModel.from_pretrained(out / "dit-digits"))
        g = torch.Generator().manual_seed(SEEDS["reflow_pairs"])
        labels = torch.arange(10).repeat(args.pairs // 10 + 1)[:args.pairs]
        noise = torch.randn(args.pairs, 1, 8, 8, generator=g)
        t0 = time.perf_counter()
        # reflow pairs: x0 = ODE_1RF(noise | label), kept unclamped so the pair is the ODE's own coupling
        x0 = torch.cat([dit.sample_digits(one, lab, args.pair_steps, args.pair_guidance, noise=nz, clamp=False)
                        for lab, nz in zip(labels.split(512), noise.split(512))])
        log(f"reflow: {args.pairs} pairs with {args.pair_steps} Euler steps in {time.perf_counter() - t0:.0f} s")
        two = train_flow(one.train(), x0, labels, args.reflow_steps, kind="uniform", lr=args.lr / 2,
                         batch=args.batch, seed=SEEDS["reflow"], noise=noise, desc="2-RF reflow")
        save_dit(two, out / "dit-digits-reflow", {"objective": "reflow (2-RF) on pairs from dit-digits",
                                                      "pairs": args.pairs, "pair_steps": args.pair_steps,
                                                      "pair_guidance": args.pair_guidance, "timesteps": "uniform",
                                                      "steps": args.reflow_steps, "init": "dit-digits"})
        if args.eval:
            quick_eval(two, "2-RF", out)
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")
    if "uniform" in args.only:
        t_stage = time.perf_counter()
        ema = one_rf("uniform", "uniform", "dit-digits-uniform")
        if args.eval:
            quick_eval(ema, "1-RF uniform", out)
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")
    log(f"done in {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
