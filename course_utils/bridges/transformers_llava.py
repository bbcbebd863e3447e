"""The course LLaVA (``course_utils.llava.Llava``) from transformers' ``LlavaForConditionalGeneration`` (notebook 03).

- ``projector_from_hf(projector)``: ``LlavaMultiModalProjector`` (``linear_1`` -> act -> ``linear_2``) as the
  ``mlp2x_gelu`` ``nn.Sequential`` of LLaVA's ``builder.py`` (indices 0 and 2), or, without activation, as the
  single ``linear`` map it equals;
- ``llava_from_hf(model)``: the whole model from its parts -- the library's CLIP vision tower (hidden states of
  every layer), the course projector, and the course ``Llama`` (via ``transformers_llama``) -- so the
  from-scratch forward can be compared with the library's logits.
"""
from __future__ import annotations

import torch

from ..llava import Llava, build_vision_projector
from .transformers_llama import load_hf_state_dict, llama_from_hf_config


def projector_from_hf(projector) -> torch.nn.Module:
    """The course projector equal to a transformers ``LlavaMultiModalProjector``: ``mlp2x_gelu`` for a GELU one
    (LLaVA-1.5), ``linear`` for one without activation (``projector_hidden_act="linear"``: two stacked linear
    maps are one, ``W = W_2 W_1``, ``b = W_2 b_1 + b_2``)."""
    act = type(projector.act).__name__
    l1, l2 = projector.linear_1, projector.linear_2
    if act == "LinearActivation":
        ours = build_vision_projector("linear", l1.in_features, l2.out_features).to(l1.weight.device, l1.weight.dtype)
        with torch.no_grad():
            ours.weight.copy_(l2.weight @ l1.weight)                      # W = W_2 W_1
            ours.bias.copy_(l2.weight @ l1.bias + l2.bias)                # b = W_2 b_1 + b_2
        return ours
    if act != "GELUActivation":
        raise ValueError(f"the course projectors are LLaVA's linear and LLaVA-1.5's mlp2x_gelu; this one uses {act}")
    ours = build_vision_projector("mlp2x_gelu", l1.in_features, l2.out_features).to(l1.weight.device, l1.weight.dtype)
    ours.load_state_dict({"0.weight": l1.weight, "0.bias": l1.bias, "2.weight": l2.weight, "2.bias": l2.bias},
                         strict=True)
    return ours


def llava_from_hf(model) -> Llava:
    """The course ``Llava`` equal to a ``LlavaForConditionalGeneration`` (its tower, projector and language model)."""
    cfg = model.config
    if cfg.text_config.model_type != "llama":
        raise ValueError(f"the course language model is a Llama; this LLaVA's is {cfg.text_config.model_type!r}")
    inner = model.model
    p = next(inner.language_model.parameters())
    with torch.device(p.device):
        lm = llama_from_hf_config(cfg.text_config).to(p.dtype)
    state = {f"model.{k}": v for k, v in inner.language_model.state_dict().items()}
    load_hf_state_dict(lm, {**state, "lm_head.weight": model.lm_head.weight})
    tower = inner.vision_tower

    def hidden_states(pixel_values):            # (B, 3, H, W) -> embeddings + every layer's output
        return tower(pixel_values, output_hidden_states=True).hidden_states

    return Llava(hidden_states, projector_from_hf(inner.multi_modal_projector), lm.eval(),
                 image_token_id=cfg.image_token_index, vision_feature_layer=cfg.vision_feature_layer,
                 vision_feature_select_strategy=cfg.vision_feature_select_strategy).eval()
