"""The course's Pixtral encoder (``course_utils.pixtral``) <-> transformers' ``PixtralVisionModel`` (notebook 06).

Parameter names are the same; what differs is where each RoPE pair lives inside a head:

- the lecture (and ``course_utils.rope``): pair k = dimensions ``(2k, 2k+1)``, height on even k (0-based),
  width on odd k, frequencies ``θ_k`` in order;
- transformers' ``PixtralVisionRotaryEmbedding`` + ``rotate_half``: pair p = dimensions ``(p, p + d/2)``;
  the first d/4 pairs carry the height with the even-index frequencies ``θ_0, θ_2, ...``, the next d/4 the width
  with ``θ_1, θ_3, ...`` (its comment: "a different permutation in order to obtain the same calculation").

``hf_to_lecture_permutation(d)`` is that fixed permutation: ``x_lecture = x_hf[..., perm]``; for d = 16 it is
``[0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15]``. Permuting the rows of every head of ``q_proj`` and
``k_proj`` by it gives the same attention scores, since ``<P a, P b> = <a, b>``. (mistral-inference's original
checkpoint is interleaved like the lecture but orders the pairs as transformers does; transformers' conversion
script ``permute_for_rope`` maps it to split halves.)
"""
from __future__ import annotations

import torch

from ..pixtral import VisionEncoder, VisionLanguageAdapter
from ..rope import PIXTRAL_ROPE_THETA


def hf_to_lecture_permutation(head_dim: int) -> torch.Tensor:
    """``perm`` with ``x_lecture = x_hf[..., perm]`` for one head of size ``head_dim`` (a multiple of 4)."""
    if head_dim % 4:
        raise ValueError(f"Pixtral's RoPE-2D splits a head in height and width pairs: head_dim must be a multiple of "
                         f"4, got {head_dim}")
    half, quarter = head_dim // 2, head_dim // 4
    perm = []
    for k in range(half):  # lecture pair k (0-based): height if k even (θ_k = hf pair k/2), width if odd
        p = k // 2 if k % 2 == 0 else quarter + k // 2
        perm += [p, p + half]
    return torch.tensor(perm)


def _permute_heads(w: torch.Tensor, n_heads: int, perm: torch.Tensor) -> torch.Tensor:
    """Permute the output rows of a ``(n_heads * head_dim, D)`` projection head by head."""
    d_out, d_in = w.shape
    return w.view(n_heads, d_out // n_heads, d_in)[:, perm.to(w.device)].reshape(d_out, d_in)


def rope_settings(config) -> float:
    """``rope_theta`` of a ``PixtralVisionConfig`` (``rope_parameters`` in transformers 5, ``rope_theta`` before)."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("rope_type", "axial") not in ("axial", "default"):
        raise ValueError(f"the course encoder implements Pixtral's 2-D RoPE only, got rope_type {rope['rope_type']!r}")
    return float(rope.get("rope_theta", getattr(config, "rope_theta", PIXTRAL_ROPE_THETA)))


def encoder_kwargs(config) -> dict:
    """``VisionEncoder``'s constructor arguments for a ``PixtralVisionConfig``."""
    if config.hidden_act not in ("silu", "gelu"):
        raise ValueError(f"hidden_act {config.hidden_act!r}: the course GatedFFN implements 'silu' and 'gelu'")
    return dict(dim=config.hidden_size, n_layers=config.num_hidden_layers, n_heads=config.num_attention_heads,
                hidden_dim=config.intermediate_size, patch_size=config.patch_size, channels=config.num_channels,
                act=config.hidden_act, theta=rope_settings(config))


def load_hf_state_dict(encoder: VisionEncoder, state_dict: dict, n_heads: int) -> VisionEncoder:
    """Copy a ``PixtralVisionModel`` state dict into ``encoder`` (q/k rows permuted to the lecture's pairs); strict."""
    head_dim = encoder.patch_conv.out_channels // n_heads
    perm = hf_to_lecture_permutation(head_dim)
    sd = {}
    for k, v in state_dict.items():
        if "patch_positional_embedding" in k:
            continue  # buffers of the rotary embedding, recomputed by course_utils.rope
        if k.endswith(("attention.q_proj.weight", "attention.k_proj.weight")):
            v = _permute_heads(v, n_heads, perm)
        sd[k] = v
    encoder.load_state_dict(sd, strict=True)
    return encoder


def to_hf_state_dict(encoder: VisionEncoder, n_heads: int) -> dict:
    """The inverse: a course encoder's weights in ``PixtralVisionModel``'s layout."""
    head_dim = encoder.patch_conv.out_channels // n_heads
    inverse = torch.argsort(hf_to_lecture_permutation(head_dim))
    return {k: (_permute_heads(v, n_heads, inverse)
                if k.endswith(("attention.q_proj.weight", "attention.k_proj.weight")) else v)
            for k, v in encoder.state_dict().items()}


def encoder_from_hf(hf_model) -> VisionEncoder:
    """The course ``VisionEncoder`` equal to a ``PixtralVisionModel``: its config, weights, device and dtype."""
    p = next(hf_model.parameters())
    with torch.device(p.device):
        encoder = VisionEncoder(**encoder_kwargs(hf_model.config))
    load_hf_state_dict(encoder.to(p.dtype), hf_model.state_dict(), hf_model.config.num_attention_heads)
    return encoder.eval()


def adapter_from_hf(projector) -> VisionLanguageAdapter:
    """The course adapter equal to a LLaVA ``multi_modal_projector`` (``linear_1 -> GELU -> linear_2``)."""
    act = getattr(projector.act, "__class__", type(None)).__name__
    if "GELU" not in act.upper():
        raise ValueError(f"Pixtral's adapter is an FFN-GeLU; this projector uses {act}")
    bias = projector.linear_1.bias is not None
    p = projector.linear_1.weight
    with torch.device(p.device):
        adapter = VisionLanguageAdapter(projector.linear_1.in_features, projector.linear_2.out_features, bias)
    sd = {k.replace("linear_1", "w_in").replace("linear_2", "w_out"): v for k, v in projector.state_dict().items()}
    adapter.to(p.dtype).load_state_dict(sd, strict=True)
    return adapter.eval()
