"""Recipe: the class-conditional digits DiTs of notebooks 09-10, trained with rectified flow.

What ``scripts/train_digits.py`` runs (``build_digits_models``), stage by stage:
- ``classifier``: the digits judge (``recipes.judges``) -> ``digits-classifier``;
- ``dit``:        ``DiT-Digits/2`` (pixel space, 8x8x1, ~1.3M parameters), rectified flow with
                  logit-normal timesteps, EMA of the weights -> ``dit-digits``;
- ``reflow``:     2-RF: pairs (noise, 1-RF sample) from ``dit-digits``, the same network fine-tuned on
                  them -> ``dit-digits-reflow``;
- ``uniform``:    the ``dit`` recipe with uniform timesteps (equal compute) -> ``dit-digits-uniform``.
The DiTs are shipped as diffusers ``DiTTransformer2DModel`` folders (``bridges.diffusers_dit``).
Every stage seeds itself (``SEEDS``) right before it builds its model and its data order, so a stage
gives the same weights whether it runs alone or after the others.

``velocity_fn`` / ``sample_digits`` sample any of them (a course ``DiT`` or the diffusers model) with
``flow.euler_sample`` and classifier-free guidance; they follow the model's device and dtype.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch

from .. import flow
from ..bridges.diffusers_dit import from_diffusers, to_diffusers
from ..config import seed_everything
from ..diffusion import random_tensor
from ..dit import DiT, DiT_from_name, classifier_free_guidance
from ..evaluation import class_consistency, diversity_ratio
from ..hub import MODELS_DIR
from ..training import cosine_schedule
from ..world.data import load_digits
from .judges import load_digits_judge, save_digits_judge, train_digits_judge

__all__ = ["STAGES", "SEEDS", "TIME_SCALE", "new_dit", "train_flow", "train_rf_stage", "reflow_stage", "save_dit",
           "velocity_fn", "sample_digits", "quick_eval", "build_digits_models"]

STAGES = ("classifier", "dit", "reflow", "uniform")
# fixed per-stage seeds; dit and uniform share theirs: same initial weights and data order, only t differs
SEEDS = {"classifier": 0, "dit": 0, "reflow_pairs": 1, "reflow": 2, "uniform": 0}
TIME_SCALE = 1000.0  # the network sees 1000 t (SD3's timesteps = 1000 sigma)
FOLDERS = {"dit": "dit-digits", "reflow": "dit-digits-reflow", "uniform": "dit-digits-uniform"}


def _log(msg: str) -> None:
    print(f"[train_digits {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def new_dit() -> DiT:
    """A fresh ``DiT-Digits/2``; ``freq_shift=1``: diffusers' timestep frequencies, so the saved
    ``DiTTransformer2DModel`` gives the same outputs."""
    return DiT_from_name("DiT-Digits/2", input_size=8, in_channels=1, num_classes=10, learn_sigma=False,
                         class_dropout_prob=0.1, freq_shift=1)


def train_flow(model: DiT, data_x: torch.Tensor, data_y: torch.Tensor, steps: int, *, kind: str,
               lr: float, batch: int, seed: int, noise: torch.Tensor | None = None, ema_decay: float = 0.999,
               desc: str = "", log=_log) -> DiT:
    """Rectified-flow training (optionally on fixed (x0, noise) pairs for reflow); returns the EMA model.

    Batches, timesteps and noise come from a CPU generator seeded with ``seed`` and are moved to the
    model's device, so a run on another device sees the same data order.
    """
    seed_everything(seed)
    device = next(model.parameters()).device
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
        x0, y, t, nz = (v.to(device) for v in (data_x[idx], data_y[idx], t, nz))
        loss = flow.rf_loss(lambda x, tt, y: model(x, TIME_SCALE * tt, y), x0, noise=nz, t=t, y=y)
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
                   desc: str = "", device=None, log=_log) -> DiT:
    """One 1-RF stage (``dit`` or ``uniform``), deterministic on its own: the global RNG is seeded right before the
    model is built (its initial weights) and ``train_flow`` seeds the data order, so the result does not depend on
    what ran before in the same process."""
    seed_everything(seed)
    return train_flow(new_dit().to(device), x, y, steps, kind=kind, lr=lr, batch=batch, seed=seed, desc=desc, log=log)


def reflow_stage(one: DiT, x_shape: tuple[int, ...], pairs: int, pair_steps: int, pair_guidance: float, *,
                 steps: int, lr: float, batch: int, log=_log) -> DiT:
    """2-RF: ``pairs`` couples (noise, ODE_1RF(noise | label)) from ``one``, then ``one`` fine-tuned on them
    (uniform timesteps); returns the EMA model."""
    seed_everything(SEEDS["reflow_pairs"])
    g = torch.Generator().manual_seed(SEEDS["reflow_pairs"])
    labels = torch.arange(10).repeat(pairs // 10 + 1)[:pairs]
    noise = torch.randn(pairs, *x_shape, generator=g)
    t0 = time.perf_counter()
    # reflow pairs: x0 = ODE_1RF(noise | label), kept unclamped so the pair is the ODE's own coupling
    x0 = torch.cat([sample_digits(one, lab, pair_steps, pair_guidance, noise=nz, clamp=False).cpu()
                    for lab, nz in zip(labels.split(512), noise.split(512))])
    log(f"reflow: {pairs} pairs with {pair_steps} Euler steps in {time.perf_counter() - t0:.0f} s")
    return train_flow(one.train(), x0, labels, steps, kind="uniform", lr=lr, batch=batch, seed=SEEDS["reflow"],
                      noise=noise, desc="2-RF reflow", log=log)


def save_dit(model: DiT, folder: str | Path, info: dict) -> Path:
    """Ship ``model`` as a diffusers ``DiTTransformer2DModel`` folder, with ``training.json``."""
    folder = Path(folder)
    to_diffusers(model.cpu().float()).save_pretrained(folder)
    (folder / "training.json").write_text(json.dumps({"script": "scripts/train_digits.py", **info}, indent=2) + "\n")
    return folder


def velocity_fn(model, y: torch.Tensor, guidance: float = 1.0, time_scale: float = TIME_SCALE):
    """A ``v(x, t)`` closure for ``flow.euler_sample`` from a class-conditional DiT (course ``DiT`` or
    diffusers ``DiTTransformer2DModel``) predicting the rectified-flow velocity in its first C channels.

    The network sees ``time_scale * t`` (SD3's timesteps = 1000 sigma). ``guidance`` w gives
    v = v_uncond + w (v_cond - v_uncond) (``dit.classifier_free_guidance``); w = 1 is the plain conditional model.
    """
    num_classes = model.config["num_classes"] if isinstance(model, DiT) else model.config.num_embeds_ada_norm
    in_channels = model.config["in_channels"] if isinstance(model, DiT) else model.config.in_channels

    def net(x, t, labels):
        out = model(x, time_scale * t, labels)
        out = out if torch.is_tensor(out) else out.sample
        return out[:, :in_channels]

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        labels = y.to(x.device)
        if guidance == 1.0:
            return net(x, t, labels)
        n = x.shape[0]
        null = torch.full_like(labels, num_classes)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([labels, null]))
        return classifier_free_guidance(out[:n], out[n:], guidance)
    return v


@torch.no_grad()
def sample_digits(model, labels: torch.Tensor, steps: int = 10, guidance: float = 1.0, *, shift: float = 1.0,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                  clamp: bool = True) -> torch.Tensor:
    """Euler rectified-flow samples (N, 1, 8, 8) in [-1, 1] for the given class ``labels``, on the model's
    device and in its dtype (``noise``, or a draw from ``generator`` -- on its own device -- is moved there)."""
    p = next(model.parameters())
    if noise is None:
        noise = random_tensor((len(labels), 1, 8, 8), generator=generator, device=p.device, dtype=p.dtype)
    x = flow.euler_sample(velocity_fn(model, labels, guidance), noise.to(device=p.device, dtype=p.dtype), steps,
                          shift=shift)
    return x.clamp(-1, 1) if clamp else x


def quick_eval(model, name: str, out_dir: Path, steps_list=(1, 2, 10), n: int = 500, log=_log) -> None:
    """Class consistency and diversity of ``model``'s samples on the held-out digits (``--eval``)."""
    clf_dir = out_dir / "digits-classifier"
    if not (clf_dir / "model.safetensors").is_file():
        clf_dir = MODELS_DIR / "digits-classifier"
    if not (clf_dir / "model.safetensors").is_file():
        return
    clf = load_digits_judge(clf_dir)
    real, real_y = load_digits("test", scale="symmetric")
    g = torch.Generator().manual_seed(123)
    labels = torch.arange(10).repeat_interleave(n // 10)
    for steps in steps_list:
        for w in (1.0, 2.0):
            s = sample_digits(model, labels, steps, w, generator=g).cpu().float()
            log(f"{name}: {steps:>2} steps w={w:g}: consistency {class_consistency(clf, s, labels):.3f} "
                f"diversity {diversity_ratio(s, labels, real, real_y):.3f}")


def build_digits_models(out: str | Path = MODELS_DIR, only=STAGES, *, classifier_steps: int = 1500, steps: int = 3000,
                        batch: int = 128, lr: float = 1e-3, pairs: int = 2048, pair_steps: int = 12,
                        pair_guidance: float = 1.5, reflow_steps: int = 600, evaluate: bool = False,
                        device=None, log=_log) -> None:
    """Run the stages in ``only`` (in ``STAGES`` order) and write their folders under ``out``; the defaults
    reproduce the shipped ``data/models`` checkpoints (on the CPU)."""
    unknown = set(only) - set(STAGES)
    if unknown:
        raise ValueError(f"unknown stages {sorted(unknown)}; choose from {STAGES}")
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    x, y = load_digits("train", scale="symmetric")  # only the train split is ever trained on

    if "classifier" in only:
        t_stage = time.perf_counter()
        model, acc = train_digits_judge(classifier_steps, SEEDS["classifier"], log=log)
        save_digits_judge(model, out / "digits-classifier", {"script": "scripts/train_digits.py",
                                                            "steps": classifier_steps, "test_accuracy": round(acc, 4)})
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")

    def one_rf(stage: str, kind: str, what: str):
        """A 1-RF stage: train with ``kind`` timesteps, then save the EMA weights."""
        t_stage = time.perf_counter()
        ema = train_rf_stage(x, y, steps, kind=kind, seed=SEEDS[stage], lr=lr, batch=batch,
                             desc=f"1-RF {kind.replace('_', '-')}", device=device, log=log)
        save_dit(ema, out / FOLDERS[stage], {"objective": "rectified flow (v = noise - x0, t=0 data)",
                                             "timesteps": f"{kind}(0, 1)", "steps": steps, "batch": batch, "lr": lr,
                                             "ema": 0.999, "time_input": "1000 * t",
                                             "velocity_channels": "all (learn_sigma=False)"})
        log(f"saved {out / FOLDERS[stage]}")
        if evaluate:
            quick_eval(ema, what, out, log=log)
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")

    if "dit" in only:
        one_rf("dit", "logit_normal", "1-RF")
    if "reflow" in only:
        from diffusers import DiTTransformer2DModel

        t_stage = time.perf_counter()
        seed_everything(SEEDS["reflow_pairs"])  # as before the split into a recipe: seed, then load
        one = from_diffusers(DiTTransformer2DModel.from_pretrained(out / FOLDERS["dit"])).to(device)
        two = reflow_stage(one, tuple(x.shape[1:]), pairs, pair_steps, pair_guidance, steps=reflow_steps,
                           lr=lr / 2, batch=batch, log=log)
        save_dit(two, out / FOLDERS["reflow"], {"objective": "reflow (2-RF) on pairs from dit-digits", "pairs": pairs,
                                                "pair_steps": pair_steps, "pair_guidance": pair_guidance,
                                                "timesteps": "uniform", "steps": reflow_steps, "init": "dit-digits"})
        log(f"saved {out / FOLDERS['reflow']}")
        if evaluate:
            quick_eval(two, "2-RF", out, log=log)
        log(f"stage done in {time.perf_counter() - t_stage:.0f} s")
    if "uniform" in only:
        one_rf("uniform", "uniform", "1-RF uniform")
    log(f"done in {time.perf_counter() - t_start:.0f} s")
