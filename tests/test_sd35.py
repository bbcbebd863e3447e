"""Notebook 12: SD3.5's memory arithmetic against the lecture's VRAM table, the timestep shift against
diffusers' scheduler, and tiny Large / Medium (MMDiT-X) transformers."""
import pytest
import torch

from course_utils import flow, sd35


def test_weights_are_parameters_times_bytes():
    b = sd35.component_bytes("large", "bf16")
    assert b["mmdit_large"] == pytest.approx(16.2e9)
    assert sd35.component_bytes("large", "int8")["mmdit_large"] == pytest.approx(8.1e9)
    assert sd35.component_bytes("large", "nf4")["mmdit_large"] == pytest.approx(4.05e9)
    assert "t5_xxl" not in sd35.component_bytes("medium", t5=False)
    assert sd35.component_bytes("medium", dtypes={"t5_xxl": "int8"})["t5_xxl"] == pytest.approx(4.7e9)
    with pytest.raises(ValueError):
        sd35.component_bytes("xl")
    with pytest.raises(ValueError):
        sd35.component_bytes("large", "fp8")


def test_pipeline_bytes_sum_max_and_without_t5():
    assert sd35.pipeline_bytes("large", "fp16") / 1e9 == pytest.approx(27.404)
    assert sd35.pipeline_bytes("large", "fp16", t5=False) / 1e9 == pytest.approx(18.004)
    assert sd35.pipeline_bytes("large", "fp16", offload=True) / 1e9 == pytest.approx(16.2)      # the MMDiT
    assert sd35.pipeline_bytes("medium", "fp16", offload=True) / 1e9 == pytest.approx(9.4)      # T5 is the largest
    assert sd35.pipeline_bytes("medium", "fp16", text_encoders=False) / 1e9 == pytest.approx(5.168)


def test_weights_alone_do_not_reproduce_the_lecture_table():
    # weights only, denoising stage resident: Medium fits 8 GB and Large 20 GB, the table says '!'
    for model, miss in (("medium", 8), ("large", 20)):
        ok = sd35.agreement(sd35.vram_verdicts(sd35.pipeline_bytes(model, "fp16", text_encoders=False)), model)
        assert [v for v, good in ok.items() if not good] == [miss]


def test_measured_overhead_reproduces_every_entry_of_the_lecture_table():
    over = sd35.overhead_from_measurement()
    assert over == pytest.approx(9.9 - 5.168)
    for model in ("medium", "large"):
        got = sd35.vram_verdicts(sd35.pipeline_bytes(model, "fp16", text_encoders=False), overhead_gb=over)
        assert got == sd35.LECTURE_VRAM_TABLE[model]
    # and quantising the Large MMDiT to 4 bits brings it under 12 GB (a '!' lever of the table)
    nf4 = sd35.pipeline_bytes("large", "fp16", text_encoders=False, dtypes={"mmdit_large": "nf4"})
    assert sd35.vram_verdicts(nf4, overhead_gb=over)[12] == "✓"
    with pytest.raises(ValueError):
        sd35.vram_verdicts(1e9, overhead_gb=-1)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_shift_formula_matches_diffusers_scheduler(shift):
    from diffusers import FlowMatchEulerDiscreteScheduler

    base, sched = FlowMatchEulerDiscreteScheduler(shift=1.0), FlowMatchEulerDiscreteScheduler(shift=shift)
    # training grid: sigma = s t / (1 + (s - 1) t)
    torch.testing.assert_close(sched.sigmas, flow.shift_timesteps(base.sigmas, shift))
    sched.set_timesteps(28)
    t = torch.linspace(1.0, sched.sigma_min, 28)
    torch.testing.assert_close(sched.sigmas[:-1], flow.shift_timesteps(t, shift), atol=1e-6, rtol=1e-5)
    if shift > 1:
        assert (sched.sigmas[1:-1] > t[1:]).all(), "shift > 1 keeps more steps at high noise"


def _tiny(dual):
    from diffusers import SD3Transformer2DModel

    torch.manual_seed(0)
    return SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=4, attention_head_dim=8,
                                 num_attention_heads=2, joint_attention_dim=32, caption_projection_dim=16,
                                 pooled_projection_dim=16, out_channels=4, pos_embed_max_size=8,
                                 qk_norm="rms_norm", dual_attention_layers=dual).eval()


def test_tiny_large_and_medium_structures():
    large, medium = _tiny(()), _tiny((0, 1))
    assert [b.attn2 is not None for b in medium.transformer_blocks] == [True, True, False, False]
    assert all(getattr(b, "attn2", None) is None for b in large.transformer_blocks)
    assert large.transformer_blocks[0].attn.norm_q is not None            # qk_norm="rms_norm"
    n = lambda m: sum(p.numel() for p in m.parameters())
    D = 16
    # each attn2: to_q, to_k, to_v, to_out (D*D + D each) + RMS norms of q and k; its adaLN: 3 more D outputs
    per_layer = 4 * (D * D + D) + 2 * 8 + 3 * (D * D + D)
    assert n(medium) - n(large) == 2 * per_layer
    x, c, p = torch.randn(1, 4, 8, 8), torch.randn(1, 5, 32), torch.randn(1, 16)
    with torch.no_grad():
        out = medium(hidden_states=x, encoder_hidden_states=c, pooled_projections=p, timestep=torch.tensor([500.0])).sample
    assert out.shape == x.shape
