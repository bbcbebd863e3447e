"""Diffusion foundations: score SDEs, denoising score matching, samplers and a VAE (notebook 08).

Follows Song et al. 2021 (score SDEs) and ``yang-song/score_sde_pytorch`` (``sde_lib``, ``losses``,
``sampling``): its names (``VPSDE``, ``VESDE``, ``sde``, ``marginal_prob``, ``prior_sampling``, ``reverse``)
and defaults (VP beta 0.1..20, VE sigma 0.01..50); the VAE pieces as diffusers' ``AutoencoderKL`` /
``DiagonalGaussianDistribution`` name them (``mean``, ``logvar``, ``kl``, ``scaling_factor``).

Layout: time/noise helpers (shared with ``dit`` and ``flow``) -> SDEs -> score network -> loss ->
samplers -> VAE. Time runs from t = 0 (data) to t = T = 1 (noise). Training and save/load are in
``recipes.vae`` / ``recipes.score``, the 2-D toys in ``world.toys``, the distances in ``evaluation``.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

# ---- Time and noise: the one timestep-broadcast helper and the one random draw (also used by dit, flow) ----

def as_time(t, x: torch.Tensor, *, broadcast: bool = False, dtype: torch.dtype | None = None) -> torch.Tensor:
    """t (float, 0-d or (N,)) as (N,) on x's device in x's dtype (or ``dtype``); ``broadcast``: (N, 1, ..., 1)."""
    t = torch.as_tensor(t, dtype=dtype or x.dtype, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.ndim != 1 or t.shape[0] != x.shape[0]:
        raise ValueError(f"t must be a float or a tensor of shape ({x.shape[0]},), got shape {tuple(t.shape)}")
    return t.reshape(-1, *([1] * (x.ndim - 1))) if broadcast else t


def random_tensor(shape, *, generator: torch.Generator | None = None, device=None, dtype: torch.dtype | None = None,
                  uniform: bool = False) -> torch.Tensor:
    """N(0, I) (U(0, 1) if ``uniform``) of ``shape`` on ``device`` in ``dtype``, drawn on the generator's own
    device and then moved: a CPU generator gives the same numbers whatever device the model runs on."""
    draw = torch.rand if uniform else torch.randn
    src = generator.device if generator is not None else device
    return draw(tuple(shape), generator=generator, device=src, dtype=dtype).to(device)


# ---- SDEs:  dx = f(x, t) dt + g(t) dw,  t in [0, T] ------------------------------------------

class SDE:
    """Base class of a forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``t in [0, T]`` (notebook 08)."""

    T: float = 1.0

    def sde(self, x: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:  # (f(x, t) like x, g(t) (N,))
        raise NotImplementedError

    def marginal_prob(self, x0: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:  # p_t(x | x0) = N(mean, std^2 I)
        raise NotImplementedError

    def prior_sampling(self, shape, generator=None, *, device=None, dtype=None) -> torch.Tensor:  # a draw of p_T
        raise NotImplementedError

    def reverse(self, score_fn: Callable, probability_flow: bool = False) -> Callable:
        """Drift and diffusion of the reverse-time SDE  dx = [f - g^2 grad log p_t(x)] dt + g dw_bar,
        or of the probability-flow ODE  dx = [f - 1/2 g^2 grad log p_t(x)] dt  (no noise)."""
        def rev(x: torch.Tensor, t):
            t = as_time(t, x)
            drift, diffusion = self.sde(x, t)
            score = score_fn(x, t)
            # f - g^2 * score * (1/2 for the ODE)
            drift = drift - as_time(diffusion, x, broadcast=True) ** 2 * score * (0.5 if probability_flow else 1.0)
            diffusion = torch.zeros_like(diffusion) if probability_flow else diffusion
            return drift, diffusion
        return rev


class VPSDE(SDE):
    """Variance-preserving SDE (DDPM's continuous limit), ``sde_lib.VPSDE`` (notebook 08):
    beta(t) = beta_min + t (beta_max - beta_min);   dx = -1/2 beta(t) x dt + sqrt(beta(t)) dw."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, N: int = 1000):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got beta_min={beta_min}, beta_max={beta_max}")
        self.beta_0, self.beta_1, self.N = float(beta_min), float(beta_max), int(N)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_0 + t * (self.beta_1 - self.beta_0)

    def sde(self, x, t):
        t = as_time(t, x)
        beta_t = self.beta(t)
        # f(x, t) = -1/2 beta(t) x ;  g(t) = sqrt(beta(t))
        drift = -0.5 * as_time(beta_t, x, broadcast=True) * x
        return drift, torch.sqrt(beta_t)

    def marginal_prob(self, x0, t):
        t = as_time(t, x0)
        # log alpha(t) = -1/4 t^2 (beta_1 - beta_0) - 1/2 t beta_0   (integral of -1/2 beta)
        log_mean_coeff = -0.25 * t ** 2 * (self.beta_1 - self.beta_0) - 0.5 * t * self.beta_0
        mean = torch.exp(as_time(log_mean_coeff, x0, broadcast=True)) * x0
        # std = sqrt(1 - alpha(t)^2)
        std = torch.sqrt(1.0 - torch.exp(2.0 * log_mean_coeff))
        return mean, std

    def prior_sampling(self, shape, generator=None, *, device=None, dtype=None):
        # p_T = N(0, I)
        return random_tensor(shape, generator=generator, device=device, dtype=dtype)

    def __repr__(self):
        return f"VPSDE(beta_min={self.beta_0}, beta_max={self.beta_1}, N={self.N})"


class VESDE(SDE):
    """Variance-exploding SDE (NCSN/SMLD's continuous limit), ``sde_lib.VESDE`` (notebook 08):
    sigma(t) = sigma_min (sigma_max / sigma_min)^t;   dx = sigma(t) sqrt(2 ln(sigma_max / sigma_min)) dw."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, N: int = 1000):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, sigma_max={sigma_max}")
        self.sigma_min, self.sigma_max, self.N = float(sigma_min), float(sigma_max), int(N)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return self.sigma_min * (self.sigma_max / self.sigma_min) ** t

    def sde(self, x, t):
        t = as_time(t, x)
        # f = 0 ;  g(t) = sigma(t) sqrt(2 ln(sigma_max / sigma_min))  so that d sigma^2/dt = g^2
        diffusion = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return torch.zeros_like(x), diffusion

    def marginal_prob(self, x0, t):
        t = as_time(t, x0)
        # mean = x0 ;  std = sigma(t)   (score_sde's convention, ignoring the tiny sigma_min^2 at t = 0)
        return x0, self.sigma(t)

    def prior_sampling(self, shape, generator=None, *, device=None, dtype=None):
        # p_T = N(0, sigma_max^2 I)
        return random_tensor(shape, generator=generator, device=device, dtype=dtype) * self.sigma_max

    def __repr__(self):
        return f"VESDE(sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, N={self.N})"


@torch.no_grad()
def simulate_forward(sde: SDE, x0: torch.Tensor, t_end: float = 1.0, steps: int = 1000,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Euler-Maruyama simulation of the forward SDE from x0 (t = 0) to ``t_end``: a Monte-Carlo check of
    ``marginal_prob`` (notebook 08)."""
    if steps < 1 or not 0.0 < t_end <= sde.T:
        raise ValueError(f"need steps >= 1 and 0 < t_end <= {sde.T}, got steps={steps}, t_end={t_end}")
    dt = t_end / steps
    x = x0.clone()
    for i in range(steps):
        drift, diffusion = sde.sde(x, i * dt)
        z = random_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        # x <- x + f dt + g sqrt(dt) z
        x = x + drift * dt + as_time(diffusion, x, broadcast=True) * math.sqrt(dt) * z
    return x


# ---- Score network for 2-D data (and for small VAE latents) ----------------------------------

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
    """Small MLP ``eps_theta(x, t)`` for 2-D data (notebook 08): it predicts the noise z of x_t = mean + std z,
    as score_sde's DDPM models do; ``get_score_fn`` gives the score -eps_theta(x, t) / std(t)."""

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
        t = as_time(t, x)
        temb = self.t_mlp(self.embed(t))  # (N, hidden)
        h = self.inp(x) + temb
        for blk in self.blocks:
            h = h + blk(h) + temb  # residual MLP, time added at every block
        return self.out(h)


def get_score_fn(sde: SDE, model: nn.Module) -> Callable:
    """score(x, t) = -eps_theta(x, t) / std(t)   (score_sde's ``get_score_fn`` for noise-predicting models)."""
    def score_fn(x: torch.Tensor, t) -> torch.Tensor:
        t = as_time(t, x)
        _, std = sde.marginal_prob(torch.zeros_like(x), t)
        return -model(x, t) / as_time(std, x, broadcast=True)
    return score_fn


def dsm_loss(model: nn.Module, sde: SDE, x0: torch.Tensor, eps: float = 1e-5,
             generator: torch.Generator | None = None, reduce_mean: bool = False) -> torch.Tensor:
    """Denoising score matching, score_sde's ``get_sde_loss_fn`` without likelihood weighting (notebook 08):
    t ~ U(eps, T), z ~ N(0, I); the score of p_t(x_t | x0) is -z / std (1/2 sum over dims, or ``reduce_mean``)."""
    t = random_tensor((x0.shape[0],), generator=generator, device=x0.device, dtype=x0.dtype, uniform=True) * (sde.T - eps) + eps
    z = random_tensor(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    mean, std = sde.marginal_prob(x0, t)
    std = as_time(std, x0, broadcast=True)
    # x_t = mean(t) x0 + std(t) z
    perturbed = mean + std * z
    score = get_score_fn(sde, model)(perturbed, t)
    # || s_theta(x_t, t) std(t) + z ||^2
    losses = torch.square(score * std + z).reshape(x0.shape[0], -1)
    losses = losses.mean(dim=-1) if reduce_mean else 0.5 * losses.sum(dim=-1)
    return losses.mean()


# ---- Samplers (time runs backwards from T to eps) --------------------------------------------

def _time_grid(sde: SDE, steps: int, eps: float, x_T: torch.Tensor) -> torch.Tensor:
    """(steps + 1,) times T -> eps on x_T's device, float32 at least (bfloat16 would merge close times)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    if not isinstance(x_T, torch.Tensor) or x_T.ndim < 2:
        raise ValueError("x_T must be a (N, ...) tensor drawn from sde.prior_sampling")
    dtype = torch.promote_types(x_T.dtype, torch.float32)
    return torch.linspace(sde.T, eps, steps + 1, device=x_T.device, dtype=dtype)


@torch.no_grad()
def reverse_sde_sample(sde: SDE, score_fn: Callable, x_T: torch.Tensor, steps: int = 500, eps: float = 1e-3,
                       generator: torch.Generator | None = None, return_trajectory: bool = False,
                       denoise: bool = True):
    """Euler-Maruyama on the reverse-time SDE (score_sde's ``EulerMaruyamaPredictor``) (notebook 08).

    ``steps + 1`` times from T down to ``eps`` (score_sde / diffusers' ``ScoreSdeVpScheduler`` use ``steps``
    points with dt = 1 / steps; one step is the same). With ``denoise`` the last step adds no noise.
    Returns x_0, or (x_0, trajectory of shape (steps + 1, N, ...)) with ``return_trajectory``.
    """
    timesteps = _time_grid(sde, steps, eps, x_T)
    rsde = sde.reverse(score_fn, probability_flow=False)
    x, traj = x_T.clone(), [x_T.clone()]
    for i in range(steps):
        t, dt = timesteps[i], timesteps[i] - timesteps[i + 1]  # dt > 0: we step backwards in time
        z = random_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x, x_mean = reverse_sde_step(rsde, x, t, dt, z)
        x = x_mean if denoise and i == steps - 1 else x
        traj.append(x.clone())
    return (x, torch.stack(traj)) if return_trajectory else x


def reverse_sde_step(rsde: Callable, x: torch.Tensor, t, dt: float, z: torch.Tensor):
    """One Euler-Maruyama step of ``rsde = sde.reverse(score_fn)`` from t to t - dt; returns (x, x_mean) as
    diffusers' ``ScoreSdeVpScheduler.step_pred``: x_mean = x - [f - g^2 s] dt ;  x = x_mean + g sqrt(dt) z."""
    if not torch.is_tensor(dt) and dt <= 0:
        raise ValueError(f"dt is the (positive) size of a backward step, got {dt}")
    drift, diffusion = rsde(x, t)
    x_mean = x - drift * dt
    return x_mean + as_time(diffusion, x, broadcast=True) * dt ** 0.5 * z, x_mean


@torch.no_grad()
def probability_flow_sample(sde: SDE, score_fn: Callable, x_T: torch.Tensor, steps: int = 100,
                            eps: float = 1e-3, return_trajectory: bool = False):
    """Euler steps on the probability-flow ODE dx = [f - 1/2 g^2 s(x, t)] dt from T to eps (notebook 08);
    deterministic: the same x_T always gives the same x_0. Returns x_0 (and the trajectory)."""
    timesteps = _time_grid(sde, steps, eps, x_T)
    ode = sde.reverse(score_fn, probability_flow=True)
    x, traj = x_T.clone(), [x_T.clone()]
    for i in range(steps):
        drift, _ = ode(x, timesteps[i])
        x = x - drift * (timesteps[i] - timesteps[i + 1])  # x_{t-dt} = x_t - [f - 1/2 g^2 s] dt
        traj.append(x.clone())
    return (x, torch.stack(traj)) if return_trajectory else x


# ---- VAE: encoder Q(z|X), reparameterisation, ELBO = reconstruction - KL ---------------------

def gaussian_kl(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag(exp(logvar))) || N(0, I)) per sample, in closed form, as diffusers'
    ``DiagonalGaussianDistribution.kl()`` (notebook 08)."""
    if mean.shape != logvar.shape:
        raise ValueError(f"mean and logvar must have the same shape, got {tuple(mean.shape)} and {tuple(logvar.shape)}")
    # KL = 1/2 sum_j (mean_j^2 + var_j - 1 - log var_j)
    return 0.5 * torch.sum(mean ** 2 + logvar.exp() - 1.0 - logvar, dim=tuple(range(1, mean.ndim)))


def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """z = mean + std * eps, eps ~ N(0, I): a sample of Q(z|X) that gradients flow through (notebook 08)."""
    eps = random_tensor(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


class VAE(nn.Module):
    """An MLP VAE for the 8x8 digits (notebook 08): encoder Q(z|X) = N(mean, diag(var)), Bernoulli decoder
    (pixels = sigmoid(logits)). ``scaling_factor`` is ``AutoencoderKL.config.scaling_factor``'s role: latents
    are multiplied by it before diffusion (unit std) and divided by it before decoding."""

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
            raise ValueError(f"VAE.encode expects (N, 1, {self.image_size}, {self.image_size}) in [0, 1], got {tuple(x.shape)}")
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


def elbo_loss(vae: VAE, x: torch.Tensor, beta: float = 1.0, generator: torch.Generator | None = None):
    """Negative ELBO per image, averaged (notebook 08): one reparameterised z, Bernoulli likelihood of pixels
    in [0, 1]. ELBO = E_Q[log P(X|z)] - KL(Q(z|X) || P(z)) <= log P(X). Returns (loss, {"recon", "kl"})."""
    if x.device.type != "meta" and (x.min() < 0 or x.max() > 1):
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
