"""The course Llama (``course_utils.llama``) <-> transformers' ``LlamaConfig`` / ``LlamaForCausalLM`` (notebook 04).

- ``llama_kwargs(config)``: the course ``Llama``'s constructor arguments for a ``LlamaConfig`` (RoPE
  ``default`` or Llama 3.1's ``llama3`` scaling, tied or untied LM head); anything else is a ``ValueError``;
- ``llama_from_hf_config(config)``: an empty course ``Llama`` of those sizes;
- ``load_hf_state_dict(model, state_dict)``: copy a ``LlamaForCausalLM`` state dict (strict);
- ``llama_from_hf(hf_model)``: both, on the reference model's device and dtype.

Parameter names are transformers' own, so the mapping is only the ``model.`` prefix.
"""
from __future__ import annotations

import torch

from ..llama import LLAMA3_THETA, Llama

SUPPORTED_ROPE_TYPES = ("default", "llama3")
LLAMA3_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def rope_settings(config) -> tuple[float, dict | None]:
    """``(theta, scaling)`` from a transformers config's ``rope_parameters`` (or the older ``rope_scaling``)."""
    rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
    theta = float(rope.get("rope_theta", getattr(config, "rope_theta", LLAMA3_THETA)))
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_type {rope_type!r} is not implemented by the course Llama; supported: "
                         f"{list(SUPPORTED_ROPE_TYPES)} ('default' = plain RoPE, 'llama3' = Llama 3.1's scaling)")
    if rope_type == "default":
        return theta, None
    missing = [k for k in LLAMA3_SCALING_KEYS if k not in rope]
    if missing:
        raise ValueError(f"rope_type 'llama3' needs {list(LLAMA3_SCALING_KEYS)} in rope_parameters; missing {missing}")
    return theta, {k: rope[k] for k in LLAMA3_SCALING_KEYS}


def llama_kwargs(config) -> dict:
    """The course ``Llama``'s constructor arguments for a transformers ``LlamaConfig``."""
    head_dim = getattr(config, "head_dim", None)
    if head_dim is not None and head_dim != config.hidden_size // config.num_attention_heads:
        raise ValueError(f"head_dim={head_dim} != hidden_size / num_attention_heads: the course Llama derives it")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("the course Llama has no biases; the config sets attention_bias or mlp_bias")
    theta, scaling = rope_settings(config)
    return dict(vocab_size=config.vocab_size, dim=config.hidden_size, n_layers=config.num_hidden_layers,
                n_heads=config.num_attention_heads, n_kv_heads=config.num_key_value_heads,
                ffn_dim=config.intermediate_size, theta=theta, eps=config.rms_norm_eps,
                tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)), rope_scaling=scaling)


def llama_from_hf_config(config) -> Llama:
    """An (untrained) course ``Llama`` with the sizes, RoPE and head tying of a transformers ``LlamaConfig``."""
    return Llama(**llama_kwargs(config))


def load_hf_state_dict(model: Llama, state_dict: dict) -> Llama:
    """Copy a ``LlamaForCausalLM`` state dict into ``model`` (``model.`` prefix dropped); strict, fails loudly.

    A tied checkpoint may lack ``lm_head.weight``: the course model then takes it from the embeddings."""
    sd = {k.removeprefix("model."): v for k, v in state_dict.items() if "rotary_emb" not in k}
    if model.lm_head.weight is model.embed_tokens.weight:
        sd.setdefault("lm_head.weight", sd["embed_tokens.weight"])
    model.load_state_dict(sd, strict=True)
    return model


def llama_from_hf(hf_model) -> Llama:
    """The course ``Llama`` equal to a ``LlamaForCausalLM``: its config, its weights, its device and dtype."""
    p = next(hf_model.parameters())
    with torch.device(p.device):
        model = llama_from_hf_config(hf_model.config)
    return load_hf_state_dict(model.to(p.dtype), hf_model.state_dict()).eval()
