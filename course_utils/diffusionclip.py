"""DiffusionCLIP (Kim et al., *DiffusionCLIP: Text-Guided Diffusion Models for Robust Image
Manipulation*, CVPR 2022; lecture 05): the CLIP losses (named in notebook 01) and the editing
machinery of notebook 13, written for the course's rectified flows (``course_utils.flow``).

- ``directional_clip_loss`` / ``global_clip_loss``: DiffusionCLIP's ``losses/clip_loss.py`` (code base
  from StyleGAN-NADA's ``criteria/clip_loss.py``); arguments are CLIP embeddings ``(N, D)`` (any device
  and dtype), the losses are means over the batch;
- ``text_direction``: Delta T averaged over prompt templates (StyleGAN-NADA's ``compute_text_direction``);
- ``time_grid``, ``invert``, ``generate``: the deterministic ODE run up (image -> latent x_{t0}) and
  down (latent -> image) on the same Euler grid, DiffusionCLIP's DDIM inversion / generation in the
  flow convention (t = 0 data, t = 1 noise, x_t = (1 - t) x0 + t noise, v = noise - x0);
- ``edit_latent``: optimise the inverted latent under the CLIP losses + L1, optionally masked (a local edit);
  ``fine_tune_generator``: the same loop on the model's parameters (DiffusionCLIP proper).

The model is any callable ``velocity(x, t)``, the encoders any callables: nothing here knows the
course's text-to-image model or CLIP (``course_utils.recipes`` holds those).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from .clip import TEMPLATES, check_pair
from .diffusion import as_time, random_tensor
from .flow import euler_step, sampling_times


def directional_clip_loss(img_gen: torch.Tensor, img_ref: torch.Tensor,
                          txt_tar: torch.Tensor, txt_ref: torch.Tensor) -> torch.Tensor:
    """DiffusionCLIP's directional loss, the mean over the batch of

        L_direction = 1 - <dI, dT> / (|dI| |dT|),  dI = E_I(x_gen) - E_I(x_ref),  dT = E_T(y_tar) - E_T(y_ref)

    Arguments are embeddings ``(N, D)``; the text ones may have batch 1 (one edit for the whole
    batch). DiffusionCLIP L2-normalizes each embedding before taking differences: pass normalized
    embeddings to reproduce it exactly.
    """
    check_pair("img_gen", img_gen, "img_ref", img_ref)
    check_pair("txt_tar", txt_tar, "txt_ref", txt_ref)
    check_pair("img_gen", img_gen, "txt_tar", txt_tar, broadcast_b=True)
    delta_i = img_gen - img_ref  # (N, D)
    delta_t = txt_tar - txt_ref  # (N or 1, D)
    # 1 - cos(dI, dT), averaged over the batch
    return (1 - F.cosine_similarity(delta_i, delta_t.expand_as(delta_i), dim=-1)).mean()


def global_clip_loss(img_gen: torch.Tensor, txt_tar: torch.Tensor) -> torch.Tensor:
    """DiffusionCLIP's global loss: mean over the batch of

        L_global = D_CLIP(x_gen, y_tar) = 1 - cos(E_I(x_gen), E_T(y_tar))

    ``img_gen`` ``(N, D)``; ``txt_tar`` ``(N, D)`` or ``(1, D)``.
    """
    check_pair("img_gen", img_gen, "txt_tar", txt_tar, broadcast_b=True)
    # 1 - cos(I, T), averaged over the batch
    return (1 - F.cosine_similarity(img_gen, txt_tar.expand_as(img_gen), dim=-1)).mean()


# ============================================================================================
# The text direction Delta T (StyleGAN-NADA's ``compute_text_direction``)
# ============================================================================================
def text_direction(encode_text: Callable[[list[str]], torch.Tensor], source: str, target: str,
                   templates: Sequence[str] = TEMPLATES, *, normalize: bool = True) -> torch.Tensor:
    """Delta T, the edit direction in CLIP's text space, averaged over prompt templates: ``(1, D)``.

        Delta T = 1/K sum_k [ E_T(template_k(target)) / |.| - E_T(template_k(source)) / |.| ]

    as StyleGAN-NADA's ``compute_text_direction`` (which DiffusionCLIP's ``CLIPLoss`` reuses): every
    template's embedding is L2-normalized, the K differences are averaged and, with ``normalize``
    (the default, as upstream), the mean is L2-normalized again. The directional loss is invariant to
    the scale of Delta T, so ``normalize`` only matters for printing. ``encode_text`` maps a list of
    strings to ``(N, D)`` embeddings (e.g. ``lambda s: recipes.clip.encode_texts(model, tok, s)``);
    ``templates`` hold one ``{}`` each (default ``course_utils.clip.TEMPLATES``). Computed without
    gradients: Delta T is a fixed target.
    """
    templates = list(templates)
    if not templates:
        raise ValueError("templates is empty: pass at least one template such as 'a photo of a {}.'")
    bad = [tpl for tpl in templates if not isinstance(tpl, str) or "{}" not in tpl]
    if bad:
        raise ValueError(f"every template needs one '{{}}' for the class name, got {bad!r}")
    if source == target:
        raise ValueError(f"source and target are the same text {source!r}: there is no direction to edit along")
    k = len(templates)
    texts = [tpl.format(source) for tpl in templates] + [tpl.format(target) for tpl in templates]
    with torch.no_grad():
        emb = encode_text(texts)  # (2K, D)
    if not isinstance(emb, torch.Tensor) or emb.ndim != 2 or emb.shape[0] != 2 * k:
        shape = tuple(emb.shape) if isinstance(emb, torch.Tensor) else type(emb).__name__
        raise ValueError(f"encode_text must map {2 * k} strings to a ({2 * k}, D) tensor, got {shape}")
    emb = F.normalize(emb.to(torch.promote_types(emb.dtype, torch.float32)), dim=-1).to(emb.dtype)
    src, tar = emb[:k], emb[k:]  # (K, D) each
    # Delta T = mean_k (E_T(target_k) - E_T(source_k)), each embedding unit-norm
    delta = (tar - src).mean(dim=0, keepdim=True)  # (1, D)
    if normalize:
        if float(delta.norm()) == 0.0:
            raise ValueError(f"{source!r} and {target!r} have the same text embedding: Delta T is zero")
        delta = F.normalize(delta, dim=-1)
    return delta


# ============================================================================================
# Deterministic inversion and generation (the ODE of course_utils.flow, run both ways)
# ============================================================================================
def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def _check_t(name: str, t) -> float:
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < float(t) <= 1.0:
        raise ValueError(f"{name} must be a number in (0, 1] (1 = pure noise; DiffusionCLIP's partial "
                         f"inversion uses t0 < 1), got {t!r}")
    return float(t)


def _check_x(name: str, x) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 1 or x.shape[0] < 1 or not x.is_floating_point():
        desc = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a floating-point batch (N, ...) with N >= 1, got {desc}")


def time_grid(steps: int, t0: float = 1.0, *, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``(steps + 1,)`` evenly spaced times from ``t0`` down to 0 (data): generation walks it forward,
    inversion backward, so the two visit the same times. ``t0 = 1`` gives ``flow.sampling_times(steps)``."""
    steps, t0 = _check_steps(steps), _check_t("t0", t0)
    # t_i = t0 (1 - i / steps),  i = 0..steps
    return t0 * sampling_times(steps, device=device, dtype=dtype)


def _integrate(velocity: Callable, x: torch.Tensor, times: torch.Tensor, return_trajectory: bool):
    traj = [x]
    for t, t_next in zip(times[:-1], times[1:]):
        v = velocity(x, as_time(t, x))  # (N, ...) like x; the model sees t (N,) in x's dtype
        if not isinstance(v, torch.Tensor) or v.shape != x.shape:
            shape = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
            raise ValueError(f"velocity(x, t) must return a tensor shaped like x {tuple(x.shape)}, got {shape}")
        # x_{t_next} = x_t + (t_next - t) v(x_t, t)
        x = euler_step(x, v, t, t_next)
        if return_trajectory:
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x


@torch.no_grad()
def invert(velocity: Callable, x0: torch.Tensor, steps: int, *, t_end: float = 1.0,
           return_trajectory: bool = False):
    """Deterministic inversion: integrate dx/dt = v(x, t) *up* from t = 0 (the image ``x0``) to
    ``t_end`` with Euler steps on ``time_grid(steps, t_end)`` read backwards,

        x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i) v(x_{t_i}, t_i),   0 = t_0 < t_1 < ... < t_steps = t_end,

    the rectified-flow counterpart of DiffusionCLIP's deterministic DDIM inversion (Kim et al.,
    CVPR 2022): the latent x_{t_end} that ``generate`` maps back to ``x0`` (up to the Euler error,
    O(1/steps)). ``t_end < 1`` is DiffusionCLIP's partial inversion to t0 < T (its default t_0 = 400
    of T = 1000 steps): less noise, faster, closer to the source. ``velocity(x, t)``: ``x`` (N, ...),
    ``t`` (N,) in [0, 1]. Runs without gradients. Returns x_{t_end} (N, ...), or (x_{t_end},
    trajectory (steps + 1, N, ...) from t = 0 up) with ``return_trajectory``.
    """
    _check_x("x0", x0)
    _check_t("t_end", t_end)
    dtype = torch.promote_types(x0.dtype, torch.float32)  # bfloat16 would merge close times
    times = time_grid(steps, t_end, device=x0.device, dtype=dtype).flip(0)  # (steps + 1,) 0 -> t_end
    return _integrate(velocity, x0, times, return_trajectory)


def generate(velocity: Callable, x_t: torch.Tensor, steps: int, *, t_start: float = 1.0,
             return_trajectory: bool = False):
    """Deterministic generation: integrate dx/dt = v(x, t) *down* from ``t_start`` (the latent ``x_t``)
    to t = 0 on ``time_grid(steps, t_start)``,

        x_{t_{i+1}} = x_{t_i} + (t_{i+1} - t_i) v(x_{t_i}, t_i),   t_start = t_0 > t_1 > ... > t_steps = 0,

    exactly ``flow.euler_sample`` when ``t_start = 1``. Keeps the autograd graph (DiffusionCLIP
    back-propagates the CLIP loss through its few generation steps); wrap it in ``torch.no_grad()``
    to only sample. Returns x_0 (N, ...), or (x_0, trajectory (steps + 1, N, ...)) with
    ``return_trajectory``.
    """
    _check_x("x_t", x_t)
    _check_t("t_start", t_start)
    dtype = torch.promote_types(x_t.dtype, torch.float32)
    times = time_grid(steps, t_start, device=x_t.device, dtype=dtype)  # (steps + 1,) t_start -> 0
    return _integrate(velocity, x_t, times, return_trajectory)


# ============================================================================================
# Editing: optimise the latent (or the generator) under the CLIP losses
# ============================================================================================
INVERSIONS = ("ode", "noise")


def _as_generator(generator) -> torch.Generator | None:
    if generator is None or isinstance(generator, torch.Generator):
        return generator
    if isinstance(generator, bool) or not isinstance(generator, int):
        raise ValueError(f"generator must be a torch.Generator, an integer seed or None, got {generator!r}")
    return torch.Generator(device="cpu").manual_seed(generator)


def _check_edit_args(x_src, direction, txt_tar, steps, t0, lr, iterations, lambda_dir, lambda_l1,
                     lambda_global, inversion, l1_weight=None) -> None:
    _check_x("x_src", x_src)
    if l1_weight is not None:
        try:  # a tensor >= 0 of x_src's rank that broadcasts to it
            ok = l1_weight.ndim == x_src.ndim and torch.broadcast_shapes(l1_weight.shape, x_src.shape) == x_src.shape
            ok = ok and bool((l1_weight >= 0).all())
        except (AttributeError, RuntimeError):
            ok = False
        if not ok:
            raise ValueError(f"l1_weight must be a tensor >= 0 that broadcasts to x_src {tuple(x_src.shape)} (a mask (N, 1, "
                             f"H, W): 1 = keep, 0 = free), got {tuple(getattr(l1_weight, 'shape', ())) or type(l1_weight).__name__}")
    _check_steps(steps)
    _check_t("t0", t0)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an integer >= 1, got {iterations!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    weights = {"lambda_dir": lambda_dir, "lambda_l1": lambda_l1, "lambda_global": lambda_global}
    if any(not w >= 0 for w in weights.values()) or not any(w > 0 for w in weights.values()):
        raise ValueError(f"the loss weights must be >= 0 with at least one > 0, got {weights}")
    if inversion not in INVERSIONS:
        raise ValueError(f"inversion must be one of {INVERSIONS}, got {inversion!r}")
    if lambda_dir > 0:
        if not isinstance(direction, torch.Tensor):
            raise ValueError("lambda_dir > 0 needs direction = Delta T, a (1, D) or (N, D) tensor (text_direction)")
        if direction.ndim != 2 or direction.shape[0] not in (1, x_src.shape[0]):
            raise ValueError(f"direction must be (1, D) or ({x_src.shape[0]}, D) for {x_src.shape[0]} images, "
                             f"got {tuple(direction.shape)}")
    if lambda_global > 0 and not isinstance(txt_tar, torch.Tensor):
        raise ValueError("lambda_global > 0 needs txt_tar = E_T(y_tar), a (1, D) or (N, D) tensor")


def _start_latent(velocity, x_src, t0, inversion_steps, inversion, generator) -> torch.Tensor:
    """x_{t0}: the deterministic ODE inversion of ``x_src`` or (``"noise"``) a forward noising
    x_{t0} = (1 - t0) x_src + t0 noise (SDEdit's start, what the notebook can compare against)."""
    if inversion == "ode":
        return invert(velocity, x_src, inversion_steps, t_end=t0)
    noise = random_tensor(x_src.shape, generator=generator, device=x_src.device, dtype=x_src.dtype)
    # x_{t0} = (1 - t0) x0 + t0 noise
    return (1 - t0) * x_src + t0 * noise


def _given_or_start(x_t0, velocity, x_src, t0, inversion_steps, inversion, generator) -> torch.Tensor:
    """``x_t0`` when given (checked against ``x_src``'s shape), else ``_start_latent``."""
    if x_t0 is None:
        return _start_latent(velocity, x_src, t0, inversion_steps, inversion, generator)
    if not isinstance(x_t0, torch.Tensor) or x_t0.shape != x_src.shape:
        shape = tuple(x_t0.shape) if isinstance(x_t0, torch.Tensor) else type(x_t0).__name__
        raise ValueError(f"x_t0 must be a latent shaped like x_src {tuple(x_src.shape)}, got {shape}")
    return x_t0


def _edit_loop(velocity, encode_image, x_src, x_lat, params, direction, txt_tar, *, steps, t0, lr,
               iterations, lambda_dir, lambda_l1, lambda_global, l1_weight=None):
    """The loop shared by ``edit_latent`` (params = [latent]) and ``fine_tune_generator`` (params =
    the model's). Gradients go to ``params`` only (``torch.autograd.grad``), never into the CLIP
    encoder's or the frozen model's ``.grad``."""
    with torch.no_grad():
        emb_src = encode_image(x_src)  # (N, D) E_I(x_src), fixed
    ref_txt = None if direction is None else torch.zeros_like(direction)  # Delta T = direction - 0
    opt = torch.optim.Adam(params, lr=lr)
    history = {"loss": [], "direction": [], "l1": [], "global": []}
    for _ in range(iterations):
        x_gen = generate(velocity, x_lat(), steps, t_start=t0)  # (N, ...) through the Euler steps
        emb_gen = encode_image(x_gen)  # (N, D)
        # L_direction = 1 - cos(E_I(x_gen) - E_I(x_src), Delta T)
        l_dir = (directional_clip_loss(emb_gen, emb_src, direction.to(emb_gen), ref_txt.to(emb_gen))
                 if lambda_dir > 0 else emb_gen.new_zeros(()))
        # L_L1 = mean w |x_gen - x_src| (w = 1, or 0 on the edited object for a local edit)
        l_l1 = ((1.0 if l1_weight is None else l1_weight.to(x_gen)) * (x_gen - x_src).abs()).mean()
        # L_global = 1 - cos(E_I(x_gen), E_T(y_tar))
        l_glob = global_clip_loss(emb_gen, txt_tar.to(emb_gen)) if lambda_global > 0 else emb_gen.new_zeros(())
        loss = lambda_dir * l_dir + lambda_l1 * l_l1 + lambda_global * l_glob
        for key, val in zip(history, (loss, l_dir, l_l1, l_glob)):
            history[key].append(float(val.detach()))
        for p, g in zip(params, torch.autograd.grad(loss, params)):
            p.grad = g
        opt.step()
    with torch.no_grad():
        return generate(velocity, x_lat(), steps, t_start=t0), history


def edit_latent(velocity: Callable, encode_image: Callable, x_src: torch.Tensor,
                direction: torch.Tensor | None, *, txt_tar: torch.Tensor | None = None, t0: float = 0.5,
                steps: int = 4, inversion_steps: int | None = None, lr: float = 0.05, iterations: int = 30,
                lambda_dir: float = 1.0, lambda_l1: float = 0.0, lambda_global: float = 0.0,
                inversion: str = "ode", generator: torch.Generator | int | None = None,
                x_t0: torch.Tensor | None = None, l1_weight: torch.Tensor | None = None):
    """Text-guided editing in the spirit of DiffusionCLIP (Kim et al., CVPR 2022; lecture 05), by latent
    optimisation: invert ``x_src`` to x_{t0}, then optimise that latent with Adam so that the image
    ``generate`` makes from it moves along the text direction Delta T while staying close to ``x_src``:

        x_{t0} = invert(x_src, t_end = t0)          (deterministic ODE inversion, no gradients)
        x_gen  = generate(x_{t0}, t_start = t0)     (``steps`` Euler steps, differentiated through)
        L = lambda_dir L_direction(x_gen, x_src; Delta T) + lambda_l1 |x_gen - x_src|_1
            + lambda_global (1 - cos(E_I(x_gen), E_T(y_tar)))

    DiffusionCLIP itself *fine-tunes the generator* (``fine_tune_generator``: one model per edit,
    then any image is edited by invert + generate); optimising the latent of one image is its cheaper
    cousin (one image, no copy of the model), the one StyleCLIP's latent optimisation uses for GANs.
    DiffusionCLIP's defaults for comparison: t_0 = 400 of 1000 (0.4), 40 inversion steps, 6 training
    generation steps, clip_loss_w 3 with l1_loss_w 1 in its README example, and the CLIP term as
    -log((2 - L_direction) / 2) (here plain L_direction, as the lecture writes it).

    ``velocity(x, t)``: the flow model (``x`` (N, ...), ``t`` (N,) in [0, 1]); ``encode_image``: images
    (N, ...) -> (N, D) embeddings, differentiable (L2-normalized to match DiffusionCLIP; map the
    model's pixel range to the encoder's inside it). ``direction``: Delta T (1, D) or (N, D) from
    ``text_direction``; ``txt_tar``: E_T(y_tar) (1, D) or (N, D), needed when ``lambda_global > 0``.
    ``inversion``: ``"ode"`` (``inversion_steps`` Euler steps, default ``steps``) or ``"noise"``
    (x_{t0} = (1 - t0) x_src + t0 noise, drawn from ``generator``, a ``torch.Generator`` or a seed).
    ``x_t0``: a start latent computed elsewhere (e.g. inverted under another condition: a text-to-image
    model inverts with the source prompt), used instead of ``inversion``.
    ``l1_weight`` (e.g. a mask (N, 1, H, W), 0 on the object to edit): L1 = mean w |x_gen - x_src|. Delta T is
    global ("bluer"); the mask makes the edit local, as Blended Diffusion (Avrahami et al., CVPR 2022) does.
    Returns ``(x_edit (N, ...), history)``: the image of the final latent, and the per-iteration
    terms (before that iteration's update) ``{"loss", "direction", "l1", "global"}``, lists of floats.
    """
    _check_edit_args(x_src, direction, txt_tar, steps, t0, lr, iterations, lambda_dir, lambda_l1,
                     lambda_global, inversion, l1_weight)
    gen = _as_generator(generator)
    x_src = x_src.detach()
    latent = _given_or_start(x_t0, velocity, x_src, t0, inversion_steps or steps, inversion, gen)
    latent = latent.detach().clone().requires_grad_(True)
    return _edit_loop(velocity, encode_image, x_src, lambda: latent, [latent], direction, txt_tar,
                      steps=steps, t0=t0, lr=lr, iterations=iterations, lambda_dir=lambda_dir,
                      lambda_l1=lambda_l1, lambda_global=lambda_global, l1_weight=l1_weight)


def fine_tune_generator(model: torch.nn.Module, encode_image: Callable, x_src: torch.Tensor,
                        direction: torch.Tensor | None, *, txt_tar: torch.Tensor | None = None,
                        t0: float = 0.5, steps: int = 4, inversion_steps: int | None = None, lr: float = 1e-4,
                        iterations: int = 30, lambda_dir: float = 1.0, lambda_l1: float = 0.0,
                        lambda_global: float = 0.0, inversion: str = "ode",
                        generator: torch.Generator | int | None = None, x_t0: torch.Tensor | None = None,
                        l1_weight: torch.Tensor | None = None):
    """DiffusionCLIP proper (Kim et al., CVPR 2022): the same loss as ``edit_latent``, but the
    latents x_{t0} = invert(x_src) stay fixed (inverted once by the model as it is) and Adam updates
    ``model``'s parameters *in place* (copy it first to keep the original: ``copy.deepcopy(model)``).
    The fine-tuned model then edits any image by ``generate(model, invert(original, x, t_end=t0))``
    (DiffusionCLIP inverts with the original model). ``model(x, t)`` is an ``nn.Module`` returning the
    velocity; only its parameters with ``requires_grad`` are trained. DiffusionCLIP's lr is 2e-6 to 8e-6
    for its 100M+-parameter models. ``x_t0`` and ``l1_weight`` as in ``edit_latent``. Returns ``(x_edit (N, ...), history)``
    as ``edit_latent``.
    """
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"fine_tune_generator trains a model's parameters: pass an nn.Module, got {type(model).__name__}")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True to fine-tune")
    _check_edit_args(x_src, direction, txt_tar, steps, t0, lr, iterations, lambda_dir, lambda_l1,
                     lambda_global, inversion, l1_weight)
    gen = _as_generator(generator)
    x_src = x_src.detach()
    latent = _given_or_start(x_t0, model, x_src, t0, inversion_steps or steps, inversion, gen).detach()  # fixed
    return _edit_loop(model, encode_image, x_src, lambda: latent, params, direction, txt_tar,
                      steps=steps, t0=t0, lr=lr, iterations=iterations, lambda_dir=lambda_dir,
                      lambda_l1=lambda_l1, lambda_global=lambda_global, l1_weight=l1_weight)
