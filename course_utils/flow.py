"""Rectified flow (notebook 10): straight paths between data and noise, as in SD3 and minRF.

Convention (SD3, minRF): t = 0 is data, t = 1 is noise,
    x_t = (1 - t) x0 + t * noise,   v = dx_t/dt = noise - x0,
and sampling integrates dx/dt = v(x, t) from t = 1 down to t = 0 (Euler: x <- x + (t_next - t) v).
Public names: ``interpolate``, ``velocity_target``, ``sample_timesteps`` (``"uniform"`` or
``"logit_normal"``), ``timestep_density``, ``shift_timesteps``, ``sampling_times``, ``euler_step``,
``euler_sample``, plus the training loss ``rf_loss``, ``reflow_pairs`` (1-RF -> 2-RF) and
``straightness``. Sampling a class-conditional DiT with it is ``course_utils.recipes.digits``; the
sample-set distances are in ``course_utils.evaluation``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .diffusion import as_time, random_tensor

TIMESTEP_KINDS = ("uniform", "logit_normal")


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
    """x_t = (1 - t) x0 + t noise (t = 0 data, t = 1 noise, as in SD3); t scalar or (N,)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    t = as_time(t, x0, broadcast=True)  # (N, 1, ..., 1)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = d x_t / dt = noise - x0 (constant along the straight path)."""
    if x0.shape != noise.shape:
        raise ValueError(f"x0 and noise must have the same shape, got {tuple(x0.shape)} and {tuple(noise.shape)}")
    return noise - x0


def sample_timesteps(n: int, kind: str = "logit_normal", m: float = 0.0, s: float = 1.0,
                     generator: torch.Generator | None = None, *, device=None,
                     dtype: torch.dtype | None = None) -> torch.Tensor:
    """(n,) training times in (0, 1): ``"uniform"`` U(0, 1), or ``"logit_normal"`` t = sigmoid(u), u ~ N(m, s^2)
    (SD3's re-weighting that favours the middle of the path), on ``device`` in ``dtype``."""
    if kind not in TIMESTEP_KINDS:
        raise ValueError(f"kind must be one of {TIMESTEP_KINDS}, got {kind!r}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if kind == "uniform":
        return random_tensor((n,), generator=generator, device=device, dtype=dtype, uniform=True)
    if s <= 0:
        raise ValueError(f"the logit-normal scale s must be > 0, got {s}")
    # t = sigmoid(u), u ~ N(m, s^2)
    return torch.sigmoid(m + s * random_tensor((n,), generator=generator, device=device, dtype=dtype))


def timestep_density(t: torch.Tensor, kind: str = "logit_normal", m: float = 0.0, s: float = 1.0) -> torch.Tensor:
    """Density of ``sample_timesteps``: 1 for uniform; logit-normal
    pi_ln(t; m, s) = 1 / (s sqrt(2 pi)) * 1 / (t (1 - t)) * exp(-(logit(t) - m)^2 / (2 s^2))."""
    if kind not in TIMESTEP_KINDS:
        raise ValueError(f"kind must be one of {TIMESTEP_KINDS}, got {kind!r}")
    t = torch.as_tensor(t, dtype=torch.float64, device=t.device if torch.is_tensor(t) else None)
    if kind == "uniform":
        return torch.ones_like(t)
    logit = torch.log(t) - torch.log1p(-t)
    return 1 / (s * math.sqrt(2 * math.pi)) / (t * (1 - t)) * torch.exp(-(logit - m) ** 2 / (2 * s ** 2))


def shift_timesteps(t, shift: float) -> torch.Tensor:
    """SD3's resolution shift: t_m = alpha t_n / (1 + (alpha - 1) t_n) (alpha = ``shift``; diffusers'
    ``FlowMatchEulerDiscreteScheduler(shift=...)`` applies the same map to its sigmas)."""
    if shift <= 0:
        raise ValueError(f"shift must be > 0, got {shift}")
    t = torch.as_tensor(t)
    return shift * t / (1 + (shift - 1) * t)


def sampling_times(steps: int, shift: float = 1.0, *, device=None, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(steps + 1,) times from 1 (noise) to 0 (data), evenly spaced then shifted, on ``device``."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_timesteps(torch.linspace(1.0, 0.0, steps + 1, device=device, dtype=dtype), shift)


def euler_step(x: torch.Tensor, v: torch.Tensor, t, t_next) -> torch.Tensor:
    """One Euler step of dx/dt = v: x_{t_next} = x_t + (t_next - t) v (diffusers: sample + (sigma_next - sigma) * model_output)."""
    return x + (t_next - t) * v


@torch.no_grad()
def euler_sample(model: Callable, noise: torch.Tensor, steps: int = 10, *, shift: float = 1.0,
                 times: torch.Tensor | None = None, return_trajectory: bool = False):
    """Integrate dx/dt = v(x, t) from t = 1 (``noise``) to t = 0 with Euler steps.

    ``model(x, t)`` returns the velocity, with t of shape (N,) in [0, 1] (wrap a class-conditional
    model in a lambda). ``times`` overrides the schedule (a decreasing (steps + 1,) tensor from 1 to 0).
    The time grid lives on noise's device in float32 at least (bfloat16 would merge close times);
    the model sees t in noise's dtype.
    Returns x_0, or (x_0, trajectory (steps + 1, N, ...)) with ``return_trajectory``.
    """
    dtype = torch.promote_types(noise.dtype, torch.float32)
    times = (sampling_times(steps, shift, device=noise.device, dtype=dtype) if times is None
             else torch.as_tensor(times, dtype=dtype).to(noise.device))
    if times.ndim != 1 or len(times) < 2 or (times.device.type != "meta" and not bool((times[1:] < times[:-1]).all())):
        raise ValueError("times must be a decreasing 1-D tensor of at least 2 values (from 1 to 0)")
    x = noise
    traj = [x]
    for t, t_next in zip(times[:-1], times[1:]):
        v = model(x, as_time(t, x))
        # x_{t_next} = x_t + (t_next - t) v(x_t, t)
        x = euler_step(x, v, t, t_next)
        if return_trajectory:
            traj.append(x)
    return (x, torch.stack(traj)) if return_trajectory else x


def rf_loss(model: Callable, x0: torch.Tensor, *, kind: str = "logit_normal", m: float = 0.0, s: float = 1.0,
            noise: torch.Tensor | None = None, t: torch.Tensor | None = None, **model_kwargs) -> torch.Tensor:
    """Conditional flow matching: E_t || v_theta(x_t, t) - (noise - x0) ||^2 (mean over all elements).

    ``noise`` defaults to N(0, I); passing paired noise (from ``reflow_pairs``) gives the reflow loss.
    """
    noise = torch.randn_like(x0) if noise is None else noise
    t = sample_timesteps(x0.shape[0], kind, m, s, device=x0.device, dtype=x0.dtype) if t is None else t
    # x_t = (1 - t) x0 + t noise
    x_t = interpolate(x0, noise, t)
    v = model(x_t, t, **model_kwargs)
    # || v_theta(x_t, t) - (noise - x0) ||^2
    return ((v - velocity_target(x0, noise)) ** 2).mean()


@torch.no_grad()
def reflow_pairs(model: Callable, noise: torch.Tensor, steps: int = 25, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Reflow data: (x0 = ODE_1RF(noise), noise). Training on these pairs gives 2-RF (straighter paths)."""
    return euler_sample(model, noise, steps, **kwargs), noise


def straightness(trajectory: torch.Tensor, times: torch.Tensor | None = None) -> float:
    """Liu et al.'s straightness S = int_0^1 E || (X_end - X_start) - dX/dt ||^2 dt on a discretised path
    ((K + 1, N, ...) states at ``times``, default evenly spaced); 0 means perfectly straight."""
    k = trajectory.shape[0] - 1
    if k < 1:
        raise ValueError("a trajectory needs at least two states")
    times = (torch.linspace(1.0, 0.0, k + 1, device=trajectory.device) if times is None
             else torch.as_tensor(times).to(trajectory.device))
    dt = (times[1:] - times[:-1]).to(trajectory).reshape(-1, *([1] * (trajectory.ndim - 1)))
    vel = (trajectory[1:] - trajectory[:-1]) / dt                       # (K, N, ...) dX/dt per segment
    overall = (trajectory[-1] - trajectory[0]) / (times[-1] - times[0])  # (N, ...) mean velocity
    dev = ((vel - overall) ** 2).flatten(2).sum(-1).mean(-1)            # (K,)
    return float((dev * dt.abs().flatten()).sum())
