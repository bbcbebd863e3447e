"""The course ``DiT`` (notebook 09) <-> diffusers' ``DiTTransformer2DModel``: config and weight layout.

As diffusers' ``scripts/convert_dit_to_diffusers.py`` maps facebookresearch/DiT checkpoints: the
fused ``qkv`` splits into ``to_q`` / ``to_k`` / ``to_v``, the timestep and label embedders are copied
into every block's ``norm1.emb`` (adaLN-Zero), the final layer becomes ``proj_out_1`` / ``proj_out_2``.
Used by the parity tests, by notebook 09 and to ship the digits DiTs (``recipes.digits``) in the
library's own format. Exact parity needs ``freq_shift=1`` (diffusers' ``downscale_freq_shift=1``).
"""
from __future__ import annotations

import torch

from ..dit import DiT

__all__ = ["diffusers_config", "to_diffusers_state_dict", "from_diffusers_state_dict", "to_diffusers", "from_diffusers"]


def diffusers_config(model: DiT) -> dict:
    """The ``DiTTransformer2DModel`` config with the same architecture as ``model``.

    diffusers uses eps 1e-6 in the first norm and ``norm_eps`` in the second, and
    ``downscale_freq_shift=1`` in its timestep frequencies, so exact parity needs ``freq_shift=1``.
    """
    c = model.config
    if c["mlp_ratio"] != 4.0:
        raise ValueError("diffusers' DiT block has a fixed 4x MLP; mlp_ratio must be 4.0")
    if c["class_dropout_prob"] <= 0:
        raise ValueError("diffusers' LabelEmbedding always has the null row here; use class_dropout_prob > 0")
    return dict(num_attention_heads=c["num_heads"], attention_head_dim=c["hidden_size"] // c["num_heads"],
                in_channels=c["in_channels"], out_channels=model.out_channels, num_layers=c["depth"],
                sample_size=c["input_size"], patch_size=c["patch_size"], num_embeds_ada_norm=c["num_classes"],
                norm_eps=1e-6, activation_fn="gelu-approximate", attention_bias=True, norm_type="ada_norm_zero",
                norm_elementwise_affine=False)


def to_diffusers_state_dict(model: DiT) -> dict[str, torch.Tensor]:
    """Rename a course ``DiT`` state dict into ``DiTTransformer2DModel`` keys (as diffusers'
    ``scripts/convert_dit_to_diffusers.py`` does: the t/y embedders are copied into every block's ``norm1.emb``)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out = {"pos_embed.proj.weight": sd["x_embedder.proj.weight"], "pos_embed.proj.bias": sd["x_embedder.proj.bias"],
           "proj_out_1.weight": sd["final_layer.adaLN_modulation.1.weight"],
           "proj_out_1.bias": sd["final_layer.adaLN_modulation.1.bias"],
           "proj_out_2.weight": sd["final_layer.linear.weight"], "proj_out_2.bias": sd["final_layer.linear.bias"]}
    for i in range(model.config["depth"]):
        b, o = f"blocks.{i}.", f"transformer_blocks.{i}."
        e = o + "norm1.emb."
        out[e + "timestep_embedder.linear_1.weight"] = sd["t_embedder.mlp.0.weight"].clone()
        out[e + "timestep_embedder.linear_1.bias"] = sd["t_embedder.mlp.0.bias"].clone()
        out[e + "timestep_embedder.linear_2.weight"] = sd["t_embedder.mlp.2.weight"].clone()
        out[e + "timestep_embedder.linear_2.bias"] = sd["t_embedder.mlp.2.bias"].clone()
        out[e + "class_embedder.embedding_table.weight"] = sd["y_embedder.embedding_table.weight"].clone()
        out[o + "norm1.linear.weight"] = sd[b + "adaLN_modulation.1.weight"]
        out[o + "norm1.linear.bias"] = sd[b + "adaLN_modulation.1.bias"]
        # the fused qkv (3D, D) splits into to_q, to_k, to_v
        for name, w in zip(("to_q", "to_k", "to_v"), sd[b + "attn.qkv.weight"].chunk(3, dim=0)):
            out[o + f"attn1.{name}.weight"] = w.clone()
        for name, w in zip(("to_q", "to_k", "to_v"), sd[b + "attn.qkv.bias"].chunk(3, dim=0)):
            out[o + f"attn1.{name}.bias"] = w.clone()
        out[o + "attn1.to_out.0.weight"] = sd[b + "attn.proj.weight"]
        out[o + "attn1.to_out.0.bias"] = sd[b + "attn.proj.bias"]
        out[o + "ff.net.0.proj.weight"] = sd[b + "mlp.fc1.weight"]
        out[o + "ff.net.0.proj.bias"] = sd[b + "mlp.fc1.bias"]
        out[o + "ff.net.2.weight"] = sd[b + "mlp.fc2.weight"]
        out[o + "ff.net.2.bias"] = sd[b + "mlp.fc2.bias"]
    return out


def from_diffusers_state_dict(sd: dict[str, torch.Tensor], model: DiT) -> DiT:
    """Load ``DiTTransformer2DModel`` weights into a course ``DiT`` (the inverse of ``to_diffusers_state_dict``;
    the embedders are taken from block 0). Strict: every key must be used."""
    ref = to_diffusers_state_dict(model)
    missing = sorted(set(ref) - set(sd))
    if missing:
        raise RuntimeError(f"diffusers state dict lacks {len(missing)} keys, e.g. {missing[:3]}")
    e, new = "transformer_blocks.0.norm1.emb.", {}
    new["x_embedder.proj.weight"], new["x_embedder.proj.bias"] = sd["pos_embed.proj.weight"], sd["pos_embed.proj.bias"]
    new["t_embedder.mlp.0.weight"] = sd[e + "timestep_embedder.linear_1.weight"]
    new["t_embedder.mlp.0.bias"] = sd[e + "timestep_embedder.linear_1.bias"]
    new["t_embedder.mlp.2.weight"] = sd[e + "timestep_embedder.linear_2.weight"]
    new["t_embedder.mlp.2.bias"] = sd[e + "timestep_embedder.linear_2.bias"]
    new["y_embedder.embedding_table.weight"] = sd[e + "class_embedder.embedding_table.weight"]
    new["final_layer.adaLN_modulation.1.weight"], new["final_layer.adaLN_modulation.1.bias"] = sd["proj_out_1.weight"], sd["proj_out_1.bias"]
    new["final_layer.linear.weight"], new["final_layer.linear.bias"] = sd["proj_out_2.weight"], sd["proj_out_2.bias"]
    for i in range(model.config["depth"]):
        b, o = f"blocks.{i}.", f"transformer_blocks.{i}."
        new[b + "adaLN_modulation.1.weight"], new[b + "adaLN_modulation.1.bias"] = sd[o + "norm1.linear.weight"], sd[o + "norm1.linear.bias"]
        new[b + "attn.qkv.weight"] = torch.cat([sd[o + f"attn1.{n}.weight"] for n in ("to_q", "to_k", "to_v")])
        new[b + "attn.qkv.bias"] = torch.cat([sd[o + f"attn1.{n}.bias"] for n in ("to_q", "to_k", "to_v")])
        new[b + "attn.proj.weight"], new[b + "attn.proj.bias"] = sd[o + "attn1.to_out.0.weight"], sd[o + "attn1.to_out.0.bias"]
        new[b + "mlp.fc1.weight"], new[b + "mlp.fc1.bias"] = sd[o + "ff.net.0.proj.weight"], sd[o + "ff.net.0.proj.bias"]
        new[b + "mlp.fc2.weight"], new[b + "mlp.fc2.bias"] = sd[o + "ff.net.2.weight"], sd[o + "ff.net.2.bias"]
    new["pos_embed"] = model.pos_embed.data.clone()
    model.load_state_dict(new, strict=True)
    return model


def to_diffusers(model: DiT):
    """A ``diffusers.DiTTransformer2DModel`` carrying ``model``'s weights (eval mode)."""
    from diffusers import DiTTransformer2DModel

    ref = DiTTransformer2DModel(**diffusers_config(model))
    ref.load_state_dict(to_diffusers_state_dict(model), strict=True)
    return ref.eval()


def from_diffusers(ref) -> DiT:
    """A course ``DiT`` built from a ``DiTTransformer2DModel`` (its config and weights, device and dtype);
    ``freq_shift=1``."""
    c = ref.config
    hidden = c.num_attention_heads * c.attention_head_dim
    out_channels = c.out_channels if c.out_channels is not None else c.in_channels
    if out_channels not in (c.in_channels, 2 * c.in_channels):
        raise ValueError(f"out_channels must be C or 2C, got {out_channels} for C={c.in_channels}")
    model = DiT(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels, hidden_size=hidden,
                depth=c.num_layers, num_heads=c.num_attention_heads, num_classes=c.num_embeds_ada_norm,
                learn_sigma=out_channels == 2 * c.in_channels, class_dropout_prob=0.1, freq_shift=1)
    model = from_diffusers_state_dict(ref.state_dict(), model)
    return model.to(device=ref.device, dtype=ref.dtype).eval()
