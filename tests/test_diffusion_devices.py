"""The diffusion chapter's lecture modules (diffusion, dit, flow) and ``recipes.digits.sample_digits`` are
device- and dtype-generic: every tensor they make follows the inputs. Run on the ``meta`` device (any
tensor created on the CPU inside would raise "Tensor on device cpu is not on the expected device"), and
in bfloat16 on the CPU (outputs stay bfloat16 and finite)."""
import pytest
import torch

from course_utils import diffusion as D
from course_utils import dit, flow
from course_utils.recipes.digits import sample_digits


def _small_dit():
    return dit.DiT(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=1, num_heads=2,
                   num_classes=10, learn_sigma=False, freq_shift=1)


def _check(out, device, dtype, shape):
    assert out.device.type == device and out.dtype == dtype and tuple(out.shape) == tuple(shape)
    if device != "meta":
        assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_diffusion_forward_and_samplers(device, dtype):
    torch.manual_seed(0)
    sde, model = D.VPSDE(), D.ScoreMLP(dim=2, hidden=16, depth=1).to(device=device, dtype=dtype)
    x_T = sde.prior_sampling((8, 2), device=device, dtype=dtype)
    _check(x_T, device, dtype, (8, 2))
    _check(model(x_T, torch.rand(8, device=device, dtype=dtype)), device, dtype, (8, 2))
    score_fn = D.get_score_fn(sde, model)
    _check(D.reverse_sde_sample(sde, score_fn, x_T, steps=3), device, dtype, (8, 2))
    _check(D.reverse_sde_sample(sde, score_fn, x_T, steps=3, generator=torch.Generator().manual_seed(0)),
           device, dtype, (8, 2))
    _check(D.probability_flow_sample(sde, score_fn, x_T, steps=3), device, dtype, (8, 2))
    _check(D.VESDE().prior_sampling((8, 2), device=device, dtype=dtype), device, dtype, (8, 2))
    _check(D.simulate_forward(D.VESDE(), x_T, 0.5, steps=3), device, dtype, (8, 2))
    _check(D.dsm_loss(model, sde, x_T), device, dtype, ())
    vae = D.VAE(latent_dim=3, hidden=16).to(device=device, dtype=dtype)
    logits, mean, logvar = vae(torch.rand(4, 1, 8, 8, device=device, dtype=dtype))
    _check(logits, device, dtype, (4, 1, 8, 8))
    _check(D.gaussian_kl(mean, logvar), device, dtype, (4,))
    _check(D.reparameterize(mean, logvar, torch.Generator().manual_seed(0)), device, dtype, (4, 3))


@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_flow_forward_and_euler_sampler(device, dtype):
    noise = torch.randn(6, 1, 8, 8).to(device=device, dtype=dtype)
    x0 = torch.randn(6, 1, 8, 8).to(device=device, dtype=dtype)
    _check(flow.interpolate(x0, noise, 0.3), device, dtype, x0.shape)
    _check(flow.sample_timesteps(6, device=device, dtype=dtype), device, dtype, (6,))
    _check(flow.sampling_times(4, 3.0, device=device), device, torch.float32, (5,))
    v = lambda x, t: x * t[:, None, None, None]  # noqa: E731
    _check(flow.euler_sample(v, noise, 4, shift=3.0), device, dtype, noise.shape)
    x, traj = flow.euler_sample(v, noise, 2, return_trajectory=True)
    _check(traj, device, dtype, (3, *noise.shape))
    _check(flow.rf_loss(v, x0), device, dtype, ())
    _check(flow.reflow_pairs(v, noise, steps=2)[0], device, dtype, noise.shape)


@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_dit_forward_with_cfg_and_digits_sampling(device, dtype):
    torch.manual_seed(0)
    model = _small_dit().to(device=device, dtype=dtype).eval()
    x = torch.randn(3, 1, 8, 8).to(device=device, dtype=dtype)
    y = torch.tensor([1, 2, 10]).to(device)
    _check(model(x, torch.tensor([1.0, 500.0, 999.0]).to(device), y), device, dtype, x.shape)
    _check(model(x, 10.0, y), device, dtype, x.shape)  # a scalar timestep
    _check(model.forward_with_cfg(x, torch.full((3,), 5.0, device=device), y[:3] % 10, 2.0), device, dtype, x.shape)
    labels = torch.tensor([0, 1, 2]).to(device)
    _check(sample_digits(model, labels, steps=2, guidance=2.0), device, dtype, (3, 1, 8, 8))
    _check(sample_digits(model, labels, steps=2, generator=torch.Generator().manual_seed(0)), device, dtype,
           (3, 1, 8, 8))
    model.train()
    _check(model(x, torch.tensor([1.0, 2.0, 3.0]).to(device), y), device, dtype, x.shape)  # label dropout draws


def test_seeded_sampling_does_not_depend_on_the_dtype_of_the_draw():
    # a CPU generator gives the same noise whatever the target dtype: bfloat16 samples are close to float32 ones
    torch.manual_seed(0)
    model = _small_dit().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 0.05)
    labels = torch.tensor([3, 4])
    a = sample_digits(model, labels, 2, generator=torch.Generator().manual_seed(1))
    b = sample_digits(model.to(torch.bfloat16), labels, 2, generator=torch.Generator().manual_seed(1))
    assert b.dtype == torch.bfloat16 and torch.allclose(a, b.float(), atol=0.1)
