"""course_utils.diffusionclip (notebooks 01 and 13): the DiffusionCLIP losses in closed form and
against the lecture's formula written out per sample."""
import pytest
import torch
import torch.nn.functional as F

from course_utils import diffusionclip


@pytest.mark.parametrize("fn,args", [
    (diffusionclip.global_clip_loss, (torch.randn(4, 8), torch.randn(4, 6))),
    (diffusionclip.global_clip_loss, (torch.randn(4, 8), torch.randn(3, 8))),
    (diffusionclip.directional_clip_loss, (torch.randn(4, 8), torch.randn(3, 8), torch.randn(1, 8), torch.randn(1, 8))),
    (diffusionclip.directional_clip_loss, (torch.randn(4, 8), torch.randn(4, 8), torch.randn(1, 8), torch.randn(1, 9))),
])
def test_mismatched_shapes_raise_naming_both(fn, args):
    with pytest.raises(ValueError) as err:
        fn(*args)
    msg = str(err.value)
    shapes_in_msg = [str(tuple(a.shape)) for a in args]
    assert sum(s in msg for s in set(shapes_in_msg)) >= 2, msg


def test_directional_loss_closed_form():
    ref_i, ref_t = torch.randn(3, 4), torch.randn(1, 4)
    d = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # dI parallel to dT: 0; opposite: 2; orthogonal: 1
    assert abs(diffusionclip.directional_clip_loss(ref_i + 2 * d, ref_i, ref_t + d, ref_t).item()) < 1e-6
    assert abs(diffusionclip.directional_clip_loss(ref_i - d, ref_i, ref_t + d, ref_t).item() - 2) < 1e-6
    ortho = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert abs(diffusionclip.directional_clip_loss(ref_i + ortho, ref_i, ref_t + d, ref_t).item() - 1) < 1e-6


def test_directional_loss_is_the_batch_mean_of_the_lecture_formula():
    g, r, tt, tr = (torch.randn(5, 8, dtype=torch.float64) for _ in range(4))
    di, dt = g - r, tt - tr
    expected = torch.stack([1 - di[k] @ dt[k] / (di[k].norm() * dt[k].norm()) for k in range(5)]).mean()
    assert torch.allclose(diffusionclip.directional_clip_loss(g, r, tt, tr), expected, atol=1e-12)


def test_global_loss_closed_form():
    x = torch.randn(4, 8, dtype=torch.float64)
    assert diffusionclip.global_clip_loss(x, 3 * x).abs().item() < 1e-12
    assert abs(diffusionclip.global_clip_loss(x, -x).item() - 2) < 1e-12
    t = torch.randn(1, 8, dtype=torch.float64)
    expected = (1 - F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T).mean()
    assert torch.allclose(diffusionclip.global_clip_loss(x, t), expected, atol=1e-12)
