"""Tests of course_utils.diffusion (notebook 08): closed forms, Monte-Carlo checks, parity with diffusers."""
import math

import numpy as np
import pytest
import torch

from course_utils import diffusion as D
from course_utils.evaluation import energy_distance
from course_utils.recipes import score as score_recipe
from course_utils.recipes import vae as vae_recipe
from course_utils.world import toys


# ---------------------------------------------------------------- SDE marginals vs Monte Carlo

@pytest.mark.parametrize("sde, t_end", [(D.VPSDE(), 0.3), (D.VPSDE(), 1.0), (D.VESDE(), 0.4), (D.VESDE(), 0.8)])
def test_marginal_prob_matches_monte_carlo_forward_simulation(sde, t_end):
    g = torch.Generator().manual_seed(0)
    x0 = torch.tensor([1.5, -0.5]).expand(20000, 2).clone()
    xt = D.simulate_forward(sde, x0, t_end, steps=400, generator=g)
    mean, std = sde.marginal_prob(x0, t_end)
    # Monte-Carlo standard error ~ std / sqrt(20000) < 1% of std; Euler-Maruyama bias is smaller
    tol = 0.03 * float(std[0]) + 0.01
    assert torch.allclose(xt.mean(0), mean[0], atol=tol), (xt.mean(0), mean[0])
    assert torch.allclose(xt.std(0), std[0].expand(2), atol=tol), (xt.std(0), std[0])


def test_score_sde_defaults_and_priors():
    vp, ve = D.VPSDE(), D.VESDE()
    assert (vp.beta_0, vp.beta_1, ve.sigma_min, ve.sigma_max) == (0.1, 20.0, 0.01, 50.0)
    x0 = torch.ones(3, 2)
    mean, std = vp.marginal_prob(x0, 1.0)
    # log alpha(1) = -1/4 (20 - 0.1) - 1/2 0.1 = -5.025
    assert torch.allclose(mean, torch.full_like(x0, math.exp(-5.025)))
    assert torch.allclose(std, torch.full((3,), math.sqrt(1 - math.exp(-10.05))))
    _, std_ve = ve.marginal_prob(x0, 1.0)
    assert torch.allclose(std_ve, torch.full((3,), 50.0))
    assert ve.prior_sampling((20000, 2), torch.Generator().manual_seed(0)).std().item() == pytest.approx(50, rel=0.02)
    # VE: g(t)^2 = d sigma(t)^2 / dt
    t = torch.tensor([0.2, 0.7])
    _, g = ve.sde(torch.zeros(2, 2), t)
    tt = t.clone().requires_grad_(True)
    (ve.sigma(tt) ** 2).sum().backward()
    assert torch.allclose(g ** 2, tt.grad, rtol=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="beta_min"):
        D.VPSDE(beta_min=5, beta_max=1)
    with pytest.raises(ValueError, match="sigma_min"):
        D.VESDE(sigma_min=0)
    with pytest.raises(ValueError, match="shape"):
        D.VPSDE().marginal_prob(torch.zeros(4, 2), torch.zeros(3))
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        D.ScoreMLP(dim=2)(torch.zeros(4, 3), torch.zeros(4))
    with pytest.raises(ValueError, match="steps"):
        D.probability_flow_sample(D.VPSDE(), lambda x, t: x, torch.zeros(4, 2), steps=0)
    with pytest.raises(ValueError, match="unknown toy"):
        toys.toy_data("circles", 10, 0)
    vae = D.VAE()
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        vae.encode(torch.zeros(2, 64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        D.elbo_loss(vae, torch.full((2, 1, 8, 8), -1.0))
    with pytest.raises(ValueError, match="same shape"):
        D.gaussian_kl(torch.zeros(2, 3), torch.zeros(2, 4))


# ---------------------------------------------------------------- samplers with the exact score

def _gaussian_score(sde, m, s):
    """Exact score of p_t when the data are N(m, s^2 I): p_t = N(alpha m, (alpha^2 s^2 + std^2) I)."""
    def score_fn(x, t):
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])
        alpha_m, std = sde.marginal_prob(torch.full_like(x, m), t)
        alpha = alpha_m / m
        var = alpha ** 2 * s ** 2 + std[:, None] ** 2
        return -(x - alpha_m) / var
    return score_fn


@pytest.mark.parametrize("sde", [D.VPSDE(), D.VESDE(sigma_max=10.0)])
def test_samplers_with_exact_score_recover_gaussian_data(sde):
    m, s = 2.0, 0.5
    score_fn = _gaussian_score(sde, m, s)
    g = torch.Generator().manual_seed(0)
    # start from the exact p_T (VE's prior N(0, sigma_max^2) would be off by m: a prior mismatch)
    alpha_m, std = sde.marginal_prob(torch.full((8000, 2), m), 1.0)
    x_T = alpha_m + (alpha_m / m * s).pow(2).add(std[:, None] ** 2).sqrt() * torch.randn(8000, 2, generator=g)
    x_sde = D.reverse_sde_sample(sde, score_fn, x_T, steps=400, generator=g)
    x_ode, traj = D.probability_flow_sample(sde, score_fn, x_T, steps=400, return_trajectory=True)
    assert traj.shape == (401, 8000, 2)
    for x in (x_sde, x_ode):
        assert x.mean().item() == pytest.approx(m, abs=0.05)
        assert x.std().item() == pytest.approx(s, abs=0.05)
    # the ODE is deterministic; the SDE is not
    assert torch.equal(x_ode, D.probability_flow_sample(sde, score_fn, x_T, steps=400))
    assert not torch.equal(x_sde, D.reverse_sde_sample(sde, score_fn, x_T, steps=400))


def test_reverse_sde_step_matches_diffusers_score_sde_vp_scheduler():
    from diffusers.schedulers.deprecated.scheduling_sde_vp import ScoreSdeVpScheduler

    torch.manual_seed(0)
    sde = D.VPSDE()
    model = D.ScoreMLP(dim=2, hidden=16, depth=1)
    sched = ScoreSdeVpScheduler(beta_min=0.1, beta_max=20)
    sched.set_timesteps(50)
    x = torch.randn(16, 2)
    rsde = sde.reverse(D.get_score_fn(sde, model))
    for t in sched.timesteps[:5]:
        eps = model(x, t.expand(16))
        ref_x, ref_mean = sched.step_pred(eps, x, t.expand(16), generator=torch.Generator().manual_seed(1))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
        new_x, new_mean = D.reverse_sde_step(rsde, x, t, 1.0 / len(sched.timesteps), z)
        assert torch.allclose(new_mean, ref_mean, atol=1e-5)
        assert torch.allclose(new_x, ref_x, atol=1e-5)
        x = new_x.detach()


# ---------------------------------------------------------------- loss

def test_dsm_loss_is_zero_for_the_exact_noise_predictor_of_a_point_mass():
    sde, c = D.VPSDE(), torch.tensor([0.7, -1.2])

    class Exact(torch.nn.Module):  # data = c: x_t = alpha c + std z, so z = (x_t - alpha c) / std
        def forward(self, x, t):
            mean, std = sde.marginal_prob(c.expand_as(x), t)
            return (x - mean) / std[:, None]

    x0 = c.expand(256, 2)
    assert D.dsm_loss(Exact(), sde, x0, generator=torch.Generator().manual_seed(0)).item() < 1e-9
    zero = D.dsm_loss(lambda x, t: torch.zeros_like(x), sde, x0, generator=torch.Generator().manual_seed(0))
    assert zero.item() == pytest.approx(1.0, rel=0.15)  # 1/2 E||z||^2 in 2-D = 1


def test_short_score_training_beats_the_prior_on_held_out_moons():
    sde = D.VPSDE()
    train, test = toys.toy_data("moons", 2000, 0), toys.toy_data("moons", 500, 1)
    model, hist = score_recipe.train_score_model(train, sde, steps=500, hidden=64, depth=2)
    assert hist.mean(50) < hist.loss[0]
    x_T = sde.prior_sampling((500, 2), torch.Generator().manual_seed(2))
    x = D.probability_flow_sample(sde, D.get_score_fn(sde, model), x_T, steps=50)
    assert energy_distance(x, test) < 0.5 * energy_distance(x_T, test)


# ---------------------------------------------------------------- energy distance

def test_energy_distance_matches_scipy_in_1d():
    from scipy.stats import energy_distance as scipy_ed

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=300), rng.normal(0.5, 2.0, size=200)
    ours = energy_distance(torch.from_numpy(a)[:, None], torch.from_numpy(b)[:, None])
    assert ours == pytest.approx(scipy_ed(a, b) ** 2, rel=1e-9)
    # two point masses at distance d: 2 d - 0 - 0 (closed form)
    assert energy_distance(torch.zeros(5, 3), torch.tensor([[3.0, 4.0, 0.0]]).expand(7, 3)) == pytest.approx(10.0)


# ---------------------------------------------------------------- VAE pieces vs diffusers and Monte Carlo

def test_gaussian_kl_matches_diffusers_and_monte_carlo():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    mean, logvar = torch.randn(4, 3), torch.randn(4, 3) * 0.5
    ours = D.gaussian_kl(mean, logvar)
    ref = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1)[:, :, None, None]).kl()
    assert torch.allclose(ours, ref, atol=1e-6)
    # Monte Carlo: KL = E_q[log q(z) - log p(z)]
    g = torch.Generator().manual_seed(0)
    z = D.reparameterize(mean.expand(200000, 4, 3), logvar.expand(200000, 4, 3), g)
    q = torch.distributions.Normal(mean, (0.5 * logvar).exp())
    p = torch.distributions.Normal(0.0, 1.0)
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    assert torch.allclose(mc, ours, atol=0.03), (mc, ours)


def test_reparameterize_matches_diffusers_latent_dist_sample():
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    mean, logvar = torch.randn(4, 3), torch.randn(4, 3)
    dist = DiagonalGaussianDistribution(torch.cat([mean, logvar], 1)[:, :, None, None])
    ref = dist.sample(generator=torch.Generator().manual_seed(3))[:, :, 0, 0]
    ours = D.reparameterize(mean, logvar, torch.Generator().manual_seed(3))
    assert torch.allclose(ours, ref, atol=1e-6)
    assert torch.equal(dist.mode()[:, :, 0, 0], mean)


def test_vae_shapes_elbo_and_save_load(tmp_path):
    vae = D.VAE(latent_dim=3, hidden=32, scaling_factor=2.0)
    x = torch.rand(5, 1, 8, 8)
    logits, mean, logvar = vae(x)
    assert logits.shape == (5, 1, 8, 8) and mean.shape == logvar.shape == (5, 3)
    loss, parts = D.elbo_loss(vae, x, generator=torch.Generator().manual_seed(0))
    assert loss.item() == pytest.approx(parts["recon"] + parts["kl"], rel=1e-5)
    vae_recipe.save_vae(vae, tmp_path)
    back = vae_recipe.load_vae(tmp_path)
    assert back.scaling_factor == 2.0
    assert torch.equal(back.decode(mean.detach()), vae.eval().decode(mean.detach()))
    assert torch.allclose(D.encode_latents(back, x), 2.0 * mean.detach())


def test_shipped_vae_and_latent_score_model_load_and_reconstruct_held_out_digits():
    from course_utils import hub
    from course_utils.data import load_digits

    path = hub.resolve("course/vae-digits")
    vae, score_model = vae_recipe.load_vae(path), score_recipe.load_score_model(path)
    x_test, _ = load_digits("test")
    with torch.no_grad():
        recon = torch.sigmoid(vae.decode(vae.encode(x_test)[0]))
    mse = (recon - x_test).pow(2).mean().item()
    baseline = (x_test.mean(0, keepdim=True) - x_test).pow(2).mean().item()  # predicting the mean digit
    assert mse < 0.25 * baseline, (mse, baseline)
    assert score_model.dim == vae.latent_dim


def test_save_load_write_the_shipped_bytes(tmp_path):
    """The one save/load helper (course_utils.io) writes the shipped files byte for byte."""
    import json
    from pathlib import Path

    from course_utils import hub

    path = Path(hub.resolve("course/vae-digits"))
    vae, score_model = vae_recipe.load_vae(path), score_recipe.load_score_model(path)
    training = json.loads((path / "config.json").read_text())["training"]
    vae_recipe.save_vae(vae, tmp_path, training=training)
    score_recipe.save_score_model(score_model, tmp_path)
    for name in ("model.safetensors", "config.json", "latent_score.safetensors", "latent_score.json"):
        assert (tmp_path / name).read_bytes() == (path / name).read_bytes(), name
    with pytest.raises(FileNotFoundError, match="train_vae"):
        vae_recipe.load_vae(tmp_path / "missing")


def test_train_vae_script_is_a_thin_wrapper_of_the_recipe(monkeypatch, tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "train_vae.py"
    spec = importlib.util.spec_from_file_location("train_vae_script", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    seen = {}
    monkeypatch.setattr(script, "build_vae_digits", lambda out, v, s: seen.update(out=out, v=v, s=s) or {"beta": 0.1})
    assert script.main(["--out", str(tmp_path), "--vae-steps", "3"]) == 0
    assert seen == {"out": tmp_path, "v": 3, "s": vae_recipe.SCORE_STEPS}
    assert '"beta": 0.1' in capsys.readouterr().out
