"""Llama 3 from its pieces, and Llama 3.2 Vision's gated cross-attention (notebooks 04 and 05).

Notebook 04 builds every piece from its formula and checks it against this module and against
transformers' ``LlamaForCausalLM``; notebook 05 adds the tanh-gated cross-attention layer that
feeds image features into the language model (``MllamaCrossAttentionDecoderLayer`` upstream).

Module and parameter names follow transformers (``q_proj``, ``gate_proj``, ``input_layernorm``,
``cross_attn_attn_gate``, ...), so a state dict copies across with ``strict=True``.

Arithmetic helpers reproduce the Llama 3 paper's tables: ``count_parameters`` (8B/70B/405B),
``kv_cache_bytes``, ``training_flops_per_token`` and ``mfu``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LLAMA3_THETA = 500_000.0
H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM, BF16 dense tensor cores (1,979 with 2:4 sparsity)

# The Llama 3 paper's architecture table (Table 3); vocabulary 128,000 there, 128,256 released.
LLAMA3_CONFIGS: dict[str, dict[str, int]] = {
    "8B": dict(n_layers=32, dim=4096, ffn_dim=14336, n_heads=32, n_kv_heads=8),
    "70B": dict(n_layers=80, dim=8192, ffn_dim=28672, n_heads=64, n_kv_heads=8),
    "405B": dict(n_layers=126, dim=16384, ffn_dim=53248, n_heads=128, n_kv_heads=8),
}


def _check_heads(dim: int, n_heads: int, n_kv_heads: int) -> None:
    if dim % n_heads:
        raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads} (head_dim = dim / n_heads)")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads} "
                         "(each key/value head serves n_heads / n_kv_heads query heads)")


# --------------------------------------------------------------------------------------------
# RMSNorm
# --------------------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    """Root-mean-square norm without mean subtraction or bias (notebook 04); ``LlamaRMSNorm`` upstream."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., dim)
        dtype = x.dtype
        x = x.float()
        # RMSNorm(x) = g * x / sqrt(mean(x^2) + eps)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


# --------------------------------------------------------------------------------------------
# RoPE (theta = 500,000 in Llama 3)
# --------------------------------------------------------------------------------------------
def rope_frequencies(head_dim: int, theta: float = LLAMA3_THETA) -> torch.Tensor:
    """``(head_dim/2,)`` inverse frequencies ``theta^(-2k/head_dim)``, k = 0 .. head_dim/2 - 1 (notebook 04)."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}")
    # theta_k = theta^(-2k / d)
    return 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = LLAMA3_THETA):
    """``cos, sin`` of shape ``(T, head_dim)`` for integer ``positions`` (T,), halves repeated (notebook 04)."""
    positions = torch.as_tensor(positions)
    # angle_{m,k} = m * theta_k                                        (T, head_dim/2)
    angles = positions.float()[:, None] * rope_frequencies(head_dim, theta)[None, :]
    emb = torch.cat([angles, angles], dim=-1)  # (T, head_dim): pair k is (k, k + head_dim/2)
    return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` on the last dimension's halves (transformers' Llama convention)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE: ``x * cos + rotate_half(x) * sin``; x is ``(B, H, T, d)``, cos/sin ``(T, d)``."""
    # RoPE(x)_m = x_m * cos(m theta) + rotate_half(x_m) * sin(m theta)
    return x * cos + rotate_half(x) * sin


def apply_rope_complex(x: torch.Tensor, positions: torch.Tensor, theta: float = LLAMA3_THETA) -> torch.Tensor:
    """RoPE as complex multiplication: pair ``(x_k, x_{k+d/2})`` is ``z_k``, rotated as ``z_k * e^{i m theta_k}``.

    Equal to ``apply_rope`` (notebook 04). Meta's reference code pairs *adjacent* dimensions
    ``(x_{2k}, x_{2k+1})`` instead; the two layouts differ by a fixed permutation of the q/k weights.
    """
    d = x.shape[-1]
    freqs = rope_frequencies(d, theta)
    angles = torch.as_tensor(positions).float()[:, None] * freqs[None, :]   # (T, d/2)
    rot = torch.polar(torch.ones_like(angles), angles)                     # e^{i m theta_k}
    z = torch.complex(x[..., : d // 2].float(), x[..., d // 2:].float())    # (..., T, d/2)
    out = z * rot
    return torch.cat([out.real, out.imag], dim=-1).to(x.dtype)


# --------------------------------------------------------------------------------------------
# Grouped-query attention
# --------------------------------------------------------------------------------------------
def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``(B, n_kv, T, d) -> (B, n_kv * n_rep, T, d)``: each key/value head serves ``n_rep`` query heads."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v, written out; ``mask`` is additive (0 or -inf), broadcastable."""
    # A = softmax(Q K^T / sqrt(d_head) + M)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])   # (B, H, Tq, Tk)
    if mask is not None:
        scores = scores + mask
    return scores.softmax(-1) @ v                                 # (B, H, Tq, d_head)


def causal_mask(t: int, dtype=torch.float32) -> torch.Tensor:
    """``(t, t)`` additive mask: 0 on and below the diagonal, -inf above (token m sees 0..m)."""
    return torch.full((t, t), float("-inf"), dtype=dtype).triu(1)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with RoPE and ``n_kv_heads`` key/value heads (notebook 04); ``LlamaAttention``."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, theta: float = LLAMA3_THETA, fused: bool = True):
        super().__init__()
        _check_heads(dim, n_heads, n_kv_heads)
        self.n_heads, self.n_kv_heads, self.head_dim, self.theta = n_heads, n_kv_heads, dim // n_heads, theta
        self.fused = fused  # F.scaled_dot_product_attention (True) or the written-out `attention` (False)
        self.q_proj = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        b, t, _ = x.shape                                                         # (B, T, D)
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)     # (B, H, T, d)
        k = self.k_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d)
        v = self.v_proj(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, d)
        positions = torch.arange(t) if positions is None else positions
        cos, sin = rope_cos_sin(positions, self.head_dim, self.theta)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_heads // self.n_kv_heads
        k, v, mask = repeat_kv(k, rep), repeat_kv(v, rep), causal_mask(t, q.dtype)
        # softmax(q k^T / sqrt(d) + M) v: `attention(q, k, v, mask)` written out; the fused kernel computes the
        # same (tests/test_llama.py) with the rounding of transformers' default SDPA path
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if self.fused else attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))               # (B, T, D)


# --------------------------------------------------------------------------------------------
# SwiGLU feed-forward
# --------------------------------------------------------------------------------------------
class SwiGLU(nn.Module):
    """``down_proj(silu(gate_proj(x)) * up_proj(x))`` (notebook 04); ``LlamaMLP`` upstream."""

    def __init__(self, dim: int, ffn_dim: int):
        super().__init__()
        self.gate_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.up_proj = nn.Linear(dim, ffn_dim, bias=False)
        self.down_proj = nn.Linear(ffn_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        # FFN(x) = W_down (SiLU(W_gate x) * W_up x),  SiLU(z) = z * sigmoid(z)
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# --------------------------------------------------------------------------------------------
# Decoder block and a tiny Llama
# --------------------------------------------------------------------------------------------
class LlamaDecoderLayer(nn.Module):
    """Pre-norm block: ``h = x + Attn(RMSNorm(x))``, ``out = h + FFN(RMSNorm(h))`` (notebook 04)."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, ffn_dim: int, theta: float = LLAMA3_THETA,
                 eps: float = 1e-5):
        super().__init__()
        self.self_attn = GroupedQueryAttention(dim, n_heads, n_kv_heads, theta)
        self.mlp = SwiGLU(dim, ffn_dim)
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D)
        # h = x + Attention(RMSNorm(x))
        h = x + self.self_attn(self.input_layernorm(x), positions)
        # out = h + SwiGLU(RMSNorm(h))
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    """A decoder-only Llama 3 (notebook 04): embeddings, ``n_layers`` blocks, final RMSNorm, untied LM head.

    ``load_hf_state_dict`` takes the state dict of a transformers ``LlamaForCausalLM`` as it is.
    """

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int,
                 theta: float = LLAMA3_THETA, eps: float = 1e-5):
        super().__init__()
        _check_heads(dim, n_heads, n_kv_heads)
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(LlamaDecoderLayer(dim, n_heads, n_kv_heads, ffn_dim, theta, eps)
                                    for _ in range(n_layers))
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)

    @classmethod
    def from_hf_config(cls, config) -> "Llama":
        """Same sizes as a transformers ``LlamaConfig`` (RoPE theta read from ``rope_parameters``)."""
        rope = getattr(config, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(config, "rope_theta", LLAMA3_THETA))
        if rope.get("rope_type", "default") != "default":
            raise ValueError(f"only the default RoPE is implemented here, the config uses {rope.get('rope_type')!r}")
        if getattr(config, "tie_word_embeddings", False):
            raise ValueError("the course Llama has an untied LM head; build the config with tie_word_embeddings=False")
        return cls(config.vocab_size, config.hidden_size, config.num_hidden_layers, config.num_attention_heads,
                   config.num_key_value_heads, config.intermediate_size, theta, config.rms_norm_eps)

    def load_hf_state_dict(self, state_dict: dict) -> "Llama":
        """Copy a ``LlamaForCausalLM`` state dict (``model.`` prefix dropped); strict, fails loudly."""
        sd = {k.removeprefix("model."): v for k, v in state_dict.items() if "rotary_emb" not in k}
        self.load_state_dict(sd, strict=True)
        return self

    def hidden_states(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``(B, T)`` token ids -> ``(B, T, D)`` after the final norm."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq_len), got shape {tuple(input_ids.shape)}")
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.norm(x)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> logits (B, T, V)
        return self.lm_head(self.hidden_states(input_ids))


@torch.no_grad()
def generate_greedy(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None) -> torch.Tensor:
    """Greedy decoding without a cache (re-runs the prefix each step; fine for tiny models)."""
    ids = input_ids
    for _ in range(max_new_tokens):
        logits = model(ids)
        logits = logits.logits if hasattr(logits, "logits") else logits
        nxt = logits[:, -1].argmax(-1, keepdim=True)
        ids = torch.cat([ids, nxt], dim=1)
        if eos_token_id is not None and bool((nxt == eos_token_id).all()):
            break
    return ids


# --------------------------------------------------------------------------------------------
# Arithmetic of the paper's tables
# --------------------------------------------------------------------------------------------
def count_parameters(n_layers: int, dim: int, ffn_dim: int, n_heads: int, n_kv_heads: int, vocab_size: int,
                     tied_embeddings: bool = False) -> int:
    """Exact parameter count of a Llama 3 (no biases; RMSNorm weights included) (notebook 04).

    Per layer: ``W_q, W_o`` (d x d each) + ``W_k, W_v`` (d x n_kv*d/h each) + SwiGLU (3 x d x ffn) + 2 norms (d).
    Plus embeddings (V x d), the LM head (V x d unless tied) and the final norm (d).
    """
    for name, v in dict(n_layers=n_layers, dim=dim, ffn_dim=ffn_dim, n_heads=n_heads, n_kv_heads=n_kv_heads,
                        vocab_size=vocab_size).items():
        if not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    _check_heads(dim, n_heads, n_kv_heads)
    kv_dim = n_kv_heads * (dim // n_heads)
    # attention: 2 d^2 + 2 d (n_kv d / h);  FFN: 3 d ffn;  norms: 2 d
    per_layer = 2 * dim * dim + 2 * dim * kv_dim + 3 * dim * ffn_dim + 2 * dim
    # embeddings V d (+ LM head V d when untied) + final norm d
    return n_layers * per_layer + vocab_size * dim * (1 if tied_embeddings else 2) + dim


def kv_cache_bytes(n_layers: int, n_kv_heads: int, head_dim: int, seq_len: int, batch: int = 1,
                   bytes_per_value: int = 2) -> int:
    """Bytes of the key/value cache: ``2 (K and V) x L x n_kv x d_head x T x B x bytes`` (notebook 04)."""
    for name, v in dict(n_layers=n_layers, n_kv_heads=n_kv_heads, head_dim=head_dim, seq_len=seq_len,
                        batch=batch, bytes_per_value=bytes_per_value).items():
        if not isinstance(v, int) or v < 0:
            raise ValueError(f"{name} must be a non-negative int, got {v!r}")
    # KV = 2 * L * n_kv * d_head * T * B * bytes
    return 2 * n_layers * n_kv_heads * head_dim * seq_len * batch * bytes_per_value


def training_flops_per_token(n_params: int, n_layers: int, dim: int, seq_len: int, causal: bool = False) -> float:
    """Model FLOPs per trained token: ``6 N + 12 L d T`` (PaLM's appendix B; notebook 04).

    ``6 N``: forward (2N) + backward (4N) matmuls; ``12 L d T``: attention scores and values
    (``Q K^T`` and ``A V``, forward + backward). ``causal=True`` halves the attention term (only
    the lower triangle is needed), as some MFU accountings do.
    """
    attn = 12 * n_layers * dim * seq_len
    return 6.0 * n_params + (attn / 2 if causal else attn)


def mfu(achieved_tflops_per_gpu: float, peak_tflops: float = H100_BF16_DENSE_TFLOPS) -> float:
    """Model FLOPs utilization: achieved model FLOP/s per GPU divided by the hardware peak (notebook 04)."""
    if peak_tflops <= 0 or achieved_tflops_per_gpu < 0:
        raise ValueError("achieved must be >= 0 and peak > 0 (both in TFLOP/s per GPU)")
    return achieved_tflops_per_gpu / peak_tflops


# --------------------------------------------------------------------------------------------
# Llama 3.2 Vision: gated cross-attention (notebook 05)
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# A word-level tokenizer for Shapes World text (the course's tiny Llama models, notebooks 04-05)
# --------------------------------------------------------------------------------------------
# Llama 3's special tokens (names as in the released tokenizer; ids are the course's own, small).
SPECIAL_TOKENS = ("<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                  "<|image|>", "<|python_tag|>", "<unk>")


def shapes_vocabulary(n_scenes: int = 3000) -> list[str]:
    """Every word and punctuation mark of Shapes World captions and questions (sorted, deterministic)."""
    import re

    from . import shapes

    words = set()
    for scene in shapes.scenes("train", n_scenes):
        for text in [*scene.captions, *(f"{q.question} {q.answer}" for q in scene.qa)]:
            words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return sorted(words)


def shapes_tokenizer(n_scenes: int = 3000):
    """A transformers ``PreTrainedTokenizerFast`` (word level, lower-cased) over Shapes World's words.

    Ids: the Llama 3 special tokens first (``pad`` = 0, ``<|begin_of_text|>`` = 1, ``<|end_of_text|>``
    = 2, ``<|eot_id|>`` = 3, ``<|image|>`` = 4, ...), then the words. Built offline in about a second;
    the course checkpoints ship it with ``save_pretrained``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in shapes_vocabulary(n_scenes):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", unk_token="<unk>",
                                   additional_special_tokens=["<|image|>", "<|end_of_text|>", "<|python_tag|>"])
    fast.model_max_length = 128
    return fast


# --------------------------------------------------------------------------------------------
# Shapes World text and VQA batches for the course's tiny Llama / Mllama (notebooks 04-05)
# --------------------------------------------------------------------------------------------
IGNORE_INDEX = -100  # label of positions that do not count in the loss (LLaVA / transformers)


def lm_texts(scene_list, answers_only: bool = False) -> list[str]:
    """Training texts from scenes: the five captions and every ``question answer`` pair."""
    out = []
    for s in scene_list:
        if not answers_only:
            out.extend(s.captions)
        out.extend(f"{q.question} {q.answer}" for q in s.qa)
    return out


def lm_batch(tokenizer, texts: list[str]) -> dict[str, torch.Tensor]:
    """``<|begin_of_text|> text <|eot_id|>`` padded right; labels are the ids with padding ignored."""
    enc = tokenizer([tokenizer.bos_token + t + tokenizer.eos_token for t in texts], padding=True,
                    return_tensors="pt", add_special_tokens=False)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, IGNORE_INDEX)
    return {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask, "labels": labels}


def vqa_prompt(question: str, image: bool = True) -> str:
    """The prompt a tiny Mllama sees: ``<|image|><|begin_of_text|>question`` (the processor's layout)."""
    return ("<|image|>" if image else "") + "<|begin_of_text|>" + question


# --------------------------------------------------------------------------------------------
# A tiny Llama 3.2 Vision (transformers' Mllama) on Shapes World (notebook 05, scripts/train_mllama.py)
# --------------------------------------------------------------------------------------------
def tiny_mllama_config(text_config, tokenizer, every: int = 2, image_size: int = 32, patch_size: int = 8,
                       vision_width: int = 64, vision_layers: int = 2):
    """``MllamaConfig``: a tiny Mllama vision encoder (one tile of ``image_size`` px cut in ``patch_size`` px
    patches, ``vision_layers`` local layers of width ``vision_width`` + one gated global layer) and the text
    sizes of ``text_config`` (a ``LlamaConfig``) with a cross-attention layer before every ``every``-th text layer."""
    from transformers import MllamaConfig

    if image_size % patch_size:
        raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
    # the vision output concatenates the last hidden state and one intermediate layer's: 2 * vision_width
    vision = dict(hidden_size=vision_width, intermediate_size=2 * vision_width, num_hidden_layers=vision_layers,
                  num_global_layers=1, attention_heads=4, image_size=image_size, patch_size=patch_size,
                  max_num_tiles=1, intermediate_layers_indices=[vision_layers - 1],
                  vision_output_dim=2 * vision_width, supported_aspect_ratios=[[1, 1]], num_channels=3)
    n_text = text_config.num_hidden_layers
    cross = cross_attention_layer_indices(n_text, every)
    rope = getattr(text_config, "rope_parameters", None) or {"rope_type": "default", "rope_theta": LLAMA3_THETA}
    # pad/bos/eos must lie inside the (small) vocabulary, unlike MllamaTextConfig's defaults
    text = dict(vocab_size=text_config.vocab_size, hidden_size=text_config.hidden_size,
                intermediate_size=text_config.intermediate_size, num_hidden_layers=n_text + len(cross),
                num_attention_heads=text_config.num_attention_heads, num_key_value_heads=text_config.num_key_value_heads,
                cross_attention_layers=cross, rope_parameters=dict(rope), rms_norm_eps=text_config.rms_norm_eps,
                max_position_embeddings=text_config.max_position_embeddings, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return MllamaConfig(vision_config=vision, text_config=text,
                        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))


def mllama_from_llama(llama, tokenizer, every: int = 2, freeze_text: bool = True, **vision_kwargs):
    """A ``MllamaForConditionalGeneration`` whose text layers are ``llama``'s (a ``LlamaForCausalLM``).

    The cross-attention layers, vision encoder and projector are new (gates at zero); with
    ``freeze_text`` only they train, as in Llama 3.2 Vision where the language model stays frozen.
    ``vision_kwargs`` (``image_size``, ``patch_size``, ``vision_width``, ``vision_layers``) go to
    ``tiny_mllama_config``.
    """
    from transformers import MllamaForConditionalGeneration

    cfg = tiny_mllama_config(llama.config, tokenizer, every, **vision_kwargs)
    model = MllamaForConditionalGeneration._from_config(cfg, attn_implementation="sdpa")
    cross = cfg.text_config.cross_attention_layers
    text_idx = [j for j in range(cfg.text_config.num_hidden_layers) if j not in cross]
    src = llama.state_dict()
    dst = model.state_dict()
    with torch.no_grad():
        for k, v in src.items():
            if k.startswith("model.layers."):
                i, rest = k[len("model.layers."):].split(".", 1)
                dst[f"model.language_model.layers.{text_idx[int(i)]}.{rest}"].copy_(v)
            elif k == "model.embed_tokens.weight":  # Mllama keeps 8 extra rows after the vocabulary
                dst["model.language_model.embed_tokens.weight"][: v.shape[0]].copy_(v)
            elif k == "model.norm.weight":
                dst["model.language_model.norm.weight"].copy_(v)
            elif k == "lm_head.weight":
                dst["lm_head.weight"].copy_(v)
            else:
                raise RuntimeError(f"unexpected Llama weight {k!r}; expected a LlamaForCausalLM state dict")
    if freeze_text:
        text_params = {f"model.language_model.layers.{j}." for j in text_idx}
        for name, p in model.named_parameters():
            if (any(name.startswith(t) for t in text_params) or name in (
                    "model.language_model.embed_tokens.weight", "model.language_model.norm.weight", "lm_head.weight")):
                p.requires_grad_(False)
    return model.eval()


class ShapesVQA:
    """Shapes World questions for a tiny Mllama: images preprocessed once by ``MllamaImageProcessor``.

    ``kinds`` picks question kinds whose answer is one word (``color``, ``existence``, ``count``, ``shape``).
    ``batch(idx)`` gives the model's inputs with labels on the answer and ``<|eot_id|>`` only.
    """

    def __init__(self, split: str, n: int, tokenizer, image_processor, kinds=("color", "existence"), start: int = 0):
        from . import shapes

        allowed = {"color", "existence", "count", "shape"}
        if not set(kinds) <= allowed:
            raise ValueError(f"kinds must be one-word-answer kinds {sorted(allowed)}, got {sorted(kinds)}")
        self.tokenizer, self.kinds = tokenizer, tuple(kinds)
        self.scenes = shapes.scenes(split, n, start=start)
        enc = image_processor(images=[[s.image] for s in self.scenes], return_tensors="pt")
        self.pixel_values = enc["pixel_values"]          # (N, 1 image, 1 tile, 3, S, S)
        self.aspect_ratio_ids = enc["aspect_ratio_ids"]  # (N, 1)
        self.aspect_ratio_mask = enc["aspect_ratio_mask"]
        self.items = [(i, q.question, q.answer, q.kind) for i, s in enumerate(self.scenes) for q in s.qa
                      if q.kind in self.kinds]

    def __len__(self) -> int:
        return len(self.items)

    def batch(self, idx, with_answer: bool = True, image: bool = True) -> dict[str, torch.Tensor]:
        tok = self.tokenizer
        items = [self.items[k] for k in idx]
        prompts = [vqa_prompt(q, image) for _, q, _, _ in items]
        texts = [p + (f" {a}{tok.eos_token}" if with_answer else "") for p, (_, _, a, _) in zip(prompts, items)]
        enc = tok(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        out = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
        # position of the last prompt token: its logits predict the answer
        plen = torch.tensor([len(tok(p, add_special_tokens=False).input_ids) for p in prompts])
        out["answer_pos"] = plen - 1
        if with_answer:
            pos = torch.arange(enc.input_ids.shape[1])[None]
            keep = (pos >= plen[:, None]) & (enc.attention_mask == 1)
            out["labels"] = enc.input_ids.masked_fill(~keep, IGNORE_INDEX)
        if image:
            scene_idx = torch.tensor([i for i, *_ in items])
            out["pixel_values"] = self.pixel_values[scene_idx]
            out["aspect_ratio_ids"] = self.aspect_ratio_ids[scene_idx]
            out["aspect_ratio_mask"] = self.aspect_ratio_mask[scene_idx]
            # every token after <|image|> (here: all of them) may look at the single image tile
            out["cross_attention_mask"] = enc.attention_mask[:, :, None, None].clone()
        return out


@torch.no_grad()
def vqa_predictions(model, data: ShapesVQA, image: bool = True, batch_size: int = 256) -> list[str]:
    """The model's one-word answer (argmax after the question) for every item of ``data``."""
    preds = []
    for s in range(0, len(data), batch_size):
        b = data.batch(range(s, min(s + batch_size, len(data))), with_answer=False, image=image)
        pos = b.pop("answer_pos")
        logits = model(**b).logits                         # (B, T, V)
        ids = logits[torch.arange(len(pos)), pos].argmax(-1)
        preds.extend(data.tokenizer.convert_ids_to_tokens(ids.tolist()))
    return preds


def vqa_accuracy(model, data: ShapesVQA, image: bool = True) -> dict[str, float]:
    """Exact-match accuracy per question kind (and ``all``) on ``data``."""
    preds = vqa_predictions(model, data, image)
    acc: dict[str, list[int]] = {}
    for p, (_, _, a, kind) in zip(preds, data.items):
        acc.setdefault(kind, []).append(int(p == a))
        acc.setdefault("all", []).append(int(p == a))
    return {k: sum(v) / len(v) for k, v in acc.items()}


def mllama_gates(model) -> dict[str, list[float]]:
    """tanh of every cross-attention layer's attention and MLP gates in an ``Mllama*`` model."""
    layers = [l for l in model.model.language_model.layers if hasattr(l, "cross_attn_attn_gate")]
    return {"attn": [float(l.cross_attn_attn_gate.detach().tanh()) for l in layers],
            "mlp": [float(l.cross_attn_mlp_gate.detach().tanh()) for l in layers]}


def train_mllama_vqa(model, data: ShapesVQA, steps: int, batch_size: int = 64, lr: float = 5e-3,
                     gate_lr: float | None = None, seed: int = 0, log_gates_every: int = 10):
    """Train the adapter (vision encoder, projector, cross-attention layers) on ``data``; the frozen
    text model is untouched. Returns ``(history, gate_log)``, ``gate_log`` = list of ``(step, gates)``.

    The scalar gates get their own step size ``gate_lr`` (default ``10 * lr``): with one AdamW step size
    for everything, the adapter's matrices grow instead and the gates barely leave zero.
    """
    from .training import cosine_schedule, train_loop

    gates = [p for n, p in model.named_parameters() if p.requires_grad and n.endswith("_gate") and "cross_attn" in n]
    others = [p for n, p in model.named_parameters() if p.requires_grad and not (n.endswith("_gate") and "cross_attn" in n)]
    if not others:
        raise ValueError("the model has no trainable parameters; build it with mllama_from_llama(...)")
    opt = torch.optim.AdamW([{"params": others, "lr": lr}, {"params": gates, "lr": gate_lr or 10 * lr}],
                            weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)

    def batches():
        while True:
            for idx in torch.randperm(len(data), generator=gen).split(batch_size):
                if len(idx) == batch_size:
                    yield idx.tolist()

    def loss_fn(m, idx):
        b = data.batch(idx)
        b.pop("answer_pos")
        return m(**b).loss

    gate_log = [(0, mllama_gates(model))]

    def callback(step, loss):
        if (step + 1) % log_gates_every == 0:
            gate_log.append((step + 1, mllama_gates(model)))

    hist = train_loop(model, batches(), loss_fn, opt, steps, scheduler=cosine_schedule(opt, steps, warmup=20),
                      desc="adapter", callback=callback)
    return hist, gate_log
