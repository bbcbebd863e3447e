"""Tests for course_utils.mmdit (notebook 11): the MM-DiT block and transformer against diffusers'
JointTransformerBlock / SD3Transformer2DModel (bridges.diffusers_sd3), the SD3 family's parameter counts,
and combine_text_embeddings against StableDiffusion3Pipeline.encode_prompt on a tiny offline pipeline."""
import pytest
import torch

from course_utils import mmdit
from course_utils.bridges import diffusers_sd3

PROMPTS = ["a red circle", "a blue square left of a yellow triangle"]


def _randomize(module, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return module


def _tiny(**kw):
    args = dict(sample_size=8, patch_size=2, in_channels=4, depth=3, num_heads=2, head_dim=16, joint_attention_dim=24,
                pooled_projection_dim=20, pos_embed_max_size=12, qk_norm="rms_norm")
    args.update(kw)
    return mmdit.MMDiT(**args)


@pytest.mark.parametrize("qk_norm", ["rms_norm", None])
@pytest.mark.parametrize("pre_only", [False, True], ids=["block", "context_pre_only"])
def test_block_parity_with_joint_transformer_block(pre_only, qk_norm):
    torch.manual_seed(0)
    block = _randomize(mmdit.JointBlock(32, 4, pre_only=pre_only, qk_norm=qk_norm)).eval()
    ref = diffusers_sd3.block_to_diffusers(block)
    assert type(ref).__name__ == "JointTransformerBlock" and ref.context_pre_only == pre_only
    assert (ref.attn.norm_q is not None) == (qk_norm == "rms_norm")
    x, context, c = torch.randn(3, 16, 32), torch.randn(3, 7, 32), torch.randn(3, 32)
    with torch.no_grad():
        ours_x, ours_c = block(x, context, c)
        ref_c, ref_x = ref(hidden_states=x, encoder_hidden_states=context, temb=c)  # diffusers returns (context, x)
    assert torch.allclose(ours_x, ref_x, atol=1e-5)
    if pre_only:
        assert ours_c is None and ref_c is None  # the last block's text tokens end there
    else:
        assert torch.allclose(ours_c, ref_c, atol=1e-5)
    assert not torch.allclose(ours_x, x, atol=1e-2)  # the randomized block really changes its input
    back = diffusers_sd3.block_from_diffusers(ref)
    with torch.no_grad():
        assert torch.equal(back(x, context, c)[0], ours_x)


def test_pre_only_modulation_halves_are_swapped_for_diffusers():
    # diffusers' AdaLayerNormContinuous orders its vectors (scale, shift); Stability's and the course's (shift, scale)
    block = _randomize(mmdit.JointBlock(32, 4, pre_only=True)).eval()
    sd = diffusers_sd3.block_to_diffusers_state_dict(block)
    w = block.context_block.adaLN_modulation[1].weight
    assert torch.equal(sd["norm1_context.linear.weight"][:32], w[32:])
    from diffusers.models.attention import JointTransformerBlock
    naive = JointTransformerBlock(**diffusers_sd3.block_kwargs(block)).eval()
    sd["norm1_context.linear.weight"], sd["norm1_context.linear.bias"] = w.detach(), block.context_block.adaLN_modulation[1].bias.detach()
    naive.load_state_dict(sd)
    x, context, c = torch.randn(2, 9, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    with torch.no_grad():
        assert not torch.allclose(block(x, context, c)[0], naive(x, context, c)[1], atol=1e-3)


def test_fresh_block_is_identity_and_attention_is_joint():
    torch.manual_seed(0)
    x, context, c = torch.randn(2, 16, 32), torch.randn(2, 7, 32), torch.randn(2, 32)
    fresh = mmdit.JointBlock(32, 4)
    with torch.no_grad():
        fx, fc = fresh(x, context, c)
    assert torch.equal(fx, x) and torch.equal(fc, context)  # adaLN-Zero: gates start at 0
    block = _randomize(mmdit.JointBlock(32, 4)).eval()
    with torch.no_grad():
        out_x, out_c = block(x, context, c)
        # the image tokens read the text: other text changes the image output (and vice versa);
        # not a constant shift, which LayerNorm would remove
        other_x, _ = block(x, torch.randn_like(context), c)
        _, other_c = block(torch.randn_like(x), context, c)
    assert not torch.allclose(out_x, other_x, atol=1e-3) and not torch.allclose(out_c, other_c, atol=1e-3)
    # Stability concatenates [text; image], diffusers [image; text]: the same attention, permuted
    q, k, v = zip(block.x_block.pre_attention(x, c)[0], block.context_block.pre_attention(context, c)[0])
    a_x, a_c = mmdit.joint_attention(list(q), list(k), list(v))
    b_c, b_x = mmdit.joint_attention(list(q)[::-1], list(k)[::-1], list(v)[::-1])
    assert torch.allclose(a_x, b_x, atol=1e-6) and torch.allclose(a_c, b_c, atol=1e-6)
    assert a_x.shape == (2, 16, 32) and a_c.shape == (2, 7, 32)


def test_block_runs_on_meta_and_in_bfloat16():
    with torch.device("meta"):
        block = mmdit.JointBlock(64, 4)
        x, context = block(torch.empty(2, 16, 64), torch.empty(2, 5, 64), torch.empty(2, 64))
    assert x.device.type == "meta" and x.shape == (2, 16, 64) and context.shape == (2, 5, 64)
    block = _randomize(mmdit.JointBlock(32, 4)).eval()
    x, context, c = torch.randn(2, 16, 32), torch.randn(2, 7, 32), torch.randn(2, 32)
    with torch.no_grad():
        want = block(x, context, c)[0]
        got = block.to(torch.bfloat16)(x.bfloat16(), context.bfloat16(), c.bfloat16())[0]
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max() < 0.1


@pytest.mark.parametrize("size", [(8, 8), (6, 10)], ids=["square", "rectangular"])
def test_transformer_parity_with_sd3_transformer(size):
    torch.manual_seed(0)
    model = _tiny()
    fixed = model.pos_embed.clone()
    model = _randomize(model).eval()  # buffers (the positions) stay as built
    assert torch.equal(model.pos_embed, fixed)
    ref = diffusers_sd3.to_diffusers(model)
    assert ref.transformer_blocks[-1].context_pre_only and not ref.transformer_blocks[0].context_pre_only
    from diffusers import SD3Transformer2DModel
    fresh = SD3Transformer2DModel(**diffusers_sd3.diffusers_config(model))
    assert torch.allclose(fresh.pos_embed.pos_embed, model.pos_embed, atol=1e-6)  # positions computed, not copied
    x, t = torch.randn(2, 4, *size), torch.tensor([999.0, 250.0])
    context, y = torch.randn(2, 5, 24), torch.randn(2, 20)
    with torch.no_grad():
        ours = model(x, t, context, y)
        theirs = ref(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample
    assert ours.shape == x.shape
    assert torch.allclose(ours, theirs, atol=1e-5)
    back = diffusers_sd3.from_diffusers(ref)
    with torch.no_grad():
        assert torch.equal(back(x, t, context, y), ours)
        assert not torch.allclose(model(x, t.flip(0), context, y), ours, atol=1e-3)  # the timestep matters


def test_cropped_positions_are_centred_and_limited():
    pe = torch.arange(36.0).reshape(1, 36, 1)  # a 6 x 6 grid numbered row by row
    assert mmdit.cropped_pos_embed(pe, 6, 2, 2).flatten().tolist() == [14.0, 15.0, 20.0, 21.0]
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        mmdit.cropped_pos_embed(pe, 6, 7, 2)
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        _tiny()(torch.randn(1, 4, 26, 8), torch.ones(1), torch.randn(1, 5, 24), torch.randn(1, 20))


def test_sd3_family_parameter_counts():
    from diffusers import SD3Transformer2DModel
    counts = {}
    for depth, qk_norm in ((24, None), (38, "rms_norm")):  # SD3 Medium; SD3.5 Large (RMS QK-norm)
        with torch.device("meta"):
            model = mmdit.MMDiT(**mmdit.sd3_config(depth, qk_norm=qk_norm))
            ref = SD3Transformer2DModel(**diffusers_sd3.diffusers_config(model))
        counts[depth] = sum(p.numel() for p in model.parameters())
        assert counts[depth] == sum(p.numel() for p in ref.parameters())
        assert model.config["num_heads"] * model.config["head_dim"] == 64 * depth
    assert round(counts[24] / 1e9, 1) == 2.0   # "SD3 Medium, 2B"
    assert round(counts[38] / 1e9, 1) == 8.1   # "SD3.5 Large, 8.1B"


def test_combine_text_embeddings_full_size_shapes():
    with torch.device("meta"):  # shapes only
        l, g, t5 = torch.empty(2, 77, 768), torch.empty(2, 77, 1280), torch.empty(2, 256, 4096)
        pl, pg = torch.empty(2, 768), torch.empty(2, 1280)
        prompt, pooled = mmdit.combine_text_embeddings(l, g, t5, pl, pg)
        no_t5, _ = mmdit.combine_text_embeddings(l, g, None, pl, pg)
        old, _ = mmdit.combine_text_embeddings(l, g, None, pl, pg, max_sequence_length=77)
    assert prompt.shape == (2, 333, 4096) and pooled.shape == (2, 2048)
    assert no_t5.shape == (2, 333, 4096) and old.shape == (2, 154, 4096)


def test_combine_text_embeddings_layout_on_numbers():
    l, g = torch.ones(1, 3, 2), 2 * torch.ones(1, 3, 1)
    t5 = 5 * torch.ones(1, 2, 4)
    prompt, pooled = mmdit.combine_text_embeddings(l, g, t5, torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]]))
    assert prompt[0].tolist() == [[1, 1, 2, 0]] * 3 + [[5, 5, 5, 5]] * 2
    assert pooled.tolist() == [[1.0, 2.0, 3.0]]


@pytest.fixture(scope="module")
def pipelines():
    return {t5: diffusers_sd3.tiny_sd3_pipeline(PROMPTS, with_t5=t5) for t5 in (True, False)}


@pytest.mark.parametrize("with_t5", [True, False], ids=["with_t5", "without_t5"])
@pytest.mark.parametrize("max_sequence_length", [256, 16])
def test_combine_text_embeddings_parity_with_encode_prompt(pipelines, with_t5, max_sequence_length):
    pipe = pipelines[with_t5]
    with torch.no_grad():
        want, _, want_pooled, _ = pipe.encode_prompt(PROMPTS, None, None, do_classifier_free_guidance=False,
                                                     max_sequence_length=max_sequence_length)
        ids = pipe.tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
        out_l = pipe.text_encoder(ids, output_hidden_states=True)
        out_g = pipe.text_encoder_2(ids, output_hidden_states=True)
        t5 = None
        if with_t5:
            ids3 = pipe.tokenizer_3(PROMPTS, padding="max_length", max_length=max_sequence_length, truncation=True,
                                    return_tensors="pt").input_ids
            t5 = pipe.text_encoder_3(ids3)[0]
    prompt, pooled = mmdit.combine_text_embeddings(out_l.hidden_states[-2], out_g.hidden_states[-2], t5,
                                                   out_l.text_embeds, out_g.text_embeds,
                                                   max_sequence_length=max_sequence_length, joint_attention_dim=96)
    assert prompt.shape == want.shape == (2, 77 + max_sequence_length, 96)
    assert torch.allclose(prompt, want, atol=1e-5) and torch.allclose(pooled, want_pooled, atol=1e-5)
    assert pooled.shape == (2, 32 + 48)
    assert (prompt[:, 77:].abs().sum() == 0) == (not with_t5)
    # the last hidden state is not what SD3 uses: it takes the penultimate one
    wrong, _ = mmdit.combine_text_embeddings(out_l.hidden_states[-1], out_g.hidden_states[-1], t5, out_l.text_embeds,
                                             out_g.text_embeds, max_sequence_length=max_sequence_length,
                                             joint_attention_dim=96)
    assert not torch.allclose(wrong, want, atol=1e-3)


def test_combine_text_embeddings_errors():
    l, g, t5 = torch.zeros(2, 77, 8), torch.zeros(2, 77, 8), torch.zeros(2, 4, 32)
    pl, pg = torch.zeros(2, 8), torch.zeros(2, 8)
    f = mmdit.combine_text_embeddings
    with pytest.raises(ValueError, match="clip_l must have 3 dims"):
        f(l[0], g, t5, pl, pg)
    with pytest.raises(ValueError, match="pooled_g must have 2 dims"):
        f(l, g, t5, pl, pg[None])
    with pytest.raises(ValueError, match="t5 must be"):
        f(l, g, t5[0], pl, pg)
    with pytest.raises(ValueError, match="same batch size"):
        f(l, g, t5[:1], pl, pg)
    with pytest.raises(ValueError, match="same batch size"):
        f(l, g, t5, pl[:1], pg)
    with pytest.raises(ValueError, match="same length"):
        f(l, g[:, :70], t5, pl, pg)
    with pytest.raises(ValueError, match="differs from T5's width"):
        f(l, g, t5, pl, pg, joint_attention_dim=4096)
    with pytest.raises(ValueError, match="wider than T5"):
        f(l, g, t5[..., :10], pl, pg)
    with pytest.raises(ValueError, match="wider than T5"):
        f(l, g, None, pl, pg, joint_attention_dim=12)


def test_block_and_model_errors():
    block = mmdit.JointBlock(32, 4)
    with pytest.raises(ValueError, match="batch sizes differ"):
        block(torch.zeros(2, 4, 32), torch.zeros(3, 5, 32), torch.zeros(2, 32))
    with pytest.raises(ValueError, match="expected x"):
        block(torch.zeros(4, 32), torch.zeros(2, 5, 32), torch.zeros(2, 32))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        mmdit.JointBlock(30, 4)
    with pytest.raises(ValueError, match="qk_norm"):
        mmdit.JointBlock(32, 4, qk_norm="layer_norm")
    with pytest.raises(ValueError, match="batch sizes differ"):
        _tiny()(torch.zeros(2, 4, 8, 8), torch.ones(3), torch.zeros(2, 5, 24), torch.zeros(2, 20))
    with pytest.raises(ValueError, match="divisible"):
        _tiny()(torch.zeros(2, 4, 7, 8), torch.ones(2), torch.zeros(2, 5, 24), torch.zeros(2, 20))
    with pytest.raises(RuntimeError, match="pre_only"):
        mmdit.JointBlock(32, 4, pre_only=True).context_block.post_attention(torch.zeros(1, 2, 32), None)
    with pytest.raises(ValueError, match="pos_embed_max_size"):
        mmdit.MMDiT(sample_size=64, patch_size=2, depth=1, pos_embed_max_size=16)


def test_positions_match_the_dit_grid_and_diffusers():
    from course_utils import dit
    # base_size = grid_size: the plain DiT / MAE grid of notebook 09
    assert torch.allclose(mmdit.get_2d_sincos_pos_embed(16, 5), torch.from_numpy(dit.get_2d_sincos_pos_embed(16, 5)).float())
    from diffusers.models.embeddings import get_2d_sincos_pos_embed as theirs
    assert torch.allclose(mmdit.get_2d_sincos_pos_embed(32, 12, base_size=4), theirs(32, 12, base_size=4).float(), atol=1e-6)
    assert mmdit.get_2d_sincos_pos_embed(32, 12, device="meta").device.type == "meta"


# ---- MMDiT-X (SD3.5 Medium's dual-attention blocks, notebook 12) -------------------------------

# SD3.5 Medium: 24 blocks of width 1536, RMS QK-norm, a 384 x 384 position grid and attn2 in blocks 0..12
# (diffusers' convert_sd3_to_diffusers.py: "(0, 1, ..., 12) for sd3.5"; notebook 12, sd35.PARAMETERS["mmdit_medium"])
MEDIUM_DUAL_LAYERS = tuple(range(13))


def _randomize_ref(module, std=0.1, seed=0):
    return _randomize(module, std, seed).eval()


@pytest.mark.parametrize("qk_norm", ["rms_norm", None])
@pytest.mark.parametrize("pre_only", [False, True], ids=["block", "context_pre_only"])
def test_dual_block_parity_with_joint_transformer_block(pre_only, qk_norm):
    from diffusers.models.attention import JointTransformerBlock
    ref = _randomize_ref(JointTransformerBlock(32, 4, 8, context_pre_only=pre_only, qk_norm=qk_norm,
                                               use_dual_attention=True))
    block = diffusers_sd3.block_from_diffusers(ref)
    assert block.x_block.x_block_self_attn and block.x_block.adaLN_modulation[1].out_features == 9 * 32
    assert block.context_block.attn2 is None  # attn2 is the image side's only
    x, context, c = torch.randn(3, 16, 32), torch.randn(3, 7, 32), torch.randn(3, 32)
    with torch.no_grad():
        ours_x, ours_c = block(x, context, c)
        ref_c, ref_x = ref(hidden_states=x, encoder_hidden_states=context, temb=c)
    assert (ours_x - ref_x).abs().max() < 1e-5
    assert (ours_c is None and ref_c is None) if pre_only else (ours_c - ref_c).abs().max() < 1e-5
    # attn2 really contributes: the same weights without it (6 vectors = the first 6 of the 9) give another x
    plain = mmdit.JointBlock(32, 4, pre_only=pre_only, qk_norm=qk_norm).eval()
    sd = {k: v for k, v in block.state_dict().items() if not k.startswith("x_block.attn2.")}
    sd["x_block.adaLN_modulation.1.weight"] = sd["x_block.adaLN_modulation.1.weight"][:6 * 32]
    sd["x_block.adaLN_modulation.1.bias"] = sd["x_block.adaLN_modulation.1.bias"][:6 * 32]
    plain.load_state_dict(sd)
    with torch.no_grad():
        assert not torch.allclose(plain(x, context, c)[0], ours_x, atol=1e-3)
    # round trip: course -> diffusers state dict -> the same keys and tensors as ref's
    sd_back = diffusers_sd3.block_to_diffusers_state_dict(block)
    assert set(sd_back) == set(ref.state_dict()) and all(torch.equal(sd_back[k], v) for k, v in ref.state_dict().items())
    again = diffusers_sd3.block_to_diffusers(block)
    with torch.no_grad():
        assert torch.equal(again(hidden_states=x, encoder_hidden_states=context, temb=c)[1], ref_x)


def test_dual_block_modulation_order_is_msa_mlp_msa2():
    # the 9 adaLN vectors are (shift, scale, gate) x (msa, mlp, msa2): swapping the msa2 and mlp triplets breaks parity
    from diffusers.models.attention import JointTransformerBlock
    ref = _randomize_ref(JointTransformerBlock(32, 4, 8, qk_norm="rms_norm", use_dual_attention=True), seed=1)
    block = diffusers_sd3.block_from_diffusers(ref)
    x, context, c = torch.randn(2, 9, 32), torch.randn(2, 5, 32), torch.randn(2, 32)
    with torch.no_grad():
        want = ref(hidden_states=x, encoder_hidden_states=context, temb=c)[1]
        assert torch.allclose(block(x, context, c)[0], want, atol=1e-5)
        lin = block.x_block.adaLN_modulation[1]
        order = [0, 1, 2, 6, 7, 8, 3, 4, 5]
        for p in (lin.weight, lin.bias):
            p.copy_(torch.cat([p.chunk(9, dim=0)[i] for i in order], dim=0))
        assert not torch.allclose(block(x, context, c)[0], want, atol=1e-3)


def test_fresh_dual_block_is_identity_on_meta_and_bfloat16():
    torch.manual_seed(0)
    x, context, c = torch.randn(2, 16, 32), torch.randn(2, 7, 32), torch.randn(2, 32)
    with torch.no_grad():
        fx, fc = mmdit.JointBlock(32, 4, x_block_self_attn=True)(x, context, c)
    assert torch.equal(fx, x) and torch.equal(fc, context)  # adaLN-Zero: all 9 + 6 vectors start at 0
    with torch.device("meta"):
        out = mmdit.JointBlock(64, 4, x_block_self_attn=True)(torch.empty(2, 16, 64), torch.empty(2, 5, 64),
                                                               torch.empty(2, 64))
    assert out[0].device.type == "meta" and out[0].shape == (2, 16, 64)
    block = _randomize(mmdit.JointBlock(32, 4, x_block_self_attn=True)).eval()
    with torch.no_grad():
        want = block(x, context, c)[0]
        got = block.to(torch.bfloat16)(x.bfloat16(), context.bfloat16(), c.bfloat16())[0]
    assert got.dtype == torch.bfloat16 and (got.float() - want).abs().max() < 0.1


def test_dual_block_parameter_difference():
    D, heads = 32, 4
    n = lambda m: sum(p.numel() for p in m.parameters())
    for qk_norm in ("rms_norm", None):
        plain = mmdit.JointBlock(D, heads, qk_norm=qk_norm)
        dual = mmdit.JointBlock(D, heads, qk_norm=qk_norm, x_block_self_attn=True)
        # attn2: qkv (D x 3D + 3D) + proj (D x D + D) + RMS gains of q and k (D/heads each);
        # modulation: 3 more output vectors (shift, scale, gate of msa2) -> D x 3D + 3D
        attn2 = (D * 3 * D + 3 * D) + (D * D + D) + (2 * (D // heads) if qk_norm else 0)
        extra_mod = D * 3 * D + 3 * D
        assert n(dual) - n(plain) == attn2 + extra_mod
        assert n(dual.x_block.attn2) == attn2
        assert n(dual.x_block.adaLN_modulation) - n(plain.x_block.adaLN_modulation) == extra_mod
    assert attn2 + extra_mod == 7 * D * D + 7 * D  # without QK-norm: 7 linear maps D -> D with bias


def test_dual_transformer_parity_and_round_trip():
    from diffusers import SD3Transformer2DModel
    torch.manual_seed(0)
    ref = _randomize_ref(SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=3,
                                               attention_head_dim=16, num_attention_heads=2, joint_attention_dim=24,
                                               caption_projection_dim=32, pooled_projection_dim=20, out_channels=4,
                                               pos_embed_max_size=12, qk_norm="rms_norm", dual_attention_layers=(0, 1)))
    model = diffusers_sd3.from_diffusers(ref)
    assert model.config["x_block_self_attn_layers"] == (0, 1)
    assert [b.x_block.x_block_self_attn for b in model.joint_blocks] == [True, True, False]
    assert diffusers_sd3.diffusers_config(model)["dual_attention_layers"] == (0, 1)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([999.0, 250.0])
    context, y = torch.randn(2, 5, 24), torch.randn(2, 20)
    with torch.no_grad():
        ours = model(x, t, context, y)
        theirs = ref(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample
    assert (ours - theirs).abs().max() < 1e-5
    # the same model without the dual layers (attn2 dropped) is another function
    no_dual = _tiny(depth=3, num_heads=2, head_dim=16)
    sd = {k: v for k, v in model.state_dict().items() if ".attn2." not in k}
    for i in (0, 1):
        for wb in ("weight", "bias"):
            key = f"joint_blocks.{i}.x_block.adaLN_modulation.1.{wb}"
            sd[key] = sd[key][:6 * 32]
    no_dual.load_state_dict(sd)
    with torch.no_grad():
        assert not torch.allclose(no_dual.eval()(x, t, context, y), ours, atol=1e-3)
    # round trip: the course model -> diffusers -> the same outputs and the same weights
    back = diffusers_sd3.to_diffusers(model)
    assert [b.attn2 is not None for b in back.transformer_blocks] == [True, True, False]
    assert all(torch.equal(v, back.state_dict()[k]) for k, v in ref.state_dict().items())
    with torch.no_grad():
        again = back(hidden_states=x, encoder_hidden_states=context, pooled_projections=y, timestep=t).sample
    assert torch.equal(again, theirs)


def test_sd35_medium_parameter_count_on_meta():
    from diffusers import SD3Transformer2DModel
    with torch.device("meta"):
        model = mmdit.MMDiT(**mmdit.sd3_config(24, qk_norm="rms_norm", pos_embed_max_size=384,
                                               x_block_self_attn_layers=MEDIUM_DUAL_LAYERS))
        ref = SD3Transformer2DModel(**diffusers_sd3.diffusers_config(model))
        plain = mmdit.MMDiT(**mmdit.sd3_config(24, qk_norm="rms_norm", pos_embed_max_size=384))
    n = lambda m: sum(p.numel() for p in m.parameters())
    assert [b.attn2 is not None for b in ref.transformer_blocks] == [i < 13 for i in range(24)]
    assert n(model) == n(ref) == 2_243_171_520
    D = 64 * 24
    per_layer = 7 * D * D + 7 * D + 2 * 64  # attn2 + 3 modulation vectors (see test_dual_block_parameter_difference)
    assert n(model) - n(plain) == 13 * per_layer
    # + the 384 x 384 x 1536 fixed positions the checkpoint stores: notebook 12's 2 469 663 936
    assert n(model) + model.pos_embed.numel() == 2_469_663_936


def test_dual_attention_errors():
    with pytest.raises(ValueError, match="x_block_self_attn_layers"):
        _tiny(x_block_self_attn_layers=(3,))
    with pytest.raises(ValueError, match="pre_only"):
        mmdit.DismantledBlock(32, 4, pre_only=True, x_block_self_attn=True)
    from diffusers import SD3Transformer2DModel
    ref = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2, attention_head_dim=8,
                                num_attention_heads=2, joint_attention_dim=24, caption_projection_dim=16,
                                pooled_projection_dim=20, out_channels=4, pos_embed_max_size=8,
                                qk_norm="layer_norm", dual_attention_layers=(0,))
    with pytest.raises(ValueError, match="qk_norm"):
        diffusers_sd3.from_diffusers(ref)
    with pytest.raises(ValueError, match="QK-norm"):
        diffusers_sd3.block_from_diffusers(ref.transformer_blocks[0])
