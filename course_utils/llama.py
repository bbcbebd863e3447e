"""Llama 3 from its pieces (notebook 04): RMSNorm, RoPE (with Llama 3.1's long-context scaling), GQA,
SwiGLU, the pre-norm block and a decoder-only model with an optionally tied LM head.

Notebook 04 builds every piece from its formula and checks it against this module and against
transformers' ``LlamaForCausalLM`` (the config / weight mapping is ``course_utils.bridges.transformers_llama``).
Module and parameter names follow transformers (``q_proj``, ``gate_proj``, ``input_layernorm``, ...),
so a state dict copies across with ``strict=True``. Llama 3.2 Vision's cross-attention is ``mllama.py``.

Arithmetic helpers reproduce the Llama 3 paper's tables: ``count_parameters`` (8B/70B/405B),
``kv_cache_bytes``, ``training_flops_per_token`` and ``mfu``. Every tensor made here follows the
device and dtype of the inputs (``meta`` included).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LLAMA3_THETA = 500_000.0
H100_BF16_DENSE_TFLOPS = 989.4  # H100 SXM, BF16 dense tensor cores (1,979 with 2:4 sparsity)
IGNORE_INDEX = -100  # label of positions that do not count in the loss (LLaVA / transformers)

# The Llama 3 paper's architecture table (Table 3); vocabulary 128,000 there, 128,256 released.
LLAMA3_CONFIGS: dict[str, dict[str, int]] = {
    "8B": dict(n_layers=32, dim=4096, ffn_dim=14336, n_heads=32, n_kv_heads=8),
    "70B": dict(n_layers=80, dim=8192, ffn_dim=28672, n_heads=64, n_kv_heads=8),
    "405B": dict(n_layers=126, dim=16384, ffn_dim=53248, n_heads=128, n_kv_heads=8),
}
# Llama 3.1's RoPE scaling ("rope_type": "llama3" in the released config.json of 3.1 8B / 70B / 405B)
LLAMA31_ROPE_SCALING = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                            original_max_position_embeddings=8192)


def _check_heads(dim: int, n_heads: int, n_kv_heads: int) -> None:
    if dim % n_heads:
        raise ValueError(f"dim={dim} must be divisible by n_heads={n_heads} (head_dim = dim / n_heads)")
    if n_heads % n_kv_heads:
        raise ValueError(f"n_heads={n_heads} must be a multiple of n_kv_heads={n_kv_heads} "
                         "(each key/value head serves n_heads / n_kv_heads query heads)")


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
# RoPE (theta = 500,000 in Llama 3) and Llama 3.1's scaling of its low frequencies
# --------------------------------------------------------------------------------------------
def llama3_scale_frequencies(inv_freq: torch.Tensor, factor: float, low_freq_factor: float,
                             high_freq_factor: float, original_max_position_embeddings: int) -> torch.Tensor:
    """Llama 3.1's ``llama3`` RoPE scaling (notebook 04; ``_compute_llama3_parameters`` in transformers).

    With ``L = original_max_position_embeddings`` and wavelength ``lambda_k = 2 pi / theta_k``:
    pairs with ``lambda_k < L / high_freq_factor`` (high frequencies: local order) are kept, pairs with
    ``lambda_k > L / low_freq_factor`` (low frequencies: longer than the training context) are divided
    by ``factor``, and in between the two are blended linearly in ``L / lambda_k``.
    """
    if not (factor >= 1 and 0 < low_freq_factor < high_freq_factor and original_max_position_embeddings > 0):
        raise ValueError("llama3 RoPE scaling needs factor >= 1, 0 < low_freq_factor < high_freq_factor and "
                         f"original_max_position_embeddings > 0; got {factor}, {low_freq_factor}, "
                         f"{high_freq_factor}, {original_max_position_embeddings}")
    wavelen = 2 * math.pi / inv_freq
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    # s_k = (L / lambda_k - low_freq_factor) / (high_freq_factor - low_freq_factor)   (0 at the low end, 1 at the high)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    # theta'_k = theta_k if lambda_k < L/high;  theta_k / factor if lambda_k > L/low;  else (1 - s_k) theta_k / factor + s_k theta_k
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, blended)
    return torch.where(wavelen < high_freq_wavelen, inv_freq, scaled)


def rope_frequencies(head_dim: int, theta: float = LLAMA3_THETA, scaling: dict | None = None,
                     device=None) -> torch.Tensor:
    """``(head_dim/2,)`` float32 inverse frequencies ``theta^(-2k/head_dim)``, k = 0 .. head_dim/2 - 1 (notebook 04);
    ``scaling`` (keys of ``LLAMA31_ROPE_SCALING``) applies ``llama3_scale_frequencies``."""
    if head_dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: head_dim must be even, got {head_dim}")
    # theta_k = theta^(-2k / d)
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)
    return inv_freq if scaling is None else llama3_scale_frequencies(inv_freq, **scaling)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float = LLAMA3_THETA, scaling: dict | None = None):
    """float32 ``cos, sin`` of shape ``(T, head_dim)`` for integer ``positions`` (T,), halves repeated (notebook 04);
    on the device of ``positions``."""
    positions = torch.as_tensor(positions)
    # angle_{m,k} = m * theta_k                                        (T, head_dim/2)
    angles = positions.float()[:, None] * rope_frequencies(head_dim, theta, scaling, positions.device)[None, :]
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
    positions = torch.as_tensor(positions, device=x.device)
    angles = positions.float()[:, None] * rope_frequencies(d, theta, device=x.device)[None, :]   # (T, d/2)
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


def causal_mask(t: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(t, t)`` additive mask: 0 on and below the diagonal, -inf above (token m sees 0..m)."""
    return torch.full((t, t), float("-inf"), dtype=dtype, device=device).triu(1)


class GroupedQueryAttention(nn.Module):
    """Causal self-attention with RoPE and ``n_kv_heads`` key/value heads (notebook 04); ``LlamaAttention``.

    ``rope_scaling``: Llama 3.1's frequency scaling (``LLAMA31_ROPE_SCALING``) or None for plain RoPE.
    """

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int, theta: float = LLAMA3_THETA, fused: bool = True,
                 rope_scaling: dict | None = None):
        super().__init__()
        _check_heads(dim, n_heads, n_kv_heads)
        self.n_heads, self.n_kv_heads, self.head_dim, self.theta = n_heads, n_kv_heads, dim // n_heads, theta
        self.rope_scaling = rope_scaling
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
        positions = torch.arange(t, device=x.device) if positions is None else positions
        cos, sin = rope_cos_sin(positions, self.head_dim, self.theta, self.rope_scaling)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # computed in float32, applied in the activations' dtype
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        rep = self.n_heads // self.n_kv_heads
        k, v, mask = repeat_kv(k, rep), repeat_kv(v, rep), causal_mask(t, q.dtype, q.device)
        # softmax(q k^T / sqrt(d) + M) v: `attention(q, k, v, mask)` written out; the fused kernel computes the
        # same (tests/test_llama.py) with the rounding of transformers' default SDPA path
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask) if self.fused else attention(q, k, v, mask)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))               # (B, T, D)


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
                 eps: float = 1e-5, rope_scaling: dict | None = None):
        super().__init__()
        self.self_attn = GroupedQueryAttention(dim, n_heads, n_kv_heads, theta, rope_scaling=rope_scaling)
        self.mlp = SwiGLU(dim, ffn_dim)
        self.input_layernorm = RMSNorm(dim, eps)
        self.post_attention_layernorm = RMSNorm(dim, eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:  # (B, T, D)
        # h = x + Attention(RMSNorm(x))
        h = x + self.self_attn(self.input_layernorm(x), positions)
        # out = h + SwiGLU(RMSNorm(h))
        return h + self.mlp(self.post_attention_layernorm(h))


class Llama(nn.Module):
    """A decoder-only Llama 3 (notebook 04): embeddings, ``n_layers`` blocks, final RMSNorm, LM head.

    ``tie_word_embeddings=True`` shares the LM head's matrix with the embeddings (Llama 3.2 1B / 3B);
    ``rope_scaling`` is Llama 3.1's long-context RoPE scaling (``LLAMA31_ROPE_SCALING``) or None.
    """

    def __init__(self, vocab_size: int, dim: int, n_layers: int, n_heads: int, n_kv_heads: int, ffn_dim: int,
                 theta: float = LLAMA3_THETA, eps: float = 1e-5, tie_word_embeddings: bool = False,
                 rope_scaling: dict | None = None):
        super().__init__()
        _check_heads(dim, n_heads, n_kv_heads)
        self.vocab_size = vocab_size
        self.embed_tokens = nn.Embedding(vocab_size, dim)
        self.layers = nn.ModuleList(LlamaDecoderLayer(dim, n_heads, n_kv_heads, ffn_dim, theta, eps, rope_scaling)
                                    for _ in range(n_layers))
        self.norm = RMSNorm(dim, eps)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        if tie_word_embeddings:
            # logits = h E^T: one (V, d) matrix embeds the tokens and scores them
            self.lm_head.weight = self.embed_tokens.weight

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


