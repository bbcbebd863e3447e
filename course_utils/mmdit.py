"""MM-DiT, the multimodal diffusion transformer of Stable Diffusion 3 (notebook 11).

Names follow Stability AI's reference code (``sd3.5/mmditx.py``): an MM-DiT block (``JointBlock``)
is two ``DismantledBlock`` s, one per modality -- ``x_block`` for the image tokens and
``context_block`` for the text tokens -- each with its own adaLN-Zero modulation (``adaLN_modulation``),
its own ``qkv`` projection, RMS QK-norm (``ln_q`` / ``ln_k``), output projection (``proj``) and MLP;
the two streams meet in **one** attention over the concatenated sequence (``joint_attention``).
The last block is ``pre_only`` on the text side (diffusers' ``context_pre_only``): its text tokens are
only keys and values, so that half has no output projection, no MLP and a 2-vector modulation.
MMDiT-X (SD3.5 Medium, notebook 12): the image half of the ``x_block_self_attn_layers`` adds ``attn2``, an
attention over the image tokens only, with 3 more adaLN vectors (diffusers' ``dual_attention_layers``).

``MMDiT`` is the whole transformer: ``x_embedder`` (patches) + the 2-D sin-cos positions cropped
from a ``pos_embed_max_size`` grid, ``t_embedder`` (timestep) + ``y_embedder`` (pooled text) = the
conditioning vector ``c``, ``context_embedder`` (text tokens -> hidden size), the joint blocks,
``final_layer`` (adaLN + linear) and ``unpatchify``.

``combine_text_embeddings`` lays out the three text encoders as SD3 does (CLIP-L + OpenCLIP bigG + T5).

diffusers' names (``JointTransformerBlock``, ``SD3Transformer2DModel``; the weight mapping is
``course_utils.bridges.diffusers_sd3``): ``norm1`` / ``norm1_context`` = the two modulations,
``to_q/k/v`` / ``add_q/k/v_proj`` = the two ``qkv``, ``norm_q/k`` / ``norm_added_q/k`` = the QK-norms,
``to_out`` / ``to_add_out`` = the two ``proj``, ``ff`` / ``ff_context`` = the two MLPs; ``attn2`` keeps its name.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .dit import FinalLayer, Mlp, TimestepEmbedder, modulate
from .llama import RMSNorm

__all__ = ["get_2d_sincos_pos_embed", "cropped_pos_embed", "unpatchify", "SelfAttention", "DismantledBlock",
           "joint_attention", "JointBlock", "MMDiTBlock", "PatchEmbed", "VectorEmbedder", "MMDiT",
           "combine_text_embeddings", "sd3_config"]


# ---- Positions and patches -------------------------------------------------------------------


def get_2d_sincos_pos_embed(embed_dim: int, grid_size: int, base_size: int | None = None,
                            device: torch.device | str | None = None) -> torch.Tensor:
    """(grid_size**2, D) fixed 2-D sin-cos positions on a grid_size x grid_size grid (row-major), float32.

    As diffusers' ``get_2d_sincos_pos_embed``: position i of each axis is ``i * base_size / grid_size``
    (computed in float32), so a ``pos_embed_max_size`` grid covers the same range as the training
    resolution's ``base_size = sample_size // patch_size`` patches; the first D/2 channels encode the
    column, the last D/2 the row (``base_size=None``: the plain DiT grid, positions 0..grid_size-1).
    Made on ``device`` (default: torch's current default device, so ``torch.device("meta")`` costs nothing).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim must be divisible by 4 for 2-D sin-cos positions, got {embed_dim}")
    base = grid_size if base_size is None else base_size
    # pos_i = i / (grid_size / base_size), in float32 as diffusers computes it
    pos = torch.arange(grid_size, dtype=torch.float32, device=device) / (grid_size / base)
    wide = torch.float32 if pos.device.type == "mps" else torch.float64  # MPS has no float64
    # omega_k = 1 / 10000^(2k / (D/2)), k = 0 .. D/4 - 1 (each axis gets D/2 channels: D/4 sines, D/4 cosines)
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=wide, device=pos.device) / (embed_dim / 4))
    rows, cols = torch.meshgrid(pos, pos, indexing="ij")  # (grid, grid) each

    def sincos(p: torch.Tensor) -> torch.Tensor:  # (T,) -> (T, D/2) = [sin(p * omega), cos(p * omega)]
        out = torch.outer(p.reshape(-1).to(wide), omega)
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([sincos(cols), sincos(rows)], dim=1).float()  # (T, D): column first, then row


def cropped_pos_embed(pos_embed: torch.Tensor, pos_embed_max_size: int, h: int, w: int) -> torch.Tensor:
    """(1, M*M, D) positions of the M x M grid -> (1, h*w, D): the centred h x w window (SD3's cropping)."""
    if h > pos_embed_max_size or w > pos_embed_max_size:
        raise ValueError(f"a {h}x{w} grid of patches does not fit pos_embed_max_size={pos_embed_max_size}: "
                         "use a smaller image or a larger pos_embed_max_size")
    top, left = (pos_embed_max_size - h) // 2, (pos_embed_max_size - w) // 2
    grid = pos_embed.reshape(1, pos_embed_max_size, pos_embed_max_size, -1)
    return grid[:, top:top + h, left:left + w, :].reshape(1, h * w, -1)


def unpatchify(x: torch.Tensor, p: int, c: int, h: int, w: int) -> torch.Tensor:
    """(N, h*w, p*p*c) tokens -> (N, c, h*p, w*p) image (h x w patches, possibly not square)."""
    if x.ndim != 3 or x.shape[1] != h * w or x.shape[2] != p * p * c:
        raise ValueError(f"unpatchify expects (N, {h * w}, {p * p * c}), got {tuple(x.shape)}")
    x = x.reshape(x.shape[0], h, w, p, p, c)
    x = torch.einsum("nhwpqc->nchpwq", x)
    return x.reshape(x.shape[0], c, h * p, w * p)


# ---- One modality's half of a block ----------------------------------------------------------


class SelfAttention(nn.Module):
    """The projections of one modality: ``qkv`` (D -> 3D), per-head QK-norm ``ln_q`` / ``ln_k``
    (RMSNorm over the head dimension with ``qk_norm="rms_norm"``, as SD3.5), and the output ``proj``
    (absent when ``pre_only``). The attention itself is ``joint_attention``, shared by both modalities."""

    def __init__(self, dim: int, num_heads: int, qk_norm: str | None = "rms_norm", pre_only: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} must be divisible by num_heads {num_heads}")
        if qk_norm not in (None, "rms_norm"):
            raise ValueError(f"qk_norm must be None or 'rms_norm', got {qk_norm!r}")
        self.num_heads, self.head_dim, self.pre_only, self.qk_norm = num_heads, dim // num_heads, pre_only, qk_norm
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        norm = (lambda: RMSNorm(self.head_dim, eps=1e-6)) if qk_norm == "rms_norm" else nn.Identity
        self.ln_q, self.ln_k = norm(), norm()
        self.proj = None if pre_only else nn.Linear(dim, dim)

    def pre_attention(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(N, T, D) -> q, k, v, each (N, heads, T, D/heads), with q and k normalised per head."""
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        # QK-norm: q <- g_q * q / rms(q), k <- g_k * k / rms(k), per head (keeps the logits q.k bounded)
        return self.ln_q(q), self.ln_k(k), v


def joint_attention(q: list[torch.Tensor], k: list[torch.Tensor], v: list[torch.Tensor]) -> list[torch.Tensor]:
    """ONE attention over the concatenated modalities: q[i], k[i], v[i] (N, heads, T_i, d) per modality
    -> one output (N, T_i, heads*d) per modality. diffusers concatenates [image, text]; Stability's
    ``block_mixing`` [text, image]: attention without a mask is permutation-equivariant, so both agree."""
    lengths = [x.shape[2] for x in q]
    q, k, v = torch.cat(q, dim=2), torch.cat(k, dim=2), torch.cat(v, dim=2)  # (N, heads, sum T_i, d)
    # softmax(q k^T / sqrt(d)) v over all tokens of all modalities: every token sees every other
    out = F.scaled_dot_product_attention(q, k, v)
    n, h, t, d = out.shape
    out = out.transpose(1, 2).reshape(n, t, h * d)  # (N, sum T_i, D)
    return list(out.split(lengths, dim=1))


class DismantledBlock(nn.Module):
    """One modality's half of an MM-DiT block (Stability's name): its own adaLN-Zero, ``attn``
    projections, ``norm2`` and ``mlp``. ``pre_only`` (the text side of the last block): only the
    keys/values are needed, so 2 modulation vectors (shift, scale) and no ``proj`` / ``mlp``. ``x_block_self_attn``
    (MMDiT-X): ``attn2`` over this modality's tokens only and 9 vectors, (shift, scale, gate) x (msa, mlp, msa2)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, pre_only: bool = False,
                 qk_norm: str | None = "rms_norm", x_block_self_attn: bool = False):
        super().__init__()
        if pre_only and x_block_self_attn:
            raise ValueError("x_block_self_attn (attn2) is for the image half, never pre_only (the last text half)")
        self.pre_only, self.x_block_self_attn = pre_only, x_block_self_attn
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(hidden_size, num_heads, qk_norm=qk_norm, pre_only=pre_only)
        self.attn2 = SelfAttention(hidden_size, num_heads, qk_norm=qk_norm) if x_block_self_attn else None
        if not pre_only:
            self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
            self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.n_mods = 2 if pre_only else 9 if x_block_self_attn else 6
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, self.n_mods * hidden_size, bias=True))
        # adaLN-Zero: the modulation starts at zero, so gates are 0 and the block starts as the identity
        nn.init.zeros_(self.adaLN_modulation[-1].weight)
        nn.init.zeros_(self.adaLN_modulation[-1].bias)

    def pre_attention(self, x: torch.Tensor, c: torch.Tensor):
        """x (N, T, D), c (N, D) -> (q, k, v) and what ``post_attention`` needs (gates, MLP modulation)."""
        shift_msa, scale_msa, *rest = self.adaLN_modulation(c).chunk(self.n_mods, dim=1)  # 2, 6 or 9 x (N, D)
        x_norm = self.norm1(x)
        # gamma_1 * LN(x) + beta_1   (gamma = 1 + scale, beta = shift), with this modality's own vectors
        qkv = self.attn.pre_attention(modulate(x_norm, shift_msa, scale_msa))
        if self.pre_only:
            return qkv, None
        gate_msa, shift_mlp, scale_mlp, gate_mlp, *msa2 = rest  # msa2: attn2's shift, scale, gate (MMDiT-X)
        # attn2's input: gamma_3 * LN(x) + beta_3, the same LN(x) with attn2's own vectors
        extra = (self.attn2.pre_attention(modulate(x_norm, msa2[0], msa2[1])), msa2[2]) if msa2 else ()
        return qkv, (x, gate_msa, shift_mlp, scale_mlp, gate_mlp, *extra)

    def post_attention(self, attn: torch.Tensor, intermediates) -> torch.Tensor:
        """attn (N, T, D) = this modality's rows of the joint attention -> the block's output (N, T, D)."""
        if self.pre_only:
            raise RuntimeError("a pre_only block has no post-attention part (its tokens end here)")
        x, gate_msa, shift_mlp, scale_mlp, gate_mlp, *second = intermediates
        # x <- x + alpha_1 * proj(attn)
        x = x + gate_msa.unsqueeze(1) * self.attn.proj(attn)
        if self.x_block_self_attn:  # attn2 = softmax(q2 k2^T / sqrt(d)) v2 over this modality's tokens only
            (q2, k2, v2), gate_msa2 = second
            # x <- x + alpha_3 * proj2(attn2)   (alpha_3 = gate_msa2; attn2 read LN(x) of the block's input x)
            x = x + gate_msa2.unsqueeze(1) * self.attn2.proj(joint_attention([q2], [k2], [v2])[0])
        # x <- x + alpha_2 * MLP(gamma_2 * LN(x) + beta_2)
        x = x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class JointBlock(nn.Module):
    """An MM-DiT block (notebook 11), called as ``block(x, context, c)`` -> ``(x, context)``.

    x (N, T_x, D) image tokens, context (N, T_c, D) text tokens, c (N, D) conditioning (timestep +
    pooled text). Separate weights per modality, one joint attention. With ``pre_only=True`` (the last
    block) the returned context is ``None``, as in diffusers. ``x_block_self_attn``: MMDiT-X (notebook 12).
    """

    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, pre_only: bool = False,
                 qk_norm: str | None = "rms_norm", x_block_self_attn: bool = False):
        super().__init__()
        self.context_block = DismantledBlock(hidden_size, num_heads, mlp_ratio, pre_only=pre_only, qk_norm=qk_norm)
        self.x_block = DismantledBlock(hidden_size, num_heads, mlp_ratio, qk_norm=qk_norm,
                                       x_block_self_attn=x_block_self_attn)

    def forward(self, x: torch.Tensor, context: torch.Tensor, c: torch.Tensor):
        if x.ndim != 3 or context.ndim != 3 or c.ndim != 2:
            raise ValueError(f"expected x (N, T_x, D), context (N, T_c, D), c (N, D); got {tuple(x.shape)}, "
                             f"{tuple(context.shape)}, {tuple(c.shape)}")
        if not x.shape[0] == context.shape[0] == c.shape[0]:
            raise ValueError(f"batch sizes differ: x {x.shape[0]}, context {context.shape[0]}, c {c.shape[0]}")
        (qx, kx, vx), x_inter = self.x_block.pre_attention(x, c)
        (qc, kc, vc), c_inter = self.context_block.pre_attention(context, c)
        # one attention over [image; text] (diffusers' order), split back per modality
        x_attn, c_attn = joint_attention([qx, qc], [kx, kc], [vx, vc])
        x = self.x_block.post_attention(x_attn, x_inter)
        context = None if self.context_block.pre_only else self.context_block.post_attention(c_attn, c_inter)
        return x, context


MMDiTBlock = JointBlock


# ---- Embedders and the whole transformer -----------------------------------------------------


class PatchEmbed(nn.Module):
    """Conv2d(kernel = stride = p): (N, C, H, W) -> (N, (H/p)(W/p), D), rows of patches in order."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-2] % self.patch_size or x.shape[-1] % self.patch_size:
            raise ValueError(f"expected (N, C, H, W) with H, W divisible by {self.patch_size}, got {tuple(x.shape)}")
        return self.proj(x).flatten(2).transpose(1, 2)


class VectorEmbedder(nn.Module):
    """The pooled text vector (N, pooled_dim) -> (N, D): Linear-SiLU-Linear (diffusers' ``text_embedder``)."""

    def __init__(self, input_dim: int, hidden_size: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(input_dim, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=True))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.mlp(y)


class MMDiT(nn.Module):
    """The MM-DiT of Stable Diffusion 3 (notebook 11), ``forward(x, t, context, y)``:

    x (N, C, H, W) noisy latents, t (N,) timesteps (the value fed to the sinusoidal embedding: 1000 * sigma
    in SD3), context (N, T_c, joint_attention_dim) text tokens (``combine_text_embeddings``), y (N,
    pooled_projection_dim) pooled text. Output (N, out_channels, H, W): the velocity.

    Defaults: SD3 Medium's shape (depth 24, hidden = 64 * depth); ``sd3_config(depth)`` gives the family.
    """

    def __init__(self, sample_size: int = 128, patch_size: int = 2, in_channels: int = 16, depth: int = 24,
                 num_heads: int | None = None, head_dim: int = 64, joint_attention_dim: int = 4096,
                 pooled_projection_dim: int = 2048, out_channels: int | None = None, pos_embed_max_size: int = 192,
                 qk_norm: str | None = None, mlp_ratio: float = 4.0, x_block_self_attn_layers=()):
        super().__init__()
        if any(not 0 <= i < depth for i in x_block_self_attn_layers):  # MMDiT-X blocks (SD3.5 Medium: 0..12)
            raise ValueError(f"x_block_self_attn_layers {x_block_self_attn_layers} must be in 0..{depth - 1}")
        num_heads = depth if num_heads is None else num_heads
        hidden_size = num_heads * head_dim
        out_channels = in_channels if out_channels is None else out_channels
        if sample_size % patch_size:
            raise ValueError(f"sample_size {sample_size} must be divisible by patch_size {patch_size}")
        if sample_size // patch_size > pos_embed_max_size:
            raise ValueError(f"sample_size // patch_size = {sample_size // patch_size} exceeds "
                             f"pos_embed_max_size {pos_embed_max_size}")
        self.config = dict(sample_size=sample_size, patch_size=patch_size, in_channels=in_channels, depth=depth,
                           num_heads=num_heads, head_dim=head_dim, joint_attention_dim=joint_attention_dim,
                           pooled_projection_dim=pooled_projection_dim, out_channels=out_channels,
                           pos_embed_max_size=pos_embed_max_size, qk_norm=qk_norm, mlp_ratio=mlp_ratio,
                           x_block_self_attn_layers=tuple(sorted(set(x_block_self_attn_layers))))
        self.patch_size, self.out_channels, self.pos_embed_max_size = patch_size, out_channels, pos_embed_max_size
        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)  # [cos, sin] of 256 frequencies, then an MLP
        self.y_embedder = VectorEmbedder(pooled_projection_dim, hidden_size)
        self.context_embedder = nn.Linear(joint_attention_dim, hidden_size)
        pos = get_2d_sincos_pos_embed(hidden_size, pos_embed_max_size, base_size=sample_size // patch_size)
        self.register_buffer("pos_embed", pos.unsqueeze(0))  # (1, M*M, D), fixed
        self.joint_blocks = nn.ModuleList([
            JointBlock(hidden_size, num_heads, mlp_ratio, pre_only=i == depth - 1, qk_norm=qk_norm,
                       x_block_self_attn=i in x_block_self_attn_layers)
            for i in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, out_channels)

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if t.ndim != 1 or not x.shape[0] == t.shape[0] == context.shape[0] == y.shape[0]:
            raise ValueError(f"batch sizes differ or t is not (N,): x {tuple(x.shape)}, t {tuple(t.shape)}, "
                             f"context {tuple(context.shape)}, y {tuple(y.shape)}")
        p = self.patch_size
        h, w = x.shape[-2] // p, x.shape[-1] // p
        # tokens = patches + the centred h x w window of the fixed positions
        x = self.x_embedder(x) + cropped_pos_embed(self.pos_embed, self.pos_embed_max_size, h, w).to(x.dtype)
        # c = t_emb + y_emb: the conditioning vector that modulates both streams of every block
        c = self.t_embedder(t) + self.y_embedder(y)  # (N, D)
        context = self.context_embedder(context)  # (N, T_c, D)
        for block in self.joint_blocks:
            x, context = block(x, context, c)
        x = self.final_layer(x, c)  # (N, h*w, p*p*out_channels)
        return unpatchify(x, p, self.out_channels, h, w)


def sd3_config(depth: int, **overrides) -> dict:
    """``MMDiT`` arguments of the SD3 family: hidden = 64 * depth, heads = depth (diffusers'
    ``convert_sd3_to_diffusers.py``); SD3 Medium is depth 24, SD3.5 Large depth 38 with RMS QK-norm."""
    cfg = dict(depth=depth, num_heads=depth, head_dim=64, sample_size=128, patch_size=2, in_channels=16,
               joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=192)
    cfg.update(overrides)
    return cfg


# ---- The three text encoders' layout ---------------------------------------------------------


def combine_text_embeddings(clip_l: torch.Tensor, clip_g: torch.Tensor, t5: torch.Tensor | None,
                            pooled_l: torch.Tensor, pooled_g: torch.Tensor, *, max_sequence_length: int = 256,
                            joint_attention_dim: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """SD3's text conditioning from its three encoders -> ``(prompt_embeds, pooled_prompt_embeds)``.

    clip_l (N, 77, 768) and clip_g (N, 77, 1280): the penultimate hidden states of CLIP-L and OpenCLIP
    bigG; t5 (N, S, 4096) T5-XXL's last hidden states or ``None`` (T5 dropped); pooled_l (N, 768) and
    pooled_g (N, 1280) the CLIPs' projected pooled outputs. As ``StableDiffusion3Pipeline.encode_prompt``:

    - pooled = [pooled_l, pooled_g] on the feature axis: 768 + 1280 = 2048;
    - clip = [clip_l, clip_g] on the feature axis (77 x 2048), zero-padded on the feature axis to T5's width
      (4096), then followed by the T5 tokens on the sequence axis: 77 + 256 = 333 tokens of 4096;
    - ``t5=None``: zeros of shape (N, max_sequence_length, joint_attention_dim) in T5's place, as the
      installed diffusers does (333 tokens by default; ``max_sequence_length=77`` gives the 154 of older
      diffusers). ``joint_attention_dim`` defaults to 4096 then, and must equal T5's width otherwise.
    """
    named = dict(clip_l=clip_l, clip_g=clip_g, pooled_l=pooled_l, pooled_g=pooled_g)
    for name, ndim in (("clip_l", 3), ("clip_g", 3), ("pooled_l", 2), ("pooled_g", 2)):
        if named[name].ndim != ndim:
            raise ValueError(f"{name} must have {ndim} dims ({'(N, T, D)' if ndim == 3 else '(N, D)'}), "
                             f"got shape {tuple(named[name].shape)}")
    if t5 is not None and t5.ndim != 3:
        raise ValueError(f"t5 must be (N, S, D) or None, got shape {tuple(t5.shape)}")
    batch = {name: v.shape[0] for name, v in {**named, "t5": t5}.items() if v is not None}
    if len(set(batch.values())) != 1:
        raise ValueError(f"all inputs need the same batch size, got {batch}")
    if clip_l.shape[1] != clip_g.shape[1]:
        raise ValueError(f"the two CLIP sequences must have the same length (77 in SD3), got "
                         f"{clip_l.shape[1]} and {clip_g.shape[1]}")
    if t5 is not None and joint_attention_dim is not None and joint_attention_dim != t5.shape[-1]:
        raise ValueError(f"joint_attention_dim={joint_attention_dim} differs from T5's width {t5.shape[-1]}")
    width = t5.shape[-1] if t5 is not None else 4096 if joint_attention_dim is None else joint_attention_dim
    clip = torch.cat([clip_l, clip_g], dim=-1)  # (N, 77, 768 + 1280 = 2048)
    if clip.shape[-1] > width:
        raise ValueError(f"the CLIP features ({clip_l.shape[-1]} + {clip_g.shape[-1]} = {clip.shape[-1]}) are "
                         f"wider than T5's {width}: they are zero-padded up to it, never cut")
    # zero-pad the features: (N, 77, 2048) -> (N, 77, 4096)
    clip = F.pad(clip, (0, width - clip.shape[-1]))
    if t5 is None:
        t5 = torch.zeros(clip.shape[0], max_sequence_length, width, device=clip.device, dtype=clip.dtype)
    # one sequence: the 77 CLIP tokens, then the T5 tokens -> (N, 77 + S, 4096)
    prompt_embeds = torch.cat([clip, t5], dim=-2)
    # Cvec: (N, 768 + 1280 = 2048)
    pooled = torch.cat([pooled_l, pooled_g], dim=-1)
    return prompt_embeds, pooled
