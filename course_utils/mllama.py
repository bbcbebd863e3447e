"""Llama 3.2 Vision's gated cross-attention (notebook 05): image features enter a frozen Llama through
tanh-gated cross-attention layers inserted between its self-attention blocks.

``GatedCrossAttentionLayer`` is ``MllamaCrossAttentionDecoderLayer`` upstream (same parameter names:
``cross_attn_attn_gate``, ``cross_attn.q_norm``, ...), ``cross_attention_layer_indices`` gives
``MllamaTextConfig.cross_attention_layers`` and ``prefix_vs_cross_attention_cost`` compares the cost of
image tokens as a LLaVA-style prefix vs cross-attention. The text pieces come from ``llama.py`` (notebook 04).
"""
from __future__ import annotations

import torch
from torch import nn

from .llama import Llama, RMSNorm, SwiGLU, _check_heads, attention, kv_cache_bytes, repeat_kv


class CrossAttention(nn.Module):
    """Text queries attend to image keys/values (notebook 05); ``MllamaTextCrossAttention`` upstream.

    No RoPE and no causal mask (the image is a set of tokens); q and k go through an RMSNorm per head.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, eps: float = 1e-5):
        super().__init__()
        _check_heads(dim, n_heads, n_kv_heads)
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, dim // n_heads
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, eps)
        self.k_norm = RMSNorm(self.head_dim, eps)

    def forward(self, x: torch.Tensor, vision_states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape                                  # text (B, T, D)
        n = vision_states.shape[1]                         # image tokens (B, N, D)
        q = self.q_norm(self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2))            # (B, H, T, d)
        k = self.k_norm(self.k_proj(vision_states).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2))  # (B, H_kv, N, d)
        v = self.v_proj(vision_states).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)          # (B, H_kv, N, d)
        rep = self.n_heads // self.n_kv_heads
        out = attention(q, repeat_kv(k, rep), repeat_kv(v, rep), mask)   # (B, H, T, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))       # (B, T, D)


class GatedCrossAttentionLayer(nn.Module):
    """Llama 3.2 Vision's adapter layer (notebook 05); ``MllamaCrossAttentionDecoderLayer`` upstream.

    ``h = x + tanh(a) * CrossAttn(RMSNorm(x), image)``; ``out = h + tanh(b) * SwiGLU(RMSNorm(h))`` with
    scalar gates ``a = b = 0`` at init, so the layer starts as the identity and the frozen language
    model is unchanged until training opens the gates.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, ffn_dim: int, eps: float = 1e-5):
        super().__init__()
        self.cross_attn = CrossAttention(dim, n_heads, n_kv_heads, eps)
        self.input_layernorm = RMSNorm(dim, eps)
        self.cross_attn_attn_gate = nn.Parameter(torch.zeros(1))
        self.mlp = SwiGLU(dim, ffn_dim)
        self.post_attention_layernorm = RMSNorm(dim, eps)
        self.cross_attn_mlp_gate = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, vision_states: torch.Tensor, mask: torch.Tensor | None = None,
                text_row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, D), vision_states (B, N, D); ``mask`` additive (B, 1, T, N); ``text_row_mask`` (B, T, 1)
        zeroes the MLP branch for text tokens that see no image (``full_text_row_masked_out_mask``)."""
        if vision_states.dim() != 3 or vision_states.shape[-1] != x.shape[-1]:
            raise ValueError(f"vision_states must be (batch, n_image_tokens, {x.shape[-1]}) -- already projected to "
                             f"the text width -- got shape {tuple(vision_states.shape)}")
        # h = x + tanh(gate_attn) * CrossAttn(RMSNorm(x), image)
        h = x + self.cross_attn_attn_gate.tanh() * self.cross_attn(self.input_layernorm(x), vision_states, mask)
        m = self.mlp(self.post_attention_layernorm(h))
        if text_row_mask is not None:
            m = text_row_mask * m
        # out = h + tanh(gate_mlp) * FFN(RMSNorm(h))
        return h + self.cross_attn_mlp_gate.tanh() * m


def cross_attention_layer_indices(n_text_layers: int, every: int) -> list[int]:
    """Where Llama 3.2 Vision puts its cross-attention layers: one before every ``every``-th text layer.

    Indices in the *combined* stack (text + cross layers), as ``MllamaTextConfig.cross_attention_layers``:
    32 text layers, ``every=4`` -> ``[3, 8, 13, 18, 23, 28, 33, 38]`` (the 11B model's 40 layers).
    """
    if not isinstance(every, int) or every < 1 or n_text_layers < every:
        raise ValueError(f"every must be an int between 1 and n_text_layers={n_text_layers}, got {every!r}")
    # cross layer k sits after (k + 1) * every - 1 text layers and k earlier cross layers
    return [k * (every + 1) + every - 1 for k in range(n_text_layers // every)]


class LlamaWithCrossAttention(nn.Module):
    """A text ``Llama`` with ``GatedCrossAttentionLayer`` s inserted after every ``every``-th block (notebook 05).

    With no image (``vision_states=None``) the cross layers are skipped, as in ``MllamaTextModel``; with
    an image and the gates at zero the logits equal the text-only model's.
    """

    def __init__(self, text_model: Llama, every: int = 1):
        super().__init__()
        self.text = text_model
        n = len(text_model.layers)
        dim = text_model.embed_tokens.embedding_dim
        first = text_model.layers[0]
        att = first.self_attn
        ffn_dim = first.mlp.gate_proj.out_features
        self.cross_positions = cross_attention_layer_indices(n, every)
        self.every = every
        self.cross_layers = nn.ModuleList(
            GatedCrossAttentionLayer(dim, att.n_heads, att.n_kv_heads, ffn_dim, first.input_layernorm.eps)
            for _ in self.cross_positions)

    def forward(self, input_ids: torch.Tensor, vision_states: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, text_row_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids and optional (B, N, D) projected image states -> logits (B, T, V)."""
        x = self.text.embed_tokens(input_ids)                 # (B, T, D)
        text_layers, cross_layers = iter(self.text.layers), iter(self.cross_layers)
        for j in range(len(self.text.layers) + len(self.cross_layers)):
            if j in self.cross_positions:
                layer = next(cross_layers)
                if vision_states is not None:  # text-only input: the cross layers are skipped
                    x = layer(x, vision_states, mask, text_row_mask)
            else:
                x = next(text_layers)(x)
        return self.text.lm_head(self.text.norm(x))          # (B, T, V)

    def gates(self) -> dict[str, list[float]]:
        """tanh of each cross layer's two gates (0 at init)."""
        return {"attn": [float(l.cross_attn_attn_gate.detach().tanh()) for l in self.cross_layers],
                "mlp": [float(l.cross_attn_mlp_gate.detach().tanh()) for l in self.cross_layers]}


# --------------------------------------------------------------------------------------------
# Cost of image tokens: LLaVA-style prefix vs Llama 3.2 Vision-style cross-attention (notebook 05)
# --------------------------------------------------------------------------------------------
def prefix_vs_cross_attention_cost(n_images: int, image_tokens: int = 576, text_tokens: int = 256,
                                   n_layers: int = 32, dim: int = 4096, n_kv_heads: int = 8, n_heads: int = 32,
                                   n_cross_layers: int = 8, bytes_per_value: int = 2) -> dict[str, dict[str, float]]:
    """Context length, attention-score FLOPs and KV-cache bytes for ``n_images`` images, both designs.

    Prefix (LLaVA): ``N = n_images * image_tokens`` extra tokens go through every self-attention layer;
    context ``T + N``; attention FLOPs per layer ``4 (T+N)^2 d`` (QK^T and AV, non-causal upper bound);
    KV cache over all layers for ``T + N`` tokens.
    Cross-attention (Llama 3.2 Vision): context stays ``T``; self-attention ``4 T^2 d`` in every layer
    plus ``4 T N d`` in the ``n_cross_layers`` cross layers; the cache holds ``T`` tokens in the
    self-attention layers and the ``N`` image keys/values once per cross layer.
    """
    if n_images < 0 or image_tokens < 1 or text_tokens < 1:
        raise ValueError("n_images >= 0, image_tokens >= 1 and text_tokens >= 1 are required")
    hd = dim // n_heads
    n = n_images * image_tokens
    t = text_tokens
    prefix = {"context_tokens": t + n,
              # per layer: Q K^T (2 T^2 d) + A V (2 T^2 d)
              "attention_flops": n_layers * 4 * (t + n) ** 2 * dim,
              "kv_cache_bytes": kv_cache_bytes(n_layers, n_kv_heads, hd, t + n, 1, bytes_per_value)}
    cross = {"context_tokens": t,
             "attention_flops": n_layers * 4 * t * t * dim + n_cross_layers * 4 * t * n * dim,
             "kv_cache_bytes": kv_cache_bytes(n_layers, n_kv_heads, hd, t, 1, bytes_per_value)
             + kv_cache_bytes(n_cross_layers, n_kv_heads, hd, n, 1, bytes_per_value)}
    return {"prefix": prefix, "cross_attention": cross}


