"""The course MM-DiT (notebook 11) <-> diffusers' ``JointTransformerBlock`` / ``SD3Transformer2DModel``.

The course follows Stability's reference layout (``sd3.5/mmditx.py``): fused ``qkv`` per modality and
adaLN vectors ordered (shift, scale, ...). diffusers splits ``qkv`` into ``to_q`` / ``to_k`` / ``to_v``
(image) and ``add_q_proj`` / ``add_k_proj`` / ``add_v_proj`` (text), and its ``AdaLayerNormContinuous``
(the last block's text modulation and ``norm_out``) orders its two vectors (scale, shift): the halves are
swapped, as diffusers' ``convert_sd3_to_diffusers.py`` does. MMDiT-X blocks (SD3.5 Medium): the course's
``x_block.attn2`` is diffusers' ``attn2`` (``to_q/k/v``, ``norm_q/k``, ``to_out.0``), and the image side's
9-vector modulation is ``norm1.linear`` (``SD35AdaLayerNormZeroX``) in the same order, (shift, scale, gate)
x (msa, mlp, msa2). Used by the parity tests and notebooks 11 and 12.
"""
from __future__ import annotations

import torch

from ..mmdit import JointBlock, MMDiT

__all__ = ["block_kwargs", "block_to_diffusers_state_dict", "block_from_diffusers_state_dict", "block_to_diffusers",
           "block_from_diffusers", "diffusers_config", "to_diffusers_state_dict", "from_diffusers_state_dict",
           "to_diffusers", "from_diffusers", "tiny_sd3_pipeline"]


def _swap_halves(w: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift) along the output axis of an adaLN linear (its own inverse)."""
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


def _like(module, p: torch.Tensor):
    """``module`` on ``p``'s device and in its dtype (no cast, and no diffusers warning, when already there)."""
    module = module.to(device=p.device)
    return module if next(module.parameters()).dtype == p.dtype else module.to(dtype=p.dtype)


def _block_pairs(block: JointBlock) -> list[tuple[str, tuple[str, ...], str]]:
    """(course key, diffusers keys, how): ``same`` copies, ``cat`` joins q, k, v, ``swap`` swaps the halves."""
    pre_only = block.context_block.pre_only
    dual = block.x_block.x_block_self_attn
    rms = block.x_block.attn.qk_norm == "rms_norm"
    pairs = []
    for wb in ("weight", "bias"):
        pairs += [(f"x_block.adaLN_modulation.1.{wb}", (f"norm1.linear.{wb}",), "same"),
                  (f"context_block.adaLN_modulation.1.{wb}", (f"norm1_context.linear.{wb}",),
                   "swap" if pre_only else "same"),
                  (f"x_block.attn.qkv.{wb}", tuple(f"attn.to_{n}.{wb}" for n in "qkv"), "cat"),
                  (f"context_block.attn.qkv.{wb}", tuple(f"attn.add_{n}_proj.{wb}" for n in "qkv"), "cat"),
                  (f"x_block.attn.proj.{wb}", (f"attn.to_out.0.{wb}",), "same"),
                  (f"x_block.mlp.fc1.{wb}", (f"ff.net.0.proj.{wb}",), "same"),
                  (f"x_block.mlp.fc2.{wb}", (f"ff.net.2.{wb}",), "same")]
        if not pre_only:
            pairs += [(f"context_block.attn.proj.{wb}", (f"attn.to_add_out.{wb}",), "same"),
                      (f"context_block.mlp.fc1.{wb}", (f"ff_context.net.0.proj.{wb}",), "same"),
                      (f"context_block.mlp.fc2.{wb}", (f"ff_context.net.2.{wb}",), "same")]
        if dual:  # MMDiT-X: the image-only attention (its modulation is in norm1.linear above, 9 vectors)
            pairs += [(f"x_block.attn2.qkv.{wb}", tuple(f"attn2.to_{n}.{wb}" for n in "qkv"), "cat"),
                      (f"x_block.attn2.proj.{wb}", (f"attn2.to_out.0.{wb}",), "same")]
    if rms:
        pairs += [("x_block.attn.ln_q.weight", ("attn.norm_q.weight",), "same"),
                  ("x_block.attn.ln_k.weight", ("attn.norm_k.weight",), "same"),
                  ("context_block.attn.ln_q.weight", ("attn.norm_added_q.weight",), "same"),
                  ("context_block.attn.ln_k.weight", ("attn.norm_added_k.weight",), "same")]
        if dual:
            pairs += [("x_block.attn2.ln_q.weight", ("attn2.norm_q.weight",), "same"),
                      ("x_block.attn2.ln_k.weight", ("attn2.norm_k.weight",), "same")]
    return pairs


def _to(sd: dict, pairs, prefix_in: str = "", prefix_out: str = "") -> dict:
    out = {}
    for ours, theirs, how in pairs:
        w = sd[prefix_in + ours].detach().clone()
        if how == "cat":
            for name, part in zip(theirs, w.chunk(3, dim=0)):
                out[prefix_out + name] = part.clone()
        else:
            out[prefix_out + theirs[0]] = _swap_halves(w) if how == "swap" else w
    return out


def _from(sd: dict, pairs, prefix_in: str = "", prefix_out: str = "") -> dict:
    out = {}
    for ours, theirs, how in pairs:
        missing = [prefix_in + k for k in theirs if prefix_in + k not in sd]
        if missing:
            raise RuntimeError(f"the diffusers state dict lacks {missing}")
        if how == "cat":
            out[prefix_out + ours] = torch.cat([sd[prefix_in + k] for k in theirs], dim=0)
        else:
            w = sd[prefix_in + theirs[0]]
            out[prefix_out + ours] = _swap_halves(w) if how == "swap" else w
    return out


# ---- one block ----------------------------------------------------------------------------------


def block_kwargs(block: JointBlock) -> dict:
    """``JointTransformerBlock`` arguments with the same architecture as ``block``."""
    attn = block.x_block.attn
    if block.x_block.mlp.fc1.out_features != 4 * attn.qkv.in_features:
        raise ValueError("diffusers' MM-DiT block has a fixed 4x MLP; mlp_ratio must be 4.0")
    return dict(dim=attn.qkv.in_features, num_attention_heads=attn.num_heads, attention_head_dim=attn.head_dim,
                context_pre_only=block.context_block.pre_only, qk_norm=attn.qk_norm,
                use_dual_attention=block.x_block.x_block_self_attn)


def block_to_diffusers_state_dict(block: JointBlock) -> dict[str, torch.Tensor]:
    """A course ``JointBlock``'s weights under ``JointTransformerBlock`` keys."""
    return _to(block.state_dict(), _block_pairs(block))


def block_from_diffusers_state_dict(sd: dict[str, torch.Tensor], block: JointBlock) -> JointBlock:
    """Load ``JointTransformerBlock`` weights into ``block`` (strict)."""
    block.load_state_dict(_from(sd, _block_pairs(block)), strict=True)
    return block


def block_to_diffusers(block: JointBlock):
    """A ``diffusers`` ``JointTransformerBlock`` carrying ``block``'s weights (its device and dtype, eval mode)."""
    from diffusers.models.attention import JointTransformerBlock

    p = next(block.parameters())
    ref = JointTransformerBlock(**block_kwargs(block))
    ref.load_state_dict(block_to_diffusers_state_dict(block), strict=True)
    return _like(ref, p).eval()


def _qk_norm(attn) -> str | None:
    """The course's ``qk_norm`` for a diffusers ``Attention``: None or "rms_norm" (ValueError for other norms)."""
    if attn.norm_q is None:
        return None
    if type(attn.norm_q).__name__ != "RMSNorm":
        raise ValueError(f"the course MM-DiT has RMS QK-norm or none; this block has {type(attn.norm_q).__name__}")
    return "rms_norm"


def block_from_diffusers(ref) -> JointBlock:
    """A course ``JointBlock`` built from a ``JointTransformerBlock`` (architecture and weights; MMDiT-X
    blocks, ``use_dual_attention=True``, included)."""
    attn = ref.attn
    qk_norm = _qk_norm(attn)
    dual = bool(getattr(ref, "use_dual_attention", False))
    if dual and _qk_norm(ref.attn2) != qk_norm:
        raise ValueError("attn and attn2 of a dual-attention block must share the QK-norm (None or RMS), as in SD3.5")
    block = JointBlock(attn.inner_dim, attn.heads, pre_only=ref.context_pre_only, qk_norm=qk_norm,
                       x_block_self_attn=dual)
    block = block_from_diffusers_state_dict(ref.state_dict(), block)
    p = next(ref.parameters())
    return block.to(device=p.device, dtype=p.dtype).eval()


# ---- the whole transformer ----------------------------------------------------------------------


def _model_pairs(model: MMDiT) -> list[tuple[str, tuple[str, ...], str]]:
    pairs = []
    for wb in ("weight", "bias"):
        pairs += [(f"x_embedder.proj.{wb}", (f"pos_embed.proj.{wb}",), "same"),
                  (f"t_embedder.mlp.0.{wb}", (f"time_text_embed.timestep_embedder.linear_1.{wb}",), "same"),
                  (f"t_embedder.mlp.2.{wb}", (f"time_text_embed.timestep_embedder.linear_2.{wb}",), "same"),
                  (f"y_embedder.mlp.0.{wb}", (f"time_text_embed.text_embedder.linear_1.{wb}",), "same"),
                  (f"y_embedder.mlp.2.{wb}", (f"time_text_embed.text_embedder.linear_2.{wb}",), "same"),
                  (f"context_embedder.{wb}", (f"context_embedder.{wb}",), "same"),
                  (f"final_layer.adaLN_modulation.1.{wb}", (f"norm_out.linear.{wb}",), "swap"),
                  (f"final_layer.linear.{wb}", (f"proj_out.{wb}",), "same")]
    pairs.append(("pos_embed", ("pos_embed.pos_embed",), "same"))
    return pairs


def diffusers_config(model: MMDiT) -> dict:
    """The ``SD3Transformer2DModel`` config with the same architecture as ``model``."""
    c = model.config
    if c["mlp_ratio"] != 4.0:
        raise ValueError("diffusers' MM-DiT block has a fixed 4x MLP; mlp_ratio must be 4.0")
    return dict(sample_size=c["sample_size"], patch_size=c["patch_size"], in_channels=c["in_channels"],
                num_layers=c["depth"], attention_head_dim=c["head_dim"], num_attention_heads=c["num_heads"],
                joint_attention_dim=c["joint_attention_dim"], caption_projection_dim=c["num_heads"] * c["head_dim"],
                pooled_projection_dim=c["pooled_projection_dim"], out_channels=c["out_channels"],
                pos_embed_max_size=c["pos_embed_max_size"], qk_norm=c["qk_norm"],
                dual_attention_layers=tuple(c["x_block_self_attn_layers"]))


def to_diffusers_state_dict(model: MMDiT) -> dict[str, torch.Tensor]:
    """A course ``MMDiT``'s weights under ``SD3Transformer2DModel`` keys."""
    sd = model.state_dict()
    out = _to(sd, _model_pairs(model))
    for i, block in enumerate(model.joint_blocks):
        out.update(_to(sd, _block_pairs(block), f"joint_blocks.{i}.", f"transformer_blocks.{i}."))
    return out


def from_diffusers_state_dict(sd: dict[str, torch.Tensor], model: MMDiT) -> MMDiT:
    """Load ``SD3Transformer2DModel`` weights into ``model`` (strict: every course key is filled)."""
    new = _from(sd, _model_pairs(model))
    for i, block in enumerate(model.joint_blocks):
        new.update(_from(sd, _block_pairs(block), f"transformer_blocks.{i}.", f"joint_blocks.{i}."))
    model.load_state_dict(new, strict=True)
    return model


def to_diffusers(model: MMDiT):
    """A ``diffusers.SD3Transformer2DModel`` carrying ``model``'s weights (its device and dtype, eval mode)."""
    from diffusers import SD3Transformer2DModel

    p = next(model.parameters())
    ref = SD3Transformer2DModel(**diffusers_config(model))
    ref.load_state_dict(to_diffusers_state_dict(model), strict=True)
    return _like(ref, p).eval()


def from_diffusers(ref) -> MMDiT:
    """A course ``MMDiT`` built from an ``SD3Transformer2DModel`` (its config and weights, device and dtype)."""
    c = ref.config
    if c.caption_projection_dim != c.num_attention_heads * c.attention_head_dim:
        raise ValueError("caption_projection_dim must equal the hidden size (heads * head_dim), as in SD3")
    if c.qk_norm not in (None, "rms_norm"):
        raise ValueError(f"the course MMDiT has qk_norm None or 'rms_norm', this model {c.qk_norm!r}")
    # the blocks diffusers built with attn2 (it ignores indices >= num_layers in dual_attention_layers)
    dual = tuple(i for i, b in enumerate(ref.transformer_blocks) if getattr(b, "attn2", None) is not None)
    model = MMDiT(sample_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels, depth=c.num_layers,
                  num_heads=c.num_attention_heads, head_dim=c.attention_head_dim,
                  joint_attention_dim=c.joint_attention_dim, pooled_projection_dim=c.pooled_projection_dim,
                  out_channels=c.out_channels, pos_embed_max_size=c.pos_embed_max_size, qk_norm=c.qk_norm,
                  x_block_self_attn_layers=dual)
    model = from_diffusers_state_dict(ref.state_dict(), model)
    p = next(ref.parameters())
    return model.to(device=p.device, dtype=p.dtype).eval()


# ---- a tiny SD3 pipeline around three tiny text encoders ---------------------------------------


def _t5_tokenizer(texts):
    """A word-level stand-in for T5's tokenizer over the words of ``texts``: ``<pad>`` = 0, ``</s>`` = 1
    (appended to every text, as T5 does), ``<unk>`` = 2."""
    import re

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for text in texts:
        for w in re.findall(r"\w+|[^\w\s]", text.lower()):
            vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.normalizer = normalizers.Lowercase()
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def tiny_sd3_pipeline(texts, *, clip_l_dim: int = 32, clip_g_dim: int = 48, t5_dim: int = 96, with_t5: bool = True,
                      seed: int = 0, dual_attention_layers: tuple[int, ...] = (), with_vae: bool = False):
    """A ``StableDiffusion3Pipeline`` with SD3's three text encoders shrunk and randomly initialised (offline):
    two ``CLIPTextModelWithProjection`` (widths ``clip_l_dim`` and ``clip_g_dim`` in place of 768 and 1280,
    77-token context, CLIP's BPE restricted to the words of ``texts``), a ``T5EncoderModel`` of width
    ``t5_dim`` (in place of 4096; omitted with ``with_t5=False``, as ``text_encoder_3=None``), a 2-layer
    ``SD3Transformer2DModel`` whose ``joint_attention_dim`` is ``t5_dim`` (SD3.5 Medium's MMDiT-X with
    ``dual_attention_layers``; ``rms_norm`` QK-norm then, as Medium), and no VAE unless ``with_vae`` (a
    2-block ``AutoencoderKL``, 16 channels, SD3's ``use_quant_conv=False`` and latent scale / shift). Enough for ``encode_prompt`` and
    for the loading and sampling code of the real checkpoints; a model that generates images is chapter 12's."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from ..world.text import build_tokenizer

    if clip_l_dim + clip_g_dim > t5_dim:
        raise ValueError(f"the CLIP widths {clip_l_dim} + {clip_g_dim} must not exceed T5's width {t5_dim}")
    texts = list(texts) + [""]
    tokenizer = build_tokenizer(texts, context_length=77)

    def clip(dim):
        cfg = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=dim, intermediate_size=2 * dim, projection_dim=dim,
                             num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id)
        return CLIPTextModelWithProjection(cfg).eval()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder, text_encoder_2 = clip(clip_l_dim), clip(clip_g_dim)
        text_encoder_3 = tokenizer_3 = None
        if with_t5:
            tokenizer_3 = _t5_tokenizer(texts)
            text_encoder_3 = T5EncoderModel(T5Config(vocab_size=len(tokenizer_3), d_model=t5_dim, d_kv=16, d_ff=2 * t5_dim,
                                                     num_layers=2, num_heads=4, pad_token_id=0,
                                                     eos_token_id=1)).eval()
        dual = {"dual_attention_layers": tuple(dual_attention_layers), "qk_norm": "rms_norm"} if dual_attention_layers else {}
        transformer = SD3Transformer2DModel(sample_size=8, patch_size=2, in_channels=4, num_layers=2,
                                            attention_head_dim=8, num_attention_heads=2, joint_attention_dim=t5_dim,
                                            caption_projection_dim=16, pooled_projection_dim=clip_l_dim + clip_g_dim,
                                            out_channels=4, pos_embed_max_size=8, **dual)
        vae = None
        if with_vae:
            from diffusers import AutoencoderKL

            vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                                block_out_channels=(16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=8,
                                sample_size=16, use_quant_conv=False, use_post_quant_conv=False,
                                scaling_factor=1.5305, shift_factor=0.0609).eval()  # SD3's VAE config values
    return StableDiffusion3Pipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                                    vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                    text_encoder_2=text_encoder_2, tokenizer_2=tokenizer,
                                    text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
