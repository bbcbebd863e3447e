"""Diffusion foundations: score SDEs, denoising score matching, samplers and a VAE (notebook 08).

Follows the score SDE paper (Song et al., 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations") and its reference code ``yang-song/score_sde_pytorch``
(``sde_lib.py``, ``losses.py``, ``sampling.py``): the same class and method names (``VPSDE``,
``VESDE``, ``sde``, ``marginal_prob``, ``prior_sampling``, ``reverse``), the same defaults
(VP: ``beta_min=0.1``, ``beta_max=20``; VE: ``sigma_min=0.01``, ``sigma_max=50``), and the
VAE pieces named as diffusers' ``AutoencoderKL`` / ``DiagonalGaussianDistribution`` name them
(``mean``, ``logvar``, ``sample``, ``mode``, ``kl``, ``scaling_factor``).

Layout: SDEs -> score network for 2-D data -> loss -> samplers -> distribution distance ->
toy data -> VAE (encoder Q(z|X), reparameterisation, ELBO) -> latent diffusion helpers.
Time runs from t = 0 (data) to t = T = 1 (noise).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "SDE", "VPSDE", "VESDE", "simulate_forward", "GaussianFourierProjection", "ScoreMLP", "get_score_fn",
    "dsm_loss", "reverse_sde_sample", "reverse_sde_step", "probability_flow_sample", "energy_distance", "toy_data",
    "gaussian_kl", "reparameterize", "VAE", "elbo_loss", "encode_latents",
]


# ----------------------------------------------------------------------------------------------
# SDEs:  dx = f(x, t) dt + g(t) dw,  t in [0, T]
# ----------------------------------------------------------------------------------------------

def _as_time(t, x: torch.Tensor) -> torch.Tensor:
    """``t`` as a (N,) tensor on x's device (a float or a (N,) tensor)."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a float or a tensor of shape ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t


def _bcast(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1) to broadcast against x of shape (N, ...)."""
    return v.reshape(-1, *([1] * (x.ndim - 1)))


class SDE:
    """Base class of a forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` (notebook 08)."""

    T: float = 1.0

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(drift f(x, t) of x's shape, diffusion g(t) of shape (N,))."""
        raise NotImplementedError

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """Closed-form p_t(x | x0) = N(mean, std^2 I): (mean of x0's shape, std of shape (N,))."""
        raise NotImplementedError

    def prior_sampling(self, shape, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def reverse(self, score_fn: Callable, probability_flow: bool = False) -> Callable:
        """Drift and diffusion of the reverse-time SDE (or of the probability-flow ODE).

        Reverse SDE:  dx = [f - g^2 grad log p_t(x)] dt + g dw_bar   (time runs backwards)
        PF ODE:       dx = [f - 1/2 g^2 grad log p_t(x)] dt          (no noise)
        """
        def rev(x: torch.Tensor, t):
            t = _as_time(t, x)
            drift, diffusion = self.sde(x, t)
            score = score_fn(x, t)
            # f - g^2 * score * (1/2 for the ODE)
            drift = drift - _bcast(diffusion, x) ** 2 * score * (0.5 if probability_flow else 1.0)
            diffusion = torch.zeros_like(diffusion) if probability_flow else diffusion
            return drift, diffusion
        return rev


class VPSDE(SDE):
    """Variance-preserving SDE (the continuous limit of DDPM), as ``sde_lib.VPSDE`` (notebook 08).

    beta(t) = beta_min + t (beta_max - beta_min);   dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw.
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_0, self.beta_1, self.N = float(beta_min), float(beta_max), int(N)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def sde(self, x, t):
        t = _as_time(t, x)
        beta_t = self.beta(t)
        # f(x, t) = -1/2 beta(t) x ;  g(t) = sqrt(beta(t))
        drift = -0.5 * _bcast(beta_t, x) * x
        return drift, torch.sqrt(beta_t)

    def marginal_prob(self, x0, t):
        t = _as_time(t, x0)
        # log alpha(t) = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0   (integral of -1/2 beta)
        log_mean_coeff = -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        mean = torch.exp(_bcast(log_mean_coeff, x0)) * x0
        # std = sqrt(1 - alpha(t)^2)
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff))
        return mean, std

    def prior_sampling(self, shape, generator=None):
        # p_T = N(0, I)
        return torch.randn(*shape, generator=generator)

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_0}, beta_max={self.beta_1}, N={self.N})"


class VESDE(SDE):
    """Variance-exploding SDE (the continuous limit of NCSN/SMLD), as ``sde_lib.VESDE`` (notebook 08).

    sigma(t) = sigma_min (sigma_max / sigma_min)^t;   dx = sigma(t) sqrt(2 ln(sigma_max / sigma_min)) dw.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max, self.N = float(sigma_min), float(sigma_max), int(N)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        t = _as_time(t, x)
        # f = 0 ;  g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min))  so that d sigma^2/dt = g^2
        diffusion = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def marginal_prob(self, x0, t):
        t = _as_time(t, x0)
        # mean = x0 ;  std = sigma(t)   (score_sde's convention, ignoring the tiny sigma_min^2 at t = 0)
        return x0, self.sigma(t)

    def prior_sampling(self, shape, generator=None):
        # p_T = N(0, sigma_max^2 I)
        return torch.randn(*shape, generator=generator) * self.sigma_max

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"


@torch.no_grad()
def simulate_forward(sde: SDE, x0: torch.Tensor, t_end: float = 1.0, steps: int = 1000,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler-Maruyama simulation of the forward SDE from x0 at t=0 to ``t_end`` (notebook 08).

    Used to check ``marginal_prob`` against a Monte-Carlo estimate. Returns x at ``t_end``.
    """
    if steps < 1 or not 0.0 < t_end <= sde.T:
        raise ValueError(f"need steps >= 1 and 0 < t_end <= {sde.T}, got steps={steps}, t_end={t_end}")
    dt = t_end / steps
    x = x0.clone()
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, dtype=x.dtype)
        drift, diffusion = sde.sde(x, t)
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        # x <- x + f dt + g sqrt(dt) z
        x = x + drift * dt + _bcast(diffusion, x) * math.sqrt(dt) * z
    return x


# ----------------------------------------------------------------------------------------------
# Score network for 2-D data (and for small VAE latents)
# ----------------------------------------------------------------------------------------------

class GaussianFourierProjection(nn.Module):
    """Random Fourier features of the time, as in score_sde's ``layerspp.GaussianFourierProjection``."""

    def __init__(self, embedding_size: int = 32, scale: float = 16.0):
        super().__init__()
        # fixed (not trained) frequencies W ~ N(0, scale^2); kept in the state dict
        self.W = nn.Parameter(torch.randn(embedding_size) * scale, requires_grad=False)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, 2 * embedding_size)
        # [sin(2 pi W t), cos(2 pi W t)]
        x_proj = t[:, None] * self.W[None, :] * 2 * math.pi
        return torch.cat([torch.sin(x_proj), torch.cos(x_proj)], dim=-1)


class ScoreMLP(nn.Module):
    """Small MLP ``eps_theta(x, t)`` for 2-D data (notebook 08); ``get_score_fn`` turns it into a score.

    It predicts the noise z of x_t = mean + std z, as score_sde's DDPM models do; the score is then
    grad log p_t(x) ~= -eps_theta(x, t) / std(t).
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, embedding_size: int = 32,
                 fourier_scale: float = 16.0):
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be >= 1, got {dim}, {hidden}, {depth}")
        self.config = {"dim": dim, "hidden": hidden, "depth": depth, "embedding_size": embedding_size,
                       "fourier_scale": fourier_scale}
        self.dim = dim
        self.embed = GaussianFourierProjection(embedding_size, fourier_scale)
        self.t_mlp = nn.Sequential(nn.Linear(2 * embedding_size, hidden), nn.SiLU())
        self.inp = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(nn.Sequential(nn.SiLU(), nn.Linear(hidden, hidden)) for _ in range(depth))
        self.out = nn.Sequential(nn.SiLU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # (N, dim), (N,) -> (N, dim)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"ScoreMLP expects x of shape (N, {self.dim}), got {tuple(x.shape)}")
        t = _as_time(t, x)
        temb = self.t_mlp(self.embed(t))  # (N, hidden)
        h = self.inp(x) + temb
        for blk in self.blocks:
            h = h + blk(h) + temb  # residual MLP, time added at every block
        return self.out(h)


def get_score_fn(sde: SDE, model: nn.Module) -> Callable:
    """score(x, t) = -eps_theta(x, t) / std(t)   (score_sde's ``get_score_fn`` for noise-predicting models)."""
    def score_fn(x: torch.Tensor, t) -> torch.Tensor:
        t = _as_time(t, x)
        _, std = sde.marginal_prob(torch.zeros_like(x), t)
        return -model(x, t) / _bcast(std, x)
    return score_fn


def dsm_loss(model: nn.Module, sde: SDE, x0: torch.Tensor, eps: float = 1e-5,
             generator: torch.Generator | None = None, reduce_mean: bool = False) -> torch.Tensor:
    """Denoising score matching, as score_sde's ``get_sde_loss_fn`` without likelihood weighting (notebook 08).

    t ~ U(eps, T), z ~ N(0, I), x_t = mean(t) x0 + std(t) z; the score of p_t(x_t | x0) is -z / std, so
    loss = E || s_theta(x_t, t) std(t) + z ||^2   (1/2 sum over dimensions, or their mean if ``reduce_mean``).
    """
    t = torch.rand(x0.shape[0], generator=generator, dtype=x0.dtype) * (sde.T - eps) + eps
    z = torch.randn(x0.shape, generator=generator, dtype=x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    perturbed = mean + _bcast(std, x0) * z
    score = get_score_fn(sde, model)(perturbed, t)
    losses = torch.square(score * _bcast(std, x0) + z).reshape(x0.shape[0], -1)
    losses = losses.mean(dim=-1) if reduce_mean else 0.5 * losses.sum(dim=-1)
    return losses.mean()


# ----------------------------------------------------------------------------------------------
# Samplers (time runs backwards from T to eps)
# ----------------------------------------------------------------------------------------------

def _check_sampler_args(steps: int, x_T: torch.Tensor):
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError("x_T must be a (N, ...) tensor drawn from sde.prior_sampling")


@torch.no_grad()
def reverse_sde_sample(sde: SDE, score_fn: Callable, x_T: torch.Tensor, steps: int = 500, eps: float = 1e-3,
                       generator: torch.Generator | None = None, return_trajectory: bool = False,
                       denoise: bool = True):
    """Euler-Maruyama on the reverse-time SDE (score_sde's ``EulerMaruyamaPredictor``) (notebook 08).

    Time grid: ``steps + 1`` points from T down to ``eps`` (score_sde and diffusers'
    ``ScoreSdeVpScheduler`` use ``steps`` points with dt = 1 / steps instead; one step is the same).

    x_{t-dt} = x_t - [f - g^2 s(x_t, t)] dt + g sqrt(dt) z ;  with ``denoise`` the last step adds no noise.
    Returns x_0, or (x_0, trajectory of shape (steps + 1, N, ...)) with ``return_trajectory``.
    """
    _check_sampler_args(steps, x_T)
    rsde = sde.reverse(score_fn, probability_flow=False)
    timesteps = torch.linspace(sde.T, eps, steps + 1)
    x, traj = x_T.clone(), [x_T.clone()]
    for i in range(steps):
        t, dt = timesteps[i], float(timesteps[i] - timesteps[i + 1])  # dt > 0: we step backwards in time
        z = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x, x_mean = reverse_sde_step(rsde, x, t, dt, z)
        if denoise and i == steps - 1:
            x = x_mean
        traj.append(x.clone())
    return (x, torch.stack(traj)) if return_trajectory else x


def reverse_sde_step(rsde: Callable, x: torch.Tensor, t, dt: float, z: torch.Tensor):
    """One Euler-Maruyama step of the reverse SDE ``rsde = sde.reverse(score_fn)`` from t to t - dt.

    Returns (x, x_mean) as diffusers' ``ScoreSdeVpScheduler.step_pred`` does:
    x_mean = x - [f - g^2 s] dt ;  x = x_mean + g sqrt(dt) z.
    """
    if dt <= 0:
        raise ValueError(f"dt is the (positive) size of a backward step, got {dt}")
    drift, diffusion = rsde(x, t)
    x_mean = x - drift * dt
    return x_mean + _bcast(diffusion, x) * math.sqrt(dt) * z, x_mean


@torch.no_grad()
def probability_flow_sample(sde: SDE, score_fn: Callable, x_T: torch.Tensor, steps: int = 100,
                            eps: float = 1e-3, return_trajectory: bool = False):
    """Euler steps on the probability-flow ODE dx = [f - 1/2 g^2 s(x, t)] dt, from T to eps (notebook 08).

    Deterministic: the same x_T always gives the same x_0. Returns x_0 (and the trajectory).
    """
    _check_sampler_args(steps, x_T)
    ode = sde.reverse(score_fn, probability_flow=True)
    timesteps = torch.linspace(sde.T, eps, steps + 1)
    x, traj = x_T.clone(), [x_T.clone()]
    for i in range(steps):
        t, dt = timesteps[i], timesteps[i] - timesteps[i + 1]
        drift, _ = ode(x, t)
        x = x - drift * dt
        traj.append(x.clone())
    return (x, torch.stack(traj)) if return_trajectory else x


# ----------------------------------------------------------------------------------------------
# A distance between sample sets, and toy data
# ----------------------------------------------------------------------------------------------

def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Squared energy distance 2 E|X-Y| - E|X-X'| - E|Y-Y'| between two sample sets (V-statistic) (notebook 08).

    Zero iff the empirical distributions coincide; in 1-D it equals ``scipy.stats.energy_distance(x, y) ** 2``.
    """
    x, y = x.reshape(x.shape[0], -1).double(), y.reshape(y.shape[0], -1).double()
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}")
    return float(2 * torch.cdist(x, y).mean() - torch.cdist(x, x).mean() - torch.cdist(y, y).mean())


_TOY_STATS = {  # mean and std of each 2-D toy set (from 100,000 points), to standardize them
    "moons": ((0.5, 0.25), (0.87, 0.50)),
    "swiss_roll": ((2.0, 0.21), (6.65, 6.95)),
}


def toy_data(name: str, n: int, seed: int, noise: float | None = None) -> torch.Tensor:
    """(n, 2) standardized points from scikit-learn's ``make_moons`` or ``make_swiss_roll`` (x and z axes).

    Different seeds give independent sets: train on one seed, measure on another (notebook 08).
    """
    from sklearn.datasets import make_moons, make_swiss_roll

    if name not in _TOY_STATS:
        raise ValueError(f"unknown toy data {name!r}; choose one of {sorted(_TOY_STATS)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if name == "moons":
        X, _ = make_moons(n, noise=0.05 if noise is None else noise, random_state=seed)
    else:
        X, _ = make_swiss_roll(n, noise=0.5 if noise is None else noise, random_state=seed)
        X = X[:, [0, 2]]
    mean, std = (np.asarray(v) for v in _TOY_STATS[name])
    return torch.from_numpy((X - mean) / std).float()


# ----------------------------------------------------------------------------------------------
# VAE: encoder Q(z|X), reparameterisation, ELBO = reconstruction - KL
# ----------------------------------------------------------------------------------------------

def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per sample, in closed form (notebook 08).

    KL = 1/2 sum_j (mean_j^2 + var_j - 1 - log var_j)   -- as diffusers' ``DiagonalGaussianDistribution.kl()``.
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar must have the same shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
    return 0.5 * torch.sum(mean ** 2 + logvar.exp() - 1.0 - logvar, dim=tuple(range(1, mean.ndim)))


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mean + std * eps, eps ~ N(0, I): a sample of Q(z|X) that gradients flow through (notebook 08)."""
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """An MLP VAE for the 8x8 digits (notebook 08): encoder Q(z|X) = N(mean, diag(var)), Bernoulli decoder.

    ``encode(x) -> (mean, logvar)``, ``decode(z) -> logits`` (pixels = sigmoid(logits)).
    ``scaling_factor`` plays the role of ``AutoencoderKL.config.scaling_factor``: latents are multiplied
    by it before diffusion so that they have unit standard deviation, and divided by it before decoding.
    """

    def __init__(self, latent_dim: int = 2, hidden: int = 256, image_size: int = 8, scaling_factor: float = 1.0):
        super().__init__()
        if latent_dim < 1 or hidden < 1 or image_size < 1:
            raise ValueError(f"latent_dim, hidden and image_size must be >= 1, got {latent_dim}, {hidden}, {image_size}")
        self.config = {"latent_dim": latent_dim, "hidden": hidden, "image_size": image_size,
                       "scaling_factor": float(scaling_factor)}
        d = image_size * image_size
        self.latent_dim, self.image_size = latent_dim, image_size
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, 2 * latent_dim))
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                     nn.Linear(hidden, d))

    @property
    def scaling_factor(self) -> float:
        return self.config["scaling_factor"]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (N, 1, 8, 8) -> 2 x (N, latent)
        if x.ndim != 4 or x.shape[1:] != (1, self.image_size, self.image_size):
            raise ValueError(f"VAE.encode expects images of shape (N, 1, {self.image_size}, {self.image_size}) "
                             f"in [0, 1], got {tuple(x.shape)}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)  # the clamp diffusers applies

    def decode(self, z: torch.Tensor) -> torch.Tensor:  # (N, latent) -> logits (N, 1, 8, 8)
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"VAE.decode expects latents of shape (N, {self.latent_dim}), got {tuple(z.shape)}")
        return self.decoder(z).reshape(-1, 1, self.image_size, self.image_size)

    def forward(self, x, generator=None):
        mean, logvar = self.encode(x)
        z = reparameterize(mean, logvar, generator)
        return self.decode(z), mean, logvar

    def save_pretrained(self, folder, **extra) -> None:
        """Weights as ``model.safetensors`` + ``config.json`` (no pickles)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps({**self.config, **extra}, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder) -> "VAE":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise RuntimeError(f"{folder} has no config.json; build it with `python scripts/train_vae.py`")
        cfg = json.loads((folder / "config.json").read_text())
        model = cls(**{k: cfg[k] for k in ("latent_dim", "hidden", "image_size", "scaling_factor")})
        model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
        return model.eval()


def elbo_loss(vae: VAE, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None):
    """Negative ELBO per image, averaged: -E_Q[log P(X|z)] + beta * KL(Q(z|X) || N(0, I)) (notebook 08).

    ELBO = E_{z~Q(z|X)}[log P(X|z)] - KL(Q(z|X) || P(z)) <= log P(X); one reparameterised sample of z,
    Bernoulli log-likelihood of the pixels in [0, 1]. Returns (loss, {"recon": ..., "kl": ...}).
    """
    if x.min() < 0 or x.max() > 1:
        raise ValueError("elbo_loss expects pixels in [0, 1] (load_digits(scale='unit'))")
    logits, mean, logvar = vae(x, generator)
    # -log P(X|z) = binary cross-entropy, summed over the 64 pixels
    recon = F.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)  # (N,)
    kl = gaussian_kl(mean, logvar)  # (N,)
    loss = (recon + beta * kl).mean()
    return loss, {"recon": recon.mean().item(), "kl": kl.mean().item()}


@torch.no_grad()
def encode_latents(vae: VAE, x: torch.Tensor) -> torch.Tensor:
    """Scaled latent means ``mean(Q(z|X)) * scaling_factor`` (N, latent): the data of latent diffusion."""
    mean, _ = vae.encode(x)
    return mean * vae.scaling_factor


def save_score_model(model: ScoreMLP, folder, filename: str = "latent_score") -> None:
    """A ``ScoreMLP`` as ``<filename>.safetensors`` + ``<filename>.json`` beside a VAE."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{filename}.safetensors"))
    (folder / f"{filename}.json").write_text(json.dumps(model.config, indent=2) + "\n")


def load_score_model(folder, filename: str = "latent_score") -> ScoreMLP:
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / f"{filename}.json").is_file():
        raise RuntimeError(f"{folder} has no {filename}.json; build it with `python scripts/train_vae.py`")
    model = ScoreMLP(**json.loads((folder / f"{filename}.json").read_text()))
    model.load_state_dict(load_file(str(folder / f"{filename}.safetensors")), strict=True)
    return model.eval()


def train_score_model(data: torch.Tensor, sde: SDE, steps: int = 2000, batch_size: int = 256, lr: float = 2e-3,
                      seed: int = 0, model: ScoreMLP | None = None, desc: str = "score matching", **model_kwargs):
    """Train a ``ScoreMLP`` with ``dsm_loss`` on an (N, dim) tensor; returns (model, History) (notebook 08)."""
    from .training import cosine_schedule, train_loop

    if data.ndim != 2:
        raise ValueError(f"data must be (N, dim), got {tuple(data.shape)}")
    torch.manual_seed(seed)
    model = model or ScoreMLP(dim=data.shape[1], **model_kwargs)
    g = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            yield data[torch.randint(0, data.shape[0], (batch_size,), generator=g)]

    class _Once:  # train_loop cycles an iterable; an infinite generator is enough
        def __iter__(self):
            return batches()

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = train_loop(model, _Once(), lambda m, x: dsm_loss(m, sde, x, generator=g), opt, steps,
                      scheduler=cosine_schedule(opt, steps, warmup=min(100, steps // 10)), desc=desc)
    return model, hist


def train_digit_judge(x: torch.Tensor, y: torch.Tensor, steps: int = 300, lr: float = 1e-2, seed: int = 0,
                      hidden: int = 128) -> nn.Module:
    """A small MLP classifier, a quick judge of generated digits (notebook 08).

    Trained full-batch with AdamW on the *training* digits only; ``judge(x).softmax(-1)`` gives class
    probabilities for images (N, 1, 8, 8) in [0, 1].
    """
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"need images (N, 1, H, W) and labels (N,), got {tuple(x.shape)} and {tuple(y.shape)}")
    torch.manual_seed(seed)
    judge = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), hidden), nn.SiLU(), nn.Linear(hidden, int(y.max()) + 1))
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(judge(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return judge.eval()


__all__ += ["save_score_model", "load_score_model", "train_score_model", "train_digit_judge"]
