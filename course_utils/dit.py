"""Diffusion Transformer (DiT) with adaLN-Zero, as in facebookresearch/DiT ``models.py`` (notebook 09).

Pieces, with the upstream names: ``patchify`` / ``unpatchify``, ``get_2d_sincos_pos_embed``,
``TimestepEmbedder`` (256 sinusoidal frequencies -> MLP), ``LabelEmbedder`` (class dropout for
classifier-free guidance), ``modulate``, ``DiTBlock`` (adaLN-Zero: six vectors from
``adaLN_modulation``), ``FinalLayer`` (each token -> p x p x out_channels, 2C with ``learn_sigma``),
``DiT`` and the named size configs ``DiT_models`` (``DiT-XL/2`` ... ``DiT-S/8`` and the course's
``DiT-Digits/2``), classifier-free guidance (``classifier_free_guidance``, ``DiT.forward_with_cfg``);
``dit_gflops`` counts a forward pass in multiply-adds. The weight mapping to diffusers'
``DiTTransformer2DModel`` is ``course_utils.bridges.diffusers_dit``; sampling the digits DiT with
rectified flow is ``course_utils.recipes.digits``.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .diffusion import as_time

# ---- Patches and positions -------------------------------------------------------------------


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, T, p*p*C), T = (H/p)(W/p); each token is one p x p patch (row-major)."""
    if x.ndim != 4:
        raise ValueError(f"patchify expects (N, C, H, W), got shape {tuple(x.shape)}")
    n, c, h, w = x.shape
    if h % p or w % p:
        raise ValueError(f"image size {h}x{w} is not divisible by the patch size {p}")
    x = x.reshape(n, c, h // p, p, w // p, p)
    # 'nchpwq -> nhwpqc': the inverse of DiT's unpatchify einsum
    x = torch.einsum("nchpwq->nhwpqc", x)
    return x.reshape(n, (h // p) * (w // p), p * p * c)


def unpatchify(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """(N, T, p*p*C) -> (N, C, H, W), exactly DiT's ``unpatchify`` (square images)."""
    if x.ndim != 3 or x.shape[-1] != p * p * c:
        raise ValueError(f"unpatchify expects (N, T, p*p*C) = (N, T, {p * p * c}), got {tuple(x.shape)}")
    h = w = int(round(x.shape[1] ** 0.5))
    if h * w != x.shape[1]:
        raise ValueError(f"unpatchify needs a square number of tokens, got T={x.shape[1]}")
    x = x.reshape(x.shape[0], h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], c, h * p, w * p)


def get_1d_sincos_pos_embed_from_grid(embed_dim: int, pos: np.ndarray) -> np.ndarray:
    """(M,) positions -> (M, D): [sin(pos * omega), cos(pos * omega)], omega_i = 1 / 10000^(2i/D)."""
    if embed_dim % 2:
        raise ValueError(f"embed_dim must be even, got {embed_dim}")
    omega = np.arange(embed_dim // 2, dtype=np.float64) / (embed_dim / 2.0)
    omega = 1.0 / 10000 ** omega  # (D/2,)
    out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)  # (M, D/2)
    return np.concatenate([np.sin(out), np.cos(out)], axis=1)


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int) -> np.ndarray:
    """(grid_size**2, D) fixed 2-D sin-cos positions (MAE / DiT): half the channels per axis."""
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos positions, got {embed_dim}")
    grid_h = np.arange(grid_size, dtype=np.float32)
    grid_w = np.arange(grid_size, dtype=np.float32)
    grid = np.meshgrid(grid_w, grid_h)  # here w goes first
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_size, grid_size)
    emb_h = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[0])  # (T, D/2)
    emb_w = get_1d_sincos_pos_embed_from_grid(embed_dim // 2, grid[1])  # (T, D/2)
    return np.concatenate([emb_h, emb_w], axis=1)  # (T, D)


# ---- Embedding layers for timesteps and class labels -----------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over the T tokens of (N, T, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> (N, D): 256 sinusoidal frequencies, then Linear-SiLU-Linear (notebook 09).
    ``freq_shift=0`` is DiT's ``exp(-ln(10000) i / half)``; ``freq_shift=1`` divides by ``half - 1`` as
    diffusers' ``CombinedTimestepLabelEmbeddings`` does (``downscale_freq_shift=1``)."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256, freq_shift: int = 0):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=True))
        self.frequency_embedding_size = frequency_embedding_size
        self.freq_shift = freq_shift

    @staticmethod
    def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0, freq_shift: int = 0) -> torch.Tensor:
        """(N,) -> (N, dim) = [cos(t * f_i), sin(t * f_i)], f_i = exp(-ln(max_period) * i / (half - freq_shift))."""
        if t.ndim != 1:
            raise ValueError(f"timesteps must be a 1-D tensor (N,), got shape {tuple(t.shape)}")
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device)
                          / (half - freq_shift))
        args = t[:, None].float() * freqs[None]  # (N, half)
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (N, dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:  # (N,) -> (N, D)
        # the frequencies are computed in float32, then cast to the weights' dtype (as diffusers does)
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(t_freq.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class labels -> (N, D); with ``dropout_prob > 0`` an extra "null" row (index ``num_classes``)
    replaces a random fraction of the labels during training, for classifier-free guidance (notebook 09)."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        use_cfg_embedding = dropout_prob > 0
        self.embedding_table = nn.Embedding(num_classes + use_cfg_embedding, hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def token_drop(self, labels: torch.Tensor, force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace labels by the null class with probability ``dropout_prob`` (or where ``force_drop_ids == 1``)."""
        if force_drop_ids is None:
            drop_ids = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
        else:
            drop_ids = force_drop_ids == 1
        return torch.where(drop_ids, self.num_classes, labels)

    def forward(self, labels: torch.Tensor, train: bool | None = None,
                force_drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        train = self.training if train is None else train
        if labels.device.type != "meta" and (labels.min() < 0 or labels.max() > self.num_classes - (self.dropout_prob == 0)):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes} = null class "
                             f"when dropout_prob > 0), got range [{labels.min().item()}, {labels.max().item()}]")
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (N, D)


# ---- Core DiT model --------------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm's ``Attention``, qkv_bias=True)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        qkv = self.qkv(x).reshape(n, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (N, heads, T, D/heads)
        # softmax(q k^T / sqrt(d_head)) v
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(n, t, d))


class Mlp(nn.Module):
    """fc1 -> GELU(tanh) -> fc2, hidden = mlp_ratio * D."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class DiTBlock(nn.Module):
    """A DiT block with adaptive layer norm zero (adaLN-Zero) conditioning (notebook 09), called as ``block(x, c)``."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))
        # adaLN-Zero: the regression of the six vectors starts at zero, so the gates are zero and
        # the block starts as the identity
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        # x: (N, T, D) tokens, c: (N, D) conditioning = t_emb + y_emb
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        # x <- x + alpha_1 * Attn(gamma_1 * LN(x) + beta_1)   (alpha = gate, gamma = 1 + scale, beta = shift)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))
        # x <- x + alpha_2 * MLP(gamma_2 * LN(x) + beta_2)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """The final layer of DiT: adaLN (shift, scale) then Linear(D, p*p*out_channels), zero-initialised."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))
        for layer in (self.adaLN_modulation[-1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        x = modulate(self.norm_final(x), shift, scale)
        return self.linear(x)  # (N, T, p*p*out_channels)


class PatchEmbed(nn.Module):
    """timm's ``PatchEmbed``: Conv2d(kernel = stride = p), (N, C, H, W) -> (N, T, D)."""

    def __init__(self, img_size: int, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.img_size, self.patch_size = img_size, patch_size
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(f"expected images of {self.img_size}x{self.img_size}, got {tuple(x.shape[-2:])}")
        return self.proj(x).flatten(2).transpose(1, 2)


class DiT(nn.Module):
    """Diffusion model with a Transformer backbone (Peebles & Xie 2023), notebook 09.

    ``forward(x, t, y)``: x (N, C, H, W) noisy input, t (N,) timesteps (the value fed to the
    sinusoidal embedding, e.g. 0..999, or 1000 * sigma for rectified flow), y (N,) labels, with
    ``num_classes`` the null label. Output (N, out_channels, H, W), out_channels = 2C with ``learn_sigma``.
    """

    def __init__(self, input_size: int = 32, patch_size: int = 2, in_channels: int = 4, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, learn_sigma: bool = True, freq_shift: int = 0):
        super().__init__()
        if input_size % patch_size:
            raise ValueError(f"input_size {input_size} must be divisible by patch_size {patch_size}")
        self.config = dict(input_size=input_size, patch_size=patch_size, in_channels=in_channels,
                           hidden_size=hidden_size, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                           class_dropout_prob=class_dropout_prob, num_classes=num_classes,
                           learn_sigma=learn_sigma, freq_shift=freq_shift)
        self.learn_sigma, self.in_channels, self.patch_size = learn_sigma, in_channels, patch_size
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.num_heads, self.num_classes = num_heads, num_classes

        self.x_embedder = PatchEmbed(input_size, patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size, freq_shift=freq_shift)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size, class_dropout_prob)
        num_patches = self.x_embedder.num_patches
        # Will use fixed sin-cos embedding:
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches, hidden_size), requires_grad=False)
        self.blocks = nn.ModuleList([DiTBlock(hidden_size, num_heads, mlp_ratio=mlp_ratio) for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT's initialisation: xavier Linears, fixed sin-cos positions, N(0, 0.02) embeddings, adaLN-Zero."""
        def _basic_init(module):
            if isinstance(module, nn.Linear):
                torch.nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.constant_(module.bias, 0)
        self.apply(_basic_init)
        pos_embed = get_2d_sincos_pos_embed(self.pos_embed.shape[-1], int(self.x_embedder.num_patches ** 0.5))
        self.pos_embed.data.copy_(torch.from_numpy(pos_embed).float().unsqueeze(0))
        # Initialize patch_embed like nn.Linear (instead of nn.Conv2d):
        w = self.x_embedder.proj.weight.data
        nn.init.xavier_uniform_(w.view([w.shape[0], -1]))
        nn.init.constant_(self.x_embedder.proj.bias, 0)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        # Zero-out adaLN modulation layers in DiT blocks, and the output layers:
        final = self.final_layer
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [final.adaLN_modulation[-1], final.linear]:
            nn.init.constant_(layer.weight, 0)
            nn.init.constant_(layer.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C_out) -> (N, C_out, H, W)."""
        return unpatchify(x, self.patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        t = as_time(t, x, dtype=torch.float32)  # (N,); float32: bfloat16 cannot hold 0..999 exactly
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), where T = H * W / patch_size ** 2
        t = self.t_embedder(t)                   # (N, D)
        y = self.y_embedder(y, self.training)    # (N, D)
        c = t + y                                # (N, D)
        for block in self.blocks:
            x = block(x, c)                      # (N, T, D)
        x = self.final_layer(x, c)               # (N, T, patch_size ** 2 * out_channels)
        return self.unpatchify(x)                # (N, out_channels, H, W)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance in one batched pass with the null label. Unlike DiT's ``forward_with_cfg``
        (a batch already doubled, only 3 channels guided), x and y are the conditional batch, all channels guided."""
        if self.y_embedder.dropout_prob <= 0:
            raise RuntimeError("classifier-free guidance needs a model trained with class_dropout_prob > 0 (a null label)")
        n = x.shape[0]
        t = as_time(t, x, dtype=torch.float32)
        null = torch.full_like(y, self.num_classes)
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        return classifier_free_guidance(out[:n], out[n:], cfg_scale)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance (Ho & Salimans): ``scale`` = 1 gives the conditional prediction, 0 the
    unconditional one, > 1 pushes away from the unconditional one (sharper, less varied class samples)."""
    # eps = eps_uncond + s * (eps_cond - eps_uncond)
    return uncond + scale * (cond - uncond)


# ---- Named configs (DiT paper Table 1) and the course's digits model -------------------------

_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}
DiT_models: dict[str, dict] = {f"DiT-{name}/{p}": dict(depth=d, hidden_size=h, num_heads=nh, patch_size=p)
                               for name, (d, h, nh) in _SIZES.items() for p in (2, 4, 8)}
# the course's model: 8x8 grey digits in pixel space, 16 tokens, ~1.3M parameters
DiT_models["DiT-Digits/2"] = dict(depth=4, hidden_size=128, num_heads=4, patch_size=2)


def DiT_from_name(name: str, **kwargs) -> DiT:
    """Build a named config, e.g. ``DiT_from_name("DiT-XL/2")`` or ``("DiT-Digits/2", input_size=8, ...)``."""
    if name not in DiT_models:
        raise ValueError(f"unknown DiT config {name!r}; known: {', '.join(DiT_models)}")
    return DiT(**DiT_models[name], **kwargs)


def dit_gflops(input_size: int = 32, patch_size: int = 2, hidden_size: int = 1152, depth: int = 28,
               in_channels: int = 4, learn_sigma: bool = True, mlp_ratio: float = 4.0,
               frequency_embedding_size: int = 256) -> float:
    """Forward-pass cost of one image in Gflops counted as multiply-adds (as the DiT paper does).

    Per block: qkv 3TD^2 + attention 2T^2D + proj TD^2 + MLP 2 r TD^2 + adaLN 6D^2; plus the patch
    embedding, the timestep MLP and the final layer. DiT-XL/2 at 256x256 (32x32 latent) gives ~118.6.
    """
    t = (input_size // patch_size) ** 2
    d = hidden_size
    out = 2 * in_channels if learn_sigma else in_channels
    block = 3 * t * d * d + 2 * t * t * d + t * d * d + 2 * mlp_ratio * t * d * d + 6 * d * d
    embed = t * d * patch_size ** 2 * in_channels + frequency_embedding_size * d + d * d
    final = 2 * d * d + t * d * patch_size ** 2 * out
    return (depth * block + embed + final) / 1e9
