"""RoPE-2D: rotary position embeddings for image patches (notebook 06, Pixtral).

A patch at row ``i`` and column ``j`` of the image is rotated by the lecture's block-diagonal matrix

    RoPE-2D(x^(i,j), Θ) = M_Θ^(i,j) x^(i,j),

whose 2x2 block k = 1 .. d/2 (dimensions ``2(k-1), 2(k-1)+1``) rotates by ``i·θ_k`` when k is odd and
by ``j·θ_k`` when k is even, with ``θ_k = theta^(-2(k-1)/d)``: the height and the width take turns
over the frequencies, from fast to slow. Three equal ways to compute it live here:

- ``rope2d_matrix(i, j, dim, theta)``: the matrix itself, exactly as on the slide;
- ``apply_rope2d(x, pos_h, pos_w, theta)``: the fast form (two multiplications and an add per pair);
- ``apply_rope2d_complex(x, pos_h, pos_w, theta)``: pair k as one complex number times ``e^{i angle}``
  (mistral-inference's ``apply_rotary_emb`` style, ``torch.view_as_complex`` on adjacent pairs).

``rope1d_matrix(m, dim, theta)`` is RoFormer's 1-D matrix ``R_{Θ,m}``; ``M_Θ^(m,m) = R_{Θ,m}``.
transformers' ``PixtralVisionRotaryEmbedding`` computes the same rotation in another layout (pairs
``(p, p + d/2)``, height frequencies first, ``rotate_half``); the fixed permutation between the two
is ``course_utils.bridges.transformers_pixtral.hf_to_lecture_permutation``. Every tensor made here
follows the device (``meta`` included) and dtype of its inputs.
"""
from __future__ import annotations

import torch

PIXTRAL_ROPE_THETA = 10_000.0  # Pixtral's vision encoder ("rope_theta" of its vision config)


def _check_dim(dim: int) -> None:
    if not isinstance(dim, int) or dim <= 0 or dim % 2:
        raise ValueError(f"RoPE rotates pairs of dimensions: dim must be a positive even int, got {dim!r}")


def rope_frequencies(dim: int, theta: float = PIXTRAL_ROPE_THETA, *, device=None,
                     dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(dim/2,)`` frequencies ``θ_k = theta^(-2(k-1)/dim)``, k = 1 .. dim/2 (index k-1 here)."""
    _check_dim(dim)
    if theta <= 0:
        raise ValueError(f"theta must be positive, got {theta}")
    # θ_k = theta^(-2(k-1)/d)
    return theta ** (-torch.arange(0, dim, 2, device=device, dtype=dtype) / dim)


def rope2d_angles(pos_h: torch.Tensor, pos_w: torch.Tensor, dim: int,
                  theta: float = PIXTRAL_ROPE_THETA) -> torch.Tensor:
    """Rotation angle of every pair: ``(..., dim/2)`` for positions of shape ``(...)``.

    Pair k (1-based) turns by ``i·θ_k`` if k is odd (index 0, 2, 4, ... here) and by ``j·θ_k`` if k is even.
    Angles are float32 (float64 if the positions are float64), like transformers computes them.
    """
    pos_h, pos_w = torch.as_tensor(pos_h), torch.as_tensor(pos_w)
    dtype = torch.float64 if pos_h.dtype == torch.float64 else torch.float32
    freqs = rope_frequencies(dim, theta, device=pos_h.device, dtype=dtype)              # (d/2,)
    odd_k = (torch.arange(dim // 2, device=pos_h.device) % 2) == 0                      # k = 1, 3, 5, ...
    # angle_k = i θ_k (k odd),  j θ_k (k even)
    pos = torch.where(odd_k, pos_h.to(dtype)[..., None], pos_w.to(dtype)[..., None])  # (..., d/2)
    return pos * freqs


def _block_diagonal(a: torch.Tensor) -> torch.Tensor:
    """``(d/2,)`` angles -> ``(d, d)`` matrix with the 2x2 rotation by ``a_k`` at rows/columns ``2k, 2k+1``."""
    d = 2 * a.shape[-1]
    m = torch.zeros(d, d, dtype=a.dtype, device=a.device)
    m[0::2, 0::2] = torch.diag(a.cos())
    m[1::2, 1::2] = torch.diag(a.cos())
    m[0::2, 1::2] = torch.diag(-a.sin())
    m[1::2, 0::2] = torch.diag(a.sin())
    return m


def rope2d_matrix(i, j, dim: int, theta: float = PIXTRAL_ROPE_THETA, *, dtype: torch.dtype = torch.float32,
                  device=None) -> torch.Tensor:
    """The lecture's ``M_Θ^(i,j)``: a ``(dim, dim)`` block-diagonal matrix of 2x2 rotations.

    Block k: ``[[cos a_k, -sin a_k], [sin a_k, cos a_k]]`` with ``a_k = i·θ_k`` (k odd), ``j·θ_k`` (k even).
    ``i``, ``j``: ints or 0-d tensors (their device is used when ``device`` is None).
    """
    if device is None and isinstance(i, torch.Tensor):
        device = i.device
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    pos_h = torch.as_tensor(i, dtype=compute, device=device)
    pos_w = torch.as_tensor(j, dtype=compute, device=device)
    if pos_h.dim() or pos_w.dim():
        raise ValueError("rope2d_matrix builds one matrix: i and j are scalars; use apply_rope2d for many positions")
    # M = diag(block_1, ..., block_{d/2}),  block_k = [[cos a_k, -sin a_k], [sin a_k, cos a_k]]
    return _block_diagonal(rope2d_angles(pos_h, pos_w, dim, theta)).to(dtype)


def rope1d_matrix(m, dim: int, theta: float = PIXTRAL_ROPE_THETA, *, dtype: torch.dtype = torch.float32,
                  device=None) -> torch.Tensor:
    """RoFormer's 1-D ``R_{Θ,m}``: pair k rotates by ``m·θ_k`` for every k; ``rope2d_matrix(m, m)`` is the same
    matrix (1-D RoPE is RoPE-2D with both coordinates equal to the token index)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    a = torch.as_tensor(m, dtype=compute, device=device) * rope_frequencies(dim, theta, device=device, dtype=compute)
    # R = diag(block_1, ..., block_{d/2}),  a_k = m θ_k
    return _block_diagonal(a).to(dtype)


def _positions_like(x: torch.Tensor, pos_h, pos_w):
    _check_dim(x.shape[-1])
    pos_h = torch.as_tensor(pos_h, device=x.device)
    pos_w = torch.as_tensor(pos_w, device=x.device)
    if pos_h.shape != pos_w.shape:
        raise ValueError(f"pos_h and pos_w must have the same shape, got {tuple(pos_h.shape)} and {tuple(pos_w.shape)}")
    return pos_h, pos_w


def apply_rope2d(x: torch.Tensor, pos_h, pos_w, theta: float = PIXTRAL_ROPE_THETA) -> torch.Tensor:
    """``M_Θ^(i,j) x`` for every vector, without building the matrix (the fast form).

    ``x``: ``(..., T, dim)``; ``pos_h``, ``pos_w``: ``(T,)`` row / column of each token (or any shape that
    broadcasts against ``x.shape[:-1]``). Angles in float32, applied in ``x``'s dtype.
    """
    pos_h, pos_w = _positions_like(x, pos_h, pos_w)
    a = rope2d_angles(pos_h, pos_w, x.shape[-1], theta)                # (T, d/2)
    cos, sin = a.cos().to(x.dtype), a.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]                                  # (..., T, d/2): the two halves of each pair
    # [x1'; x2'] = [[cos, -sin], [sin, cos]] [x1; x2]
    out = torch.stack([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)  # (..., T, d/2, 2)
    return out.flatten(-2)


def apply_rope2d_complex(x: torch.Tensor, pos_h, pos_w, theta: float = PIXTRAL_ROPE_THETA) -> torch.Tensor:
    """The same rotation with complex numbers: pair k is ``z_k = x_{2k} + i x_{2k+1}``, rotated as
    ``z_k · e^{i a_k}`` (``torch.view_as_complex`` on adjacent pairs, as mistral-inference does)."""
    pos_h, pos_w = _positions_like(x, pos_h, pos_w)
    a = rope2d_angles(pos_h, pos_w, x.shape[-1], theta)                   # (T, d/2)
    rot = torch.polar(torch.ones_like(a), a)                                # e^{i a_k}
    z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2).contiguous())  # (..., T, d/2)
    return torch.view_as_real(z * rot).flatten(-2).to(x.dtype)
