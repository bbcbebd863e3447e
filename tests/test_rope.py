"""RoPE-2D (course_utils.rope, notebook 06): the lecture's matrix, its properties, its fast and complex forms,
and the equivalence with transformers' PixtralVisionRotaryEmbedding up to the documented pair permutation."""
import math

import pytest
import torch

from course_utils import llama, rope
from course_utils.bridges.transformers_pixtral import hf_to_lecture_permutation

D = 16


def test_matrix_is_the_lectures_block_diagonal():
    """Block k (1-based) rotates by i θ_k for odd k and j θ_k for even k, θ_k = theta^(-2(k-1)/d); zeros elsewhere."""
    i, j, theta = 3, 5, 100.0
    m = rope.rope2d_matrix(i, j, D, theta, dtype=torch.float64)
    for k in range(1, D // 2 + 1):
        a = (i if k % 2 == 1 else j) * theta ** (-2 * (k - 1) / D)
        block = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
        r = 2 * (k - 1)
        torch.testing.assert_close(m[r:r + 2, r:r + 2], block, rtol=0, atol=1e-12)
        off = m[r:r + 2].clone()
        off[:, r:r + 2] = 0
        assert off.abs().max() == 0
    # the first block uses i, the second j
    assert m[0, 0] == pytest.approx(math.cos(i)) and m[2, 2] == pytest.approx(math.cos(j * theta ** (-2 / D)))


def test_fast_and_complex_forms_equal_the_matrix():
    x = torch.randn(2, 7, D, dtype=torch.float64)
    pos_h, pos_w = torch.randint(0, 40, (7,)), torch.randint(0, 40, (7,))
    fast = rope.apply_rope2d(x, pos_h, pos_w)
    slow = torch.stack([torch.stack([rope.rope2d_matrix(int(pos_h[t]), int(pos_w[t]), D, dtype=torch.float64) @ x[b, t]
                                     for t in range(7)]) for b in range(2)])
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-6)  # angles are float32, like transformers'
    torch.testing.assert_close(rope.apply_rope2d_complex(x.float(), pos_h, pos_w), fast.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("i,j", [(0, 0), (3, 7), (63, 1)])
def test_every_matrix_is_orthogonal(i, j):
    m = rope.rope2d_matrix(i, j, 64, dtype=torch.float64)
    torch.testing.assert_close(m.T @ m, torch.eye(64, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.linalg.det(m).item() == pytest.approx(1.0)


def test_scores_depend_only_on_the_relative_position():
    """<M(i,j) q, M(i',j') k> = q^T M(i'-i, j'-j) k: the same for every pair of positions with the same offset."""
    q, k = torch.randn(D, dtype=torch.float64), torch.randn(D, dtype=torch.float64)

    def score(i, j, i2, j2):
        return (rope.rope2d_matrix(i, j, D, dtype=torch.float64) @ q) @ (rope.rope2d_matrix(i2, j2, D, dtype=torch.float64) @ k)

    ref = q @ rope.rope2d_matrix(2, -3, D, dtype=torch.float64) @ k
    for i, j in [(0, 3), (5, 10), (17, 4)]:
        assert score(i, j, i + 2, j - 3).item() == pytest.approx(ref.item(), abs=1e-10)
    assert abs(score(0, 0, 2, -3).item() - score(0, 0, -3, 2).item()) > 1e-3  # rows and columns are told apart


def test_one_d_rope_is_the_one_axis_special_case():
    """M(m, m) is RoFormer's R_m; with the column fixed (one image column), only the height pairs turn."""
    for m in (0, 1, 9):
        torch.testing.assert_close(rope.rope2d_matrix(m, m, D, dtype=torch.float64),
                                   rope.rope1d_matrix(m, D, dtype=torch.float64), rtol=0, atol=1e-12)
    col = rope.rope2d_matrix(6, 0, D, dtype=torch.float64)
    torch.testing.assert_close(col[2::4, 2::4], torch.eye(D // 4, dtype=torch.float64))  # width pairs: identity
    torch.testing.assert_close(col[0::4, 0::4], rope.rope1d_matrix(6, D, dtype=torch.float64)[0::4, 0::4])
    # and the course Llama's rotate-half RoPE (notebook 04) is R_m in split-halves layout
    x = torch.randn(1, 1, 5, D)
    pos = torch.arange(5)
    half = torch.tensor([p for k in range(D // 2) for p in (k, k + D // 2)])  # interleaved <- split halves
    cos, sin = llama.rope_cos_sin(pos, D, theta=rope.PIXTRAL_ROPE_THETA)
    torch.testing.assert_close(llama.apply_rope(x, cos, sin)[..., half], rope.apply_rope2d(x[..., half], pos, pos),
                               rtol=0, atol=1e-5)


def test_equivalence_with_transformers_pixtral_rotary_embedding():
    """transformers rotates split halves with height on the even-index frequencies: after the documented
    permutation the rotated vectors, hence the attention scores, are the lecture's."""
    from transformers import PixtralVisionConfig
    from transformers.models.pixtral.modeling_pixtral import PixtralVisionRotaryEmbedding, apply_rotary_pos_emb

    head_dim = 64
    cfg = PixtralVisionConfig(hidden_size=4 * head_dim, num_attention_heads=4)
    emb = PixtralVisionRotaryEmbedding(cfg)
    perm = hf_to_lecture_permutation(head_dim)
    assert hf_to_lecture_permutation(16).tolist() == [0, 8, 4, 12, 1, 9, 5, 13, 2, 10, 6, 14, 3, 11, 7, 15]
    h, w = torch.meshgrid(torch.arange(5), torch.arange(7), indexing="ij")
    pos = torch.stack([h.flatten(), w.flatten()], -1)                      # (35, 2)
    q, k = torch.randn(1, 2, 35, head_dim), torch.randn(1, 2, 35, head_dim)
    cos, sin = emb(q, pos)
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=0)
    q_ours = rope.apply_rope2d(q[..., perm], pos[:, 0], pos[:, 1])
    k_ours = rope.apply_rope2d(k[..., perm], pos[:, 0], pos[:, 1])
    torch.testing.assert_close(q_ours, q_hf[..., perm], rtol=0, atol=1e-5)
    torch.testing.assert_close(q_ours @ k_ours.transpose(-1, -2), q_hf @ k_hf.transpose(-1, -2), rtol=1e-5, atol=1e-5)
    q_c = rope.apply_rope2d_complex(q[..., perm], pos[:, 0], pos[:, 1])
    k_c = rope.apply_rope2d_complex(k[..., perm], pos[:, 0], pos[:, 1])
    torch.testing.assert_close(q_c @ k_c.transpose(-1, -2), q_hf @ k_hf.transpose(-1, -2), rtol=1e-5, atol=1e-5)
    # without the permutation the two layouts disagree
    assert (rope.apply_rope2d(q, pos[:, 0], pos[:, 1]) - q_hf).abs().max() > 1e-2


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        rope.rope2d_matrix(1, 2, 15)
    with pytest.raises(ValueError, match="even"):
        rope.apply_rope2d(torch.randn(3, 7), torch.zeros(3), torch.zeros(3))
    with pytest.raises(ValueError, match="same shape"):
        rope.apply_rope2d(torch.randn(3, 8), torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="scalars"):
        rope.rope2d_matrix(torch.arange(2), 0, 8)
    with pytest.raises(ValueError, match="multiple of 4"):
        hf_to_lecture_permutation(6)


@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_runs_on_meta_and_in_bfloat16(device, dtype):
    x = torch.randn(2, 4, 9, D, dtype=dtype, device=device)
    pos_h, pos_w = torch.arange(9, device=device) // 3, torch.arange(9, device=device) % 3
    for f in (rope.apply_rope2d, rope.apply_rope2d_complex):
        out = f(x, pos_h, pos_w)
        assert out.shape == x.shape and out.dtype == dtype and out.device.type == device
    m = rope.rope2d_matrix(torch.tensor(2, device=device), 3, D, dtype=dtype)
    assert m.shape == (D, D) and m.device.type == device and m.dtype == dtype
    if device == "cpu":
        ref = rope.apply_rope2d(x.float(), pos_h, pos_w)
        torch.testing.assert_close(rope.apply_rope2d(x, pos_h, pos_w).float(), ref, rtol=0, atol=0.05)
