"""Diffusion Transformer (DiT) with adaLN-Zero, as in facebookresearch/DiT ``models.py`` (notebook 09).

Pieces, with the upstream names: ``patchify`` / ``unpatchify``, ``get_2d_sincos_pos_embed``,
``TimestepEmbedder`` (256 sinusoidal frequencies -> MLP), ``LabelEmbedder`` (class dropout for
classifier-free guidance), ``modulate``, ``DiTBlock`` (adaLN-Zero: six vectors from
``adaLN_modulation``), ``FinalLayer`` (each token -> p x p x out_channels, 2C with ``learn_sigma``),
``DiT`` and the named size configs ``DiT_models`` (``DiT-XL/2`` ... ``DiT-S/8`` and the course's
``DiT-Digits/2``). ``to_diffusers_state_dict`` / ``from_diffusers_state_dict`` map the weights to and
from diffusers' ``DiTTransformer2DModel``; ``dit_gflops`` counts a forward pass in multiply-adds.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# ----------------------------------------------------------------------------------------------
#  Patches and positions
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
#  Embedding layers for timesteps and class labels
# ----------------------------------------------------------------------------------------------


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN: x * (1 + scale) + shift, with (N, D) shift/scale broadcast over the T tokens of (N, T, D)."""
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class TimestepEmbedder(nn.Module):
    """Scalar timesteps -> (N, D): 256 sinusoidal frequencies, then Linear-SiLU-Linear (notebook 09).

    ``freq_shift=0`` is DiT's ``exp(-ln(10000) i / half)``; diffusers' ``CombinedTimestepLabelEmbeddings``
    divides by ``half - 1`` instead (``downscale_freq_shift=1``): pass ``freq_shift=1`` to match it.
    """

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

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        t_freq = self.timestep_embedding(t, self.frequency_embedding_size, freq_shift=self.freq_shift)
        return self.mlp(t_freq)  # (N, D)


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
        if labels.min() < 0 or labels.max() > self.num_classes - (self.dropout_prob == 0):
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}] (or {self.num_classes} = null class "
                             f"when dropout_prob > 0), got range [{labels.min().item()}, {labels.max().item()}]")
        if (train and self.dropout_prob > 0) or force_drop_ids is not None:
            labels = self.token_drop(labels, force_drop_ids)
        return self.embedding_table(labels)  # (N, D)


# ----------------------------------------------------------------------------------------------
#  Core DiT model
# ----------------------------------------------------------------------------------------------


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
        self.learn_sigma = learn_sigma
        self.in_channels = in_channels
        self.out_channels = in_channels * 2 if learn_sigma else in_channels
        self.patch_size = patch_size
        self.num_heads = num_heads
        self.num_classes = num_classes

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
        # Zero-out adaLN modulation layers in DiT blocks:
        for block in self.blocks:
            nn.init.constant_(block.adaLN_modulation[-1].weight, 0)
            nn.init.constant_(block.adaLN_modulation[-1].bias, 0)
        # Zero-out output layers:
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].weight, 0)
        nn.init.constant_(self.final_layer.adaLN_modulation[-1].bias, 0)
        nn.init.constant_(self.final_layer.linear.weight, 0)
        nn.init.constant_(self.final_layer.linear.bias, 0)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, T, p*p*C_out) -> (N, C_out, H, W)."""
        return unpatchify(x, self.patch_size, self.out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        x = self.x_embedder(x) + self.pos_embed  # (N, T, D), where T = H * W / patch_size ** 2
        t = self.t_embedder(t)                   # (N, D)
        y = self.y_embedder(y, self.training)    # (N, D)
        c = t + y                                # (N, D)
        for block in self.blocks:
            x = block(x, c)                      # (N, T, D)
        x = self.final_layer(x, c)               # (N, T, patch_size ** 2 * out_channels)
        return self.unpatchify(x)                # (N, out_channels, H, W)

    def forward_with_cfg(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, cfg_scale: float) -> torch.Tensor:
        """Classifier-free guidance: out = uncond + s (cond - uncond), one batched pass with the null label.

        Unlike DiT's ``forward_with_cfg`` (which takes a batch already doubled and guides only the first
        3 channels), ``x`` and ``y`` here are the conditional batch and every channel is guided.
        """
        if self.y_embedder.dropout_prob <= 0:
            raise RuntimeError("classifier-free guidance needs a model trained with class_dropout_prob > 0 (a null label)")
        n = x.shape[0]
        t = torch.as_tensor(t, dtype=torch.float32, device=x.device)
        t = t.expand(n) if t.ndim == 0 else t
        null = torch.full_like(y, self.num_classes)
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out[:n], out[n:]
        # eps = eps_uncond + s * (eps_cond - eps_uncond)
        return uncond + cfg_scale * (cond - uncond)


# ----------------------------------------------------------------------------------------------
#  Named configs (DiT paper Table 1) and the course's digits model
# ----------------------------------------------------------------------------------------------

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


# ----------------------------------------------------------------------------------------------
#  diffusers DiTTransformer2DModel weight mapping
# ----------------------------------------------------------------------------------------------


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
    """A course ``DiT`` built from a ``DiTTransformer2DModel`` (its config and weights); ``freq_shift=1``."""
    c = ref.config
    hidden = c.num_attention_heads * c.attention_head_dim
    out_channels = c.out_channels if c.out_channels is not None else c.in_channels
    if out_channels not in (c.in_channels, 2 * c.in_channels):
        raise ValueError(f"out_channels must be C or 2C, got {out_channels} for C={c.in_channels}")
    model = DiT(input_size=c.sample_size, patch_size=c.patch_size, in_channels=c.in_channels, hidden_size=hidden,
                depth=c.num_layers, num_heads=c.num_attention_heads, num_classes=c.num_embeds_ada_norm,
                learn_sigma=out_channels == 2 * c.in_channels, class_dropout_prob=0.1, freq_shift=1)
    return from_diffusers_state_dict(ref.state_dict(), model).eval()


# ----------------------------------------------------------------------------------------------
#  Generating and judging digits (notebooks 09-10; scripts/train_digits.py, benchmarks/bench_digits.py)
# ----------------------------------------------------------------------------------------------


def velocity_fn(model, y: torch.Tensor, guidance: float = 1.0, time_scale: float = 1000.0):
    """A ``v(x, t)`` closure for ``flow.euler_sample`` from a class-conditional DiT (course ``DiT`` or
    diffusers ``DiTTransformer2DModel``) predicting the rectified-flow velocity in its first C channels.

    The network sees ``time_scale * t`` (SD3's timesteps = 1000 sigma). ``guidance`` w gives
    v = v_uncond + w (v_cond - v_uncond); w = 1 is the plain conditional model.
    """
    num_classes = model.config["num_classes"] if isinstance(model, DiT) else model.config.num_embeds_ada_norm
    in_channels = model.config["in_channels"] if isinstance(model, DiT) else model.config.in_channels

    def net(x, t, labels):
        out = model(x, time_scale * t, labels)
        out = out if torch.is_tensor(out) else out.sample
        return out[:, :in_channels]

    def v(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if guidance == 1.0:
            return net(x, t, y)
        n = x.shape[0]
        null = torch.full_like(y, num_classes)
        out = net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, null]))
        cond, uncond = out[:n], out[n:]
        # v = v_uncond + w (v_cond - v_uncond)
        return uncond + guidance * (cond - uncond)
    return v


class DigitsClassifier(nn.Module):
    """A small CNN on 8x8 digits in [-1, 1] that judges generated samples (notebook 09)."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        self.config = dict(width=width, num_classes=num_classes)
        self.features = nn.Sequential(
            nn.Conv2d(1, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 2 * width, 3, padding=1), nn.GELU(),
            nn.MaxPool2d(2))  # (N, 2w, 4, 4)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(2 * width * 16, 128), nn.GELU(),
                                  nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1:] != (1, 8, 8):
            raise ValueError(f"DigitsClassifier expects (N, 1, 8, 8) images in [-1, 1], got {tuple(x.shape)}")
        return self.head(self.features(x))  # (N, 10) logits


def save_classifier(model: DigitsClassifier, folder) -> None:
    """``model.safetensors`` + ``config.json`` (no pickles)."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")


def load_classifier(folder) -> DigitsClassifier:
    """Load the course's digits classifier (``hub.resolve("course/digits-classifier")``), eval mode."""
    import json
    from pathlib import Path

    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise RuntimeError(f"no model.safetensors in {folder}; run `python scripts/train_digits.py`")
    model = DigitsClassifier(**json.loads((folder / "config.json").read_text()))
    model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=True)
    return model.eval()


@torch.no_grad()
def class_consistency(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of images the classifier assigns to the class they were generated for."""
    pred = torch.cat([classifier(b).argmax(-1) for b in images.split(1024)])
    return float((pred == labels).float().mean())


def within_class_distance(images: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over classes of the mean pairwise L2 distance between images of the same class."""
    flat = images.flatten(1).double()
    dists = []
    for c in labels.unique():
        xc = flat[labels == c]
        if len(xc) < 2:
            continue
        d = torch.cdist(xc, xc)
        dists.append(d.sum() / (len(xc) * (len(xc) - 1)))  # off-diagonal mean
    if not dists:
        raise ValueError("need at least two images of some class to measure diversity")
    return float(torch.stack(dists).mean())


def diversity_ratio(samples: torch.Tensor, labels: torch.Tensor, real: torch.Tensor, real_labels: torch.Tensor) -> float:
    """Within-class mean pairwise distance of ``samples`` as a fraction of the real data's (1 = as diverse;
    blurry class means give 0)."""
    return within_class_distance(samples, labels) / within_class_distance(real, real_labels)


@torch.no_grad()
def sample_digits(model, labels: torch.Tensor, steps: int = 10, guidance: float = 1.0, *, shift: float = 1.0,
                  generator: torch.Generator | None = None, noise: torch.Tensor | None = None,
                  clamp: bool = True) -> torch.Tensor:
    """Euler rectified-flow samples (N, 1, 8, 8) in [-1, 1] for the given class ``labels``."""
    from .flow import euler_sample

    if noise is None:
        noise = torch.randn(len(labels), 1, 8, 8, generator=generator)
    x = euler_sample(velocity_fn(model, labels, guidance), noise, steps, shift=shift)
    return x.clamp(-1, 1) if clamp else x
