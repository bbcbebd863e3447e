"""Pixtral's vision encoder, piece by piece (notebook 06).

Pixtral 12B = a 400M-parameter ViT trained from scratch + an FFN-GeLU adapter + a 12B Mistral decoder.
The encoder reads each image at its native resolution and aspect ratio:

- ``resize_for_patches``: the image processor's rule (longest edge at most 1024, then each side up to a
  multiple of the 16-px patch); ``patch_grid``: the ``n_h x n_w`` patches that come out;
- ``image_token_layout(n_h, n_w)``: ``[IMG]`` per patch, ``[IMG_BREAK]`` after each row, ``[IMG_END]`` last,
  so a 2x6 image and a 3x4 image (12 patches each) give different token sequences;
- ``block_diagonal_mask(lengths)``: sequence packing, several images in one sequence, attention kept inside
  each image (``BlockDiagonalMask`` in mistral-inference, ``generate_block_attention_mask`` in transformers);
- ``GatedFFN``, ``PixtralAttention`` (RoPE-2D from ``course_utils.rope`` instead of learned positions),
  ``PixtralAttentionLayer``, ``VisionEncoder`` and the adapter ``VisionLanguageAdapter``;
- ``encoder_parameters`` / ``decoder_parameters`` / ``adapter_parameters``: the lecture's table in numbers.

Module names follow transformers' ``PixtralVisionModel`` (``patch_conv``, ``ln_pre``, ``transformer.layers``,
``attention_norm``, ``feed_forward.gate_proj``, ...); the only difference in weights is the RoPE pair order
of ``q_proj``/``k_proj`` (``course_utils.bridges.transformers_pixtral``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .llama import RMSNorm
from .rope import PIXTRAL_ROPE_THETA, apply_rope2d

IMG, IMG_BREAK, IMG_END = "[IMG]", "[IMG_BREAK]", "[IMG_END]"

# The lecture's table (Pixtral 12B): the decoder is Mistral NeMo 12B, the encoder the new 400M ViT.
PIXTRAL_12B = {
    "decoder": dict(dim=5120, n_layers=40, head_dim=128, hidden_dim=14336, n_heads=32, n_kv_heads=8,
                    context_len=131072, vocab_size=131072),
    "encoder": dict(dim=1024, n_layers=24, head_dim=64, hidden_dim=4096, n_heads=16, n_kv_heads=16,
                    context_len=4096, patch_size=16),
}


# --------------------------------------------------------------------------------------------
# Variable resolution: resize rule, patch grid, image tokens
# --------------------------------------------------------------------------------------------
def _positive_ints(**values) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def resize_for_patches(height: int, width: int, longest_edge: int = 1024, patch_size: int = 16) -> tuple[int, int]:
    """Pixtral's resize rule (``PixtralImageProcessor``): ``(height, width)`` the image is resized to.

    Shrink (never enlarge) so that both sides fit in ``longest_edge`` keeping the aspect ratio (sides floored),
    then round each side *up* to a multiple of ``patch_size``.
    """
    _positive_ints(height=height, width=width, longest_edge=longest_edge, patch_size=patch_size)
    # ratio = max(H / L, W / L);  if ratio > 1: H, W = floor(H / ratio), floor(W / ratio)
    ratio = max(height / longest_edge, width / longest_edge)
    if ratio > 1:
        height, width = max(1, math.floor(height / ratio)), max(1, math.floor(width / ratio))
    # n = ceil(side / p) = (side - 1) // p + 1;  side' = n p
    return ((height - 1) // patch_size + 1) * patch_size, ((width - 1) // patch_size + 1) * patch_size


def patch_grid(height: int, width: int, patch_size: int = 16) -> tuple[int, int]:
    """``(n_h, n_w)``: patches per column and per row of an image of ``height x width`` pixels (cropped to whole
    patches, as ``PixtralVisionModel`` does; after ``resize_for_patches`` nothing is cropped)."""
    _positive_ints(height=height, width=width, patch_size=patch_size)
    if height < patch_size or width < patch_size:
        raise ValueError(f"an image of {height}x{width} px has no whole {patch_size}-px patch; resize it first "
                         "(resize_for_patches)")
    return height // patch_size, width // patch_size


def image_token_layout(n_h: int, n_w: int) -> list[str]:
    """The tokens that stand for one image in the text: ``n_w`` x ``[IMG]`` then ``[IMG_BREAK]``, per row, the
    last ``[IMG_BREAK]`` replaced by ``[IMG_END]``: ``n_h (n_w + 1)`` tokens (``PixtralProcessor``)."""
    _positive_ints(n_h=n_h, n_w=n_w)
    tokens = ([IMG] * n_w + [IMG_BREAK]) * n_h
    tokens[-1] = IMG_END
    return tokens


# --------------------------------------------------------------------------------------------
# Sequence packing
# --------------------------------------------------------------------------------------------
def block_diagonal_mask(lengths, device=None) -> torch.Tensor:
    """``(S, S)`` bool mask, ``S = sum(lengths)``: True where query and key belong to the same image (may attend).

    ``lengths``: patches per packed image (a list of ints or a 1-d integer tensor, whose device is used).
    """
    if isinstance(lengths, torch.Tensor):
        device = lengths.device if device is None else device
        lengths = lengths.tolist() if lengths.device.type != "meta" else None
        if lengths is None:
            raise ValueError("lengths on the meta device have no values: pass them as a list of ints")
    lengths = list(lengths)
    if not lengths or any(not isinstance(n, int) or n < 1 for n in lengths):
        raise ValueError(f"lengths must be a non-empty list of positive ints (patches per image), got {lengths!r}")
    # image id of every token: [0]*n_0 + [1]*n_1 + ...
    ids = torch.cat([torch.full((n,), i, device=device) for i, n in enumerate(lengths)])
    # M[q, k] = (image(q) == image(k))
    return ids[:, None] == ids[None, :]


def patch_positions(grids, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column of every packed patch: ``pos_h, pos_w`` of shape ``(S,)`` for grids ``[(n_h, n_w), ...]``,
    each image counted from (0, 0) in row-major order (``position_ids_in_meshgrid``)."""
    rows, cols = [], []
    for n_h, n_w in grids:
        _positive_ints(n_h=n_h, n_w=n_w)
        h, w = torch.meshgrid(torch.arange(n_h, device=device), torch.arange(n_w, device=device), indexing="ij")
        rows.append(h.flatten())
        cols.append(w.flatten())
    return torch.cat(rows), torch.cat(cols)


# --------------------------------------------------------------------------------------------
# The encoder block
# --------------------------------------------------------------------------------------------
class GatedFFN(nn.Module):
    """The gated FFN of Pixtral's blocks: ``down_proj(act(gate_proj(x)) * up_proj(x))``, no biases.

    mistral-inference calls the matrices ``w1`` (gate), ``w3`` (up), ``w2`` (down) and uses SiLU; transformers'
    ``PixtralMLP`` reads the activation from the config (``hidden_act``, "silu" in pixtral-12b's config).
    """

    def __init__(self, dim: int, hidden_dim: int, act: str = "silu"):
        super().__init__()
        if act not in ("silu", "gelu"):
            raise ValueError(f"act must be 'silu' or 'gelu', got {act!r}")
        self.act = act
        self.gate_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.up_proj = nn.Linear(dim, hidden_dim, bias=False)
        self.down_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., D)
        act = F.silu if self.act == "silu" else F.gelu
        # FFN(x) = W_down (act(W_gate x) * W_up x): the gate multiplies, element by element, what passes
        return self.down_proj(act(self.gate_proj(x)) * self.up_proj(x))


class PixtralAttention(nn.Module):
    """Bidirectional multi-head self-attention with RoPE-2D on queries and keys (no learned positions)."""

    def __init__(self, dim: int, n_heads: int, theta: float = PIXTRAL_ROPE_THETA):
        super().__init__()
        if dim % n_heads or (dim // n_heads) % 2:
            raise ValueError(f"dim={dim} must split into n_heads={n_heads} heads of even size (RoPE rotates pairs)")
        self.n_heads, self.head_dim, self.theta = n_heads, dim // n_heads, theta
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.o_proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, pos_h: torch.Tensor, pos_w: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        b, s, _ = x.shape                                                              # (B, S, D)
        q, k, v = (p(x).view(b, s, self.n_heads, self.head_dim).transpose(1, 2)
                   for p in (self.q_proj, self.k_proj, self.v_proj))                    # (B, H, S, d)
        # q^(i,j) <- M_Θ^(i,j) q^(i,j),  k^(i,j) <- M_Θ^(i,j) k^(i,j)
        q, k = apply_rope2d(q, pos_h, pos_w, self.theta), apply_rope2d(k, pos_h, pos_w, self.theta)
        # softmax(q k^T / sqrt(d) restricted to mask) v  (mask: bool, True = may attend)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)                 # (B, H, S, d)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))                      # (B, S, D)


class PixtralAttentionLayer(nn.Module):
    """Pre-norm block: ``h = x + Attn(RMSNorm(x))``, ``out = h + GatedFFN(RMSNorm(h))``."""

    def __init__(self, dim: int, n_heads: int, hidden_dim: int, act: str = "silu",
                 theta: float = PIXTRAL_ROPE_THETA, eps: float = 1e-5):
        super().__init__()
        self.attention_norm = RMSNorm(dim, eps)
        self.attention = PixtralAttention(dim, n_heads, theta)
        self.ffn_norm = RMSNorm(dim, eps)
        self.feed_forward = GatedFFN(dim, hidden_dim, act)

    def forward(self, x, pos_h, pos_w, mask=None):  # (B, S, D) -> (B, S, D)
        # h = x + Attention(RMSNorm(x))
        h = x + self.attention(self.attention_norm(x), pos_h, pos_w, mask)
        # out = h + FFN(RMSNorm(h))
        return h + self.feed_forward(self.ffn_norm(h))


class _Layers(nn.Module):  # ``transformer.layers.N`` as in PixtralVisionModel's state dict
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)


class VisionEncoder(nn.Module):
    """A Pixtral-style ViT: patch convolution -> RMSNorm -> ``n_layers`` blocks with RoPE-2D, images packed.

    ``forward(images)`` takes a list of ``(C, H, W)`` tensors of any sizes (multiples of ``patch_size`` or
    cropped to them) and returns ``(1, S, D)``, ``S = sum n_h n_w``: every image's patches in row-major order,
    concatenated, each attending only to its own image. ``packed=False`` runs the images one by one instead.
    """

    def __init__(self, dim: int = 1024, n_layers: int = 24, n_heads: int = 16, hidden_dim: int = 4096,
                 patch_size: int = 16, channels: int = 3, act: str = "silu", theta: float = PIXTRAL_ROPE_THETA):
        super().__init__()
        self.patch_size = patch_size
        self.patch_conv = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size, bias=False)
        self.ln_pre = RMSNorm(dim, 1e-5)
        self.transformer = _Layers(PixtralAttentionLayer(dim, n_heads, hidden_dim, act, theta)
                                   for _ in range(n_layers))

    def grids(self, images) -> list[tuple[int, int]]:
        """``(n_h, n_w)`` of every image."""
        return [patch_grid(int(im.shape[-2]), int(im.shape[-1]), self.patch_size) for im in images]

    def embed(self, images) -> torch.Tensor:
        """Patch embeddings of all images, flattened row by row and concatenated: ``(1, S, D)``."""
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        if not len(images) or any(im.dim() != 3 for im in images):
            raise ValueError("images: a non-empty list of (channels, height, width) tensors")
        out = []
        for im, (n_h, n_w) in zip(images, self.grids(images)):
            x = self.patch_conv(im[None].to(self.patch_conv.weight.dtype))[0, :, :n_h, :n_w]  # (D, n_h, n_w)
            out.append(x.flatten(1).T)                                                        # (n_h n_w, D)
        return self.ln_pre(torch.cat(out)[None])                                              # (1, S, D)

    def forward(self, images, packed: bool = True) -> torch.Tensor:
        if not packed:
            return torch.cat([self.forward([im]) for im in images], dim=1)
        grids = self.grids(images)
        x = self.embed(images)                                                     # (1, S, D)
        pos_h, pos_w = patch_positions(grids, device=x.device)                     # (S,), (S,)
        mask = block_diagonal_mask([n_h * n_w for n_h, n_w in grids], device=x.device) if len(grids) > 1 else None
        for layer in self.transformer.layers:
            x = layer(x, pos_h, pos_w, mask)
        return x                                                                   # (1, S, D)


class VisionLanguageAdapter(nn.Module):
    """The FFN-GeLU between encoder and decoder: ``w_out(GELU(w_in(x)))``, both with bias (mistral-inference's
    names; ``multi_modal_projector.linear_1`` / ``linear_2`` in transformers' LLaVA)."""

    def __init__(self, vision_dim: int, text_dim: int, bias: bool = True):
        super().__init__()
        self.w_in = nn.Linear(vision_dim, text_dim, bias=bias)
        self.w_out = nn.Linear(text_dim, text_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., D_vision) -> (..., D_text)
        # y = W_out GELU(W_in x + b_in) + b_out
        return self.w_out(F.gelu(self.w_in(x)))


# --------------------------------------------------------------------------------------------
# The lecture's table in parameters
# --------------------------------------------------------------------------------------------
def encoder_parameters(dim: int = 1024, n_layers: int = 24, hidden_dim: int = 4096, n_heads: int = 16,
                       patch_size: int = 16, channels: int = 3, **_) -> int:
    """Exact parameter count of the encoder (no biases; RoPE has none; RMSNorm weights included).

    Patch convolution ``C p^2 d`` + ``ln_pre`` ``d`` + per layer: ``W_q, W_k, W_v, W_o`` (``4 d^2``, 16 heads of 64
    = 1024, no GQA) + gated FFN (``3 d hidden``) + 2 norms (``2 d``).
    """
    _positive_ints(dim=dim, n_layers=n_layers, hidden_dim=hidden_dim, n_heads=n_heads, patch_size=patch_size,
                   channels=channels)
    # per layer: 4 d^2 + 3 d h + 2 d
    per_layer = 4 * dim * dim + 3 * dim * hidden_dim + 2 * dim
    # C p^2 d + d + L (per layer)
    return channels * patch_size ** 2 * dim + dim + n_layers * per_layer


def decoder_parameters(dim: int = 5120, n_layers: int = 40, head_dim: int = 128, hidden_dim: int = 14336,
                       n_heads: int = 32, n_kv_heads: int = 8, vocab_size: int = 131072, tied: bool = False,
                       **_) -> int:
    """Exact parameter count of a Mistral/Llama decoder whose ``head_dim`` is given (NeMo: 32 x 128 = 4096 != 5120).

    Per layer: ``W_q`` (d x h d_h), ``W_o`` (h d_h x d), ``W_k, W_v`` (d x h_kv d_h each), SwiGLU ``3 d hidden``,
    2 norms; plus embeddings, LM head (unless tied) and the final norm.
    """
    _positive_ints(dim=dim, n_layers=n_layers, head_dim=head_dim, hidden_dim=hidden_dim, n_heads=n_heads,
                   n_kv_heads=n_kv_heads, vocab_size=vocab_size)
    # attention 2 d h d_h + 2 d h_kv d_h;  FFN 3 d hidden;  norms 2 d
    per_layer = 2 * dim * n_heads * head_dim + 2 * dim * n_kv_heads * head_dim + 3 * dim * hidden_dim + 2 * dim
    return n_layers * per_layer + vocab_size * dim * (1 if tied else 2) + dim


def adapter_parameters(vision_dim: int = 1024, text_dim: int = 5120, bias: bool = True) -> int:
    """``w_in`` (vision_dim x text_dim) + ``w_out`` (text_dim x text_dim), plus their biases."""
    _positive_ints(vision_dim=vision_dim, text_dim=text_dim)
    return vision_dim * text_dim + text_dim * text_dim + (2 * text_dim if bias else 0)
