"""The CLIP lecture modules (course_utils.clip, course_utils.diffusionclip) on any device and dtype:
on the ``meta`` device (no data: a tensor made on the CPU by mistake fails there, the GPU path's
usual bug) and in bfloat16 on the CPU (compared with float64)."""
import pytest
import torch
import torch.nn.functional as F

from course_utils import clip, diffusionclip


def _inputs(device, dtype, n=8, d=16):
    gen = torch.Generator().manual_seed(0)
    img = F.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    txt = F.normalize(img + 0.5 * torch.randn(n, d, generator=gen, dtype=torch.float64), dim=-1)
    extra = F.normalize(torch.randn(2, d, generator=gen, dtype=torch.float64), dim=-1)
    pos = torch.eye(n, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    images = torch.randint(0, 256, (2, 3, 4, 4), generator=gen, dtype=torch.uint8)
    return [t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for t in (img, txt, extra, pos, images)]


def _run_all(img, txt, extra, pos, images):
    """Every public computation of the two modules, as a dict of tensors."""
    s = torch.tensor(clip.INIT_LOGIT_SCALE, device=img.device, dtype=img.dtype).exp()
    out = {"clip_loss": clip.clip_loss(img, txt, s),
           "clip_loss_multi_positive": clip.clip_loss_multi_positive(img, txt, s, pos),
           "logits_per_image": clip.clip_logits(img, txt, s)[0]}
    # zero-shot: 4 classes x 2 templates, the "text encoder" returns rows of txt
    classifier = clip.zero_shot_classifier(lambda texts: txt[: len(texts)], ["a", "b", "c", "d"], ("{}", "a {}"))
    out["zero_shot_classifier"] = classifier
    out["zero_shot_logits"] = clip.zero_shot_predict(img, classifier)[1]
    sim = img @ txt.T
    ids = torch.arange(img.shape[0], device=img.device) // 2
    for k, g in ((1, None), (2, 4)):
        i2t, t2i = clip.recall_at_k(sim, k, ids=ids, gallery_size=g)
        out[f"recall@{k}/{g}"] = torch.stack([i2t, t2i])
    out["normalize_images"] = clip.normalize_images(images, dtype=img.dtype)
    out["directional_clip_loss"] = diffusionclip.directional_clip_loss(img, txt, extra[:1], extra[1:])
    out["global_clip_loss"] = diffusionclip.global_clip_loss(img, extra[:1])
    return out


def test_everything_runs_on_the_meta_device():
    out = _run_all(*_inputs("meta", torch.float32))
    for name, t in out.items():
        assert t.device.type == "meta", name
    assert out["clip_loss"].shape == () and out["zero_shot_classifier"].shape == (16, 4)
    assert out["logits_per_image"].shape == (8, 8) and out["normalize_images"].shape == (2, 3, 4, 4)


def test_bfloat16_on_cpu_follows_float64():
    ref = _run_all(*_inputs("cpu", torch.float64))
    low = _run_all(*_inputs("cpu", torch.bfloat16))
    # the zero-shot weights are averaged in float32 from low-precision embeddings
    keep_fp32 = {"zero_shot_classifier", "zero_shot_logits"}
    for name, t in low.items():
        assert t.dtype == (torch.float32 if name in keep_fp32 else torch.bfloat16), (name, t.dtype)
        tol = 0.05 * max(1.0, ref[name].abs().max().item())
        if name.startswith("recall"):
            continue  # counts of argmax hits: bf16 rounding may flip a near tie
        assert torch.allclose(t.double(), ref[name], atol=tol, rtol=0), (name, (t.double() - ref[name]).abs().max())
    for name in ("recall@1/None", "recall@2/4"):
        assert ((low[name].double() - ref[name]).abs() <= 0.25).all(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    ref = _run_all(*_inputs("cpu", torch.float32))
    gpu = _run_all(*_inputs("cuda", torch.float32))
    for name, t in gpu.items():
        assert t.device.type == "cuda"
        assert torch.allclose(t.cpu(), ref[name], atol=1e-4), name
