"""The course CLIP (a transformers ``CLIPModel``) in open_clip's layout (notebook 01).

``open_clip_model_cfg(config)`` is the ``model_cfg`` open_clip builds its ``CLIP`` from, and
``to_open_clip_state_dict(model)`` renames the weights (packing q/k/v into ``in_proj``), so that
``open_clip.create_model_and_transforms("local-dir:" + folder)`` loads the same model as
``CLIPModel.from_pretrained(folder)`` (``course_utils.recipes.clip.save_pretrained`` writes both).
"""
from __future__ import annotations

import torch

# open_clip's MLP activation for each transformers ``hidden_act``
_ACTIVATIONS = {"gelu": False, "quick_gelu": True}  # -> model_cfg["quick_gelu"]


def open_clip_model_cfg(config, hf_tokenizer_name: str = "course/clip-shapes") -> dict:
    """open_clip's ``model_cfg`` for a transformers ``CLIPConfig`` (exact GELU -> ``nn.GELU``,
    ``quick_gelu`` -> ``QuickGELU``; the text tower pools where transformers pools)."""
    v, t = config.vision_config, config.text_config
    acts = {v.hidden_act, t.hidden_act}
    if len(acts) != 1 or not acts <= set(_ACTIVATIONS):
        raise ValueError(f"hidden_act is {v.hidden_act!r} (vision) / {t.hidden_act!r} (text); open_clip needs "
                         f"the same activation in both towers, one of {sorted(_ACTIVATIONS)}")
    return {
        "embed_dim": config.projection_dim,
        "quick_gelu": _ACTIVATIONS[v.hidden_act],
        "vision_cfg": {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.hidden_size,
                       "layers": v.num_hidden_layers, "head_width": v.hidden_size // v.num_attention_heads,
                       "mlp_ratio": v.intermediate_size / v.hidden_size},
        "text_cfg": {"context_length": t.max_position_embeddings, "vocab_size": t.vocab_size, "width": t.hidden_size,
                     "heads": t.num_attention_heads, "layers": t.num_hidden_layers,
                     "mlp_ratio": t.intermediate_size / t.hidden_size,
                     **_pooling(t),
                     # get_tokenizer("local-dir:...") then loads the tokenizer saved in the folder
                     "hf_tokenizer_name": hf_tokenizer_name},
    }


def _pooling(t) -> dict:
    """Where the text tower pools, as transformers' ``CLIPTextTransformer`` decides it."""
    if t.eos_token_id == 2:
        # legacy configs (openai/clip-vit-*): eos_token_id = 2 means "the largest id", argmax(input_ids)
        return {"pool_type": "argmax", "pad_id": t.pad_token_id}
    # pool at the first <|endoftext|>, as transformers does with eos_token_id
    return {"pool_type": "eos", "eos_id": t.eos_token_id, "pad_id": t.pad_token_id}


def _blocks(sd: dict, src: str, dst: str, n_layers: int) -> dict:
    """transformers ``CLIPEncoderLayer`` weights -> open_clip ``ResidualAttentionBlock`` weights."""
    out = {}
    for i in range(n_layers):
        s, d = f"{src}.layers.{i}", f"{dst}.resblocks.{i}"
        out[f"{d}.ln_1.weight"] = sd[f"{s}.layer_norm1.weight"]
        out[f"{d}.ln_1.bias"] = sd[f"{s}.layer_norm1.bias"]
        # nn.MultiheadAttention packs q, k, v into one (3W, W) projection
        out[f"{d}.attn.in_proj_weight"] = torch.cat([sd[f"{s}.self_attn.{p}_proj.weight"] for p in "qkv"], 0)
        out[f"{d}.attn.in_proj_bias"] = torch.cat([sd[f"{s}.self_attn.{p}_proj.bias"] for p in "qkv"], 0)
        out[f"{d}.attn.out_proj.weight"] = sd[f"{s}.self_attn.out_proj.weight"]
        out[f"{d}.attn.out_proj.bias"] = sd[f"{s}.self_attn.out_proj.bias"]
        out[f"{d}.ln_2.weight"] = sd[f"{s}.layer_norm2.weight"]
        out[f"{d}.ln_2.bias"] = sd[f"{s}.layer_norm2.bias"]
        out[f"{d}.mlp.c_fc.weight"] = sd[f"{s}.mlp.fc1.weight"]
        out[f"{d}.mlp.c_fc.bias"] = sd[f"{s}.mlp.fc1.bias"]
        out[f"{d}.mlp.c_proj.weight"] = sd[f"{s}.mlp.fc2.weight"]
        out[f"{d}.mlp.c_proj.bias"] = sd[f"{s}.mlp.fc2.bias"]
    return out


def to_open_clip_state_dict(model) -> dict[str, torch.Tensor]:
    """The transformers ``CLIPModel``'s weights renamed (and q/k/v packed) for open_clip's ``CLIP``."""
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    cfg = model.config
    out = {
        # vision tower
        "visual.conv1.weight": sd["vision_model.embeddings.patch_embedding.weight"],
        "visual.class_embedding": sd["vision_model.embeddings.class_embedding"],
        "visual.positional_embedding": sd["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": sd["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": sd["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": sd["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": sd["vision_model.post_layernorm.bias"],
        # open_clip computes x @ proj (W, D); transformers a Linear with weight (D, W)
        "visual.proj": sd["visual_projection.weight"].T,
        # text tower
        "token_embedding.weight": sd["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": sd["text_model.embeddings.position_embedding.weight"],
        "ln_final.weight": sd["text_model.final_layer_norm.weight"],
        "ln_final.bias": sd["text_model.final_layer_norm.bias"],
        "text_projection": sd["text_projection.weight"].T,
        "logit_scale": sd["logit_scale"],
    }
    out.update(_blocks(sd, "vision_model.encoder", "visual.transformer", cfg.vision_config.num_hidden_layers))
    out.update(_blocks(sd, "text_model.encoder", "transformer", cfg.text_config.num_hidden_layers))
    return {k: v.contiguous().clone() for k, v in out.items()}
