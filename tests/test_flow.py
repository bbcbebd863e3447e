"""Tests for course_utils.flow (notebook 10): closed forms and parity with diffusers' FlowMatchEulerDiscreteScheduler."""
import math

import pytest
import torch

from course_utils import flow


def test_interpolate_endpoints_and_velocity():
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8)
    assert torch.equal(flow.interpolate(x0, noise, torch.zeros(4)), x0)   # t = 0 is data
    assert torch.equal(flow.interpolate(x0, noise, torch.ones(4)), noise)  # t = 1 is noise
    t = torch.rand(4)
    h = 1e-3
    # finite difference of the path equals the velocity target noise - x0
    fd = (flow.interpolate(x0, noise, t + h) - flow.interpolate(x0, noise, t - h)) / (2 * h)
    assert torch.allclose(fd, flow.velocity_target(x0, noise), atol=1e-3)
    with pytest.raises(ValueError):
        flow.interpolate(x0, noise[:2], t)
    with pytest.raises(ValueError):
        flow.interpolate(x0, noise, torch.rand(3))


def test_sample_timesteps_match_density():
    g = torch.Generator().manual_seed(0)
    t = flow.sample_timesteps(200_000, "logit_normal", m=0.5, s=0.8, generator=g)
    assert 0 < t.min() and t.max() < 1
    # logit(t) ~ N(m, s^2)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean() - 0.5) < 0.01 and abs(logit.std() - 0.8) < 0.01
    # the histogram follows the closed-form density, which integrates to 1
    hist = torch.histc(t, bins=20, min=0, max=1) / len(t) * 20
    centers = (torch.arange(20) + 0.5) / 20
    dens = flow.timestep_density(centers, "logit_normal", 0.5, 0.8).float()
    assert torch.allclose(hist, dens, rtol=0.03, atol=0.02)
    grid = torch.linspace(1e-6, 1 - 1e-6, 200_001, dtype=torch.float64)
    assert abs(torch.trapezoid(flow.timestep_density(grid, "logit_normal", 0.5, 0.8), grid).item() - 1) < 1e-3
    u = flow.sample_timesteps(100_000, "uniform", generator=g)
    assert abs(u.mean() - 0.5) < 0.01
    with pytest.raises(ValueError):
        flow.sample_timesteps(4, "beta")


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_shift_and_euler_step_match_diffusers(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    n = 8
    sched = FlowMatchEulerDiscreteScheduler(shift=shift)
    base = torch.linspace(1.0, 0.0, n + 1)[:-1]
    sched.set_timesteps(sigmas=base.tolist())
    mine = torch.cat([flow.shift_timesteps(base, shift), torch.zeros(1)])
    assert torch.allclose(sched.sigmas.float(), mine, atol=1e-6)
    assert torch.allclose(flow.sampling_times(n, shift), mine, atol=1e-6)
    # one Euler step equals the scheduler's step
    torch.manual_seed(0)
    x, v = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    ref = sched.step(v, sched.timesteps[0], x).prev_sample
    assert torch.allclose(flow.euler_step(x, v, mine[0], mine[1]), ref, atol=1e-6)
    # and scale_noise is interpolate
    x0, noise = torch.randn(2, 1, 8, 8), torch.randn(2, 1, 8, 8)
    sigma = sched.sigmas[2]
    ref = sched.scale_noise(x0, sched.timesteps[2:3], noise)
    assert torch.allclose(flow.interpolate(x0, noise, sigma), ref, atol=1e-6)


def test_euler_sample_exact_for_straight_flow():
    # for a point mass at c, the optimal velocity field is (x - c) / t: Euler lands on c in ONE step
    c = torch.tensor([[2.0, -1.0]])
    model = lambda x, t: (x - c) / t[:, None]
    noise = torch.randn(5, 2)
    x, traj = flow.euler_sample(model, noise, 1, return_trajectory=True)
    assert torch.allclose(x, c.expand(5, 2), atol=1e-6)
    assert traj.shape == (2, 5, 2)
    assert flow.straightness(traj) == pytest.approx(0.0, abs=1e-10)
    # a curved path has positive straightness
    curved = torch.stack([torch.tensor([[math.cos(a), math.sin(a)]]) for a in torch.linspace(0, math.pi, 11)])
    assert flow.straightness(curved) > 0.1
    with pytest.raises(ValueError):
        flow.euler_sample(model, noise, 0)


def test_rf_loss_against_hand_computed_values():
    g = torch.Generator().manual_seed(0)
    x0, noise, t = torch.randn(16, 2, generator=g), torch.randn(16, 2, generator=g), torch.rand(16, generator=g)
    # a model that predicts zero velocity: the loss is the mean of ||noise - x0||^2 per element
    zero = flow.rf_loss(lambda x, tt: torch.zeros_like(x), x0, noise=noise, t=t)
    by_hand = sum((noise[i, j] - x0[i, j]) ** 2 for i in range(16) for j in range(2)) / 32
    assert zero.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # a linear model v = a x_t (a = 2): x_t = (1 - t) x0 + t noise, residual = 2 x_t - (noise - x0)
    a = 2.0
    x_t = [[(1 - t[i]) * x0[i, j] + t[i] * noise[i, j] for j in range(2)] for i in range(16)]
    by_hand = sum((a * x_t[i][j] - (noise[i, j] - x0[i, j])) ** 2 for i in range(16) for j in range(2)) / 32
    lin = flow.rf_loss(lambda x, tt: a * x, x0, noise=noise, t=t)
    assert lin.item() == pytest.approx(by_hand.item(), rel=1e-6)
    # model kwargs reach the model; without t and noise, both are drawn (a different value)
    assert flow.rf_loss(lambda x, tt, y: y * x, x0, noise=noise, t=t, y=a).item() == pytest.approx(lin.item())
    assert flow.rf_loss(lambda x, tt: a * x, x0).item() != pytest.approx(lin.item())


def test_energy_distance_of_gaussians():
    from course_utils.evaluation import energy_distance

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(500, 2, generator=g), torch.randn(500, 2, generator=g)
    assert abs(energy_distance(a, b)) < 0.02
    assert energy_distance(a, b + 2.0) > 1.0
