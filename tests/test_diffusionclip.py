"""course_utils.diffusionclip (notebooks 01 and 13): the DiffusionCLIP losses in closed form and
against the lecture's formula written out per sample; the text direction, the ODE inversion / generation
on a Gaussian flow whose velocity is known in closed form, latent editing and generator fine-tuning on a
toy encoder, and the text direction of the course CLIP against its image differences."""
import pytest
import torch
import torch.nn.functional as F

from course_utils import clip, diffusionclip, flow


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


# ---- a Gaussian flow: the exact rectified-flow velocity in closed form ----------------------------------
# Data x0 ~ N(mu, s^2 I), noise ~ N(0, I), x_t = (1 - t) x0 + t noise ~ N((1 - t) mu, sigma_t^2 I) with
# sigma_t^2 = (1 - t)^2 s^2 + t^2. Gaussian conditioning (Cov(x0, x_t) = (1 - t) s^2, Cov(noise, x_t) = t):
#   E[x0 | x_t = x]    = mu + (1 - t) s^2 / sigma_t^2 (x - (1 - t) mu)
#   E[noise | x_t = x] = t / sigma_t^2 (x - (1 - t) mu)
#   v(x, t) = E[noise - x0 | x_t = x] = (t - (1 - t) s^2) / sigma_t^2 (x - (1 - t) mu) - mu   (linear in x)
# and the ODE's exact flow map from t = 0 is x_t = (1 - t) mu + sigma_t / s (x0 - mu).
MU = torch.linspace(-0.5, 0.5, 48, dtype=torch.float64).reshape(1, 3, 4, 4)
S = 0.5


def gaussian_velocity(x, t, mu=MU, s=S):
    t = t.reshape(-1, *([1] * (x.ndim - 1)))  # (N, 1, 1, 1)
    var = (1 - t) ** 2 * s ** 2 + t ** 2
    return (t - (1 - t) * s ** 2) / var * (x - (1 - t) * mu.to(x)) - mu.to(x)


def gaussian_flow_map(x0, t, mu=MU, s=S):
    return (1 - t) * mu + ((1 - t) ** 2 * s ** 2 + t ** 2) ** 0.5 / s * (x0 - mu)


def gaussian_images(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return MU + S * torch.randn(n, 3, 4, 4, generator=g, dtype=torch.float64)


def test_closed_form_velocity_is_the_conditional_mean():
    # Monte Carlo: regress noise - x0 on x_t at one t; the least-squares slope matches the formula
    g = torch.Generator().manual_seed(1)
    x0 = 0.3 + S * torch.randn(200_000, dtype=torch.float64, generator=g)
    noise = torch.randn(200_000, dtype=torch.float64, generator=g)
    t = 0.3
    xt, target = (1 - t) * x0 + t * noise, noise - x0
    slope = ((xt - xt.mean()) * (target - target.mean())).mean() / xt.var()
    var = (1 - t) ** 2 * S ** 2 + t ** 2
    assert abs(slope.item() - (t - (1 - t) * S ** 2) / var) < 0.01
    mu = torch.full((1, 1), 0.3, dtype=torch.float64)
    v = gaussian_velocity(xt[:, None], torch.full((200_000,), t, dtype=torch.float64), mu=mu)[:, 0]
    assert ((v - target) ** 2).mean() < ((v + 0.05 - target) ** 2).mean()  # v is the L2-best predictor


def test_time_grid():
    assert torch.allclose(diffusionclip.time_grid(4), flow.sampling_times(4))
    assert torch.allclose(diffusionclip.time_grid(4, 0.4), torch.tensor([0.4, 0.3, 0.2, 0.1, 0.0]))


@pytest.mark.parametrize("t_end", [1.0, 0.5])
def test_invert_then_generate_round_trip_converges(t_end):
    x0 = gaussian_images()
    inv_err, trip_err = [], []
    for steps in (10, 20, 40, 80):
        x_t = diffusionclip.invert(gaussian_velocity, x0, steps, t_end=t_end)
        back = diffusionclip.generate(gaussian_velocity, x_t, steps, t_start=t_end)
        inv_err.append((x_t - gaussian_flow_map(x0, t_end)).abs().max().item())
        trip_err.append((back - x0).abs().max().item())
    # Euler is first order: doubling the steps halves both errors (measured: t_end = 1 round trip
    # 0.41, 0.22, 0.11, 0.057; t_end = 0.5: 0.18, 0.095, 0.048, 0.024)
    for errs in (inv_err, trip_err):
        ratios = [a / b for a, b in zip(errs[:-1], errs[1:])]
        assert all(1.8 < r < 2.2 for r in ratios), (errs, ratios)
    assert trip_err[-1] < 0.06 * t_end + 0.001, trip_err
    assert trip_err[-1] < 0.2 * (x0 - MU).abs().max().item()


def test_generate_from_noise_is_flow_euler_sample_and_keeps_gradients():
    noise = torch.randn(3, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    ours = diffusionclip.generate(gaussian_velocity, noise, 7)
    assert ours.requires_grad
    with torch.no_grad():
        assert torch.allclose(ours, flow.euler_sample(gaussian_velocity, noise, 7), atol=1e-12)
    x, traj = diffusionclip.invert(gaussian_velocity, gaussian_images(3), 5, t_end=0.4, return_trajectory=True)
    assert traj.shape == (6, 3, 3, 4, 4) and torch.equal(traj[-1], x) and not x.requires_grad


@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_invert_generate_follow_device_and_dtype(device, dtype):
    x = torch.zeros(2, 3, 4, 4, device=device, dtype=dtype)
    velocity = lambda x, t: -x + t.reshape(-1, 1, 1, 1)  # noqa: E731
    for out in (diffusionclip.invert(velocity, x, 3, t_end=0.5), diffusionclip.generate(velocity, x, 3)):
        assert out.shape == x.shape and out.device.type == device and out.dtype == dtype


@pytest.mark.parametrize("call,match", [
    (lambda: diffusionclip.invert(gaussian_velocity, gaussian_images(2), 0), "steps"),
    (lambda: diffusionclip.generate(gaussian_velocity, gaussian_images(2), 2.5), "steps"),
    (lambda: diffusionclip.invert(gaussian_velocity, gaussian_images(2), 4, t_end=0.0), "t_end"),
    (lambda: diffusionclip.generate(gaussian_velocity, gaussian_images(2), 4, t_start=1.5), "t_start"),
    (lambda: diffusionclip.invert(gaussian_velocity, torch.zeros(2, 3, dtype=torch.long), 4), "floating-point"),
    (lambda: diffusionclip.generate(lambda x, t: x[:1], gaussian_images(2), 4), r"shaped like x \(2, 3, 4, 4\)"),
])
def test_invert_generate_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---- text direction --------------------------------------------------------------------------------
def fake_text_encoder(dim=6):
    """A deterministic 'E_T': each string -> a fixed random vector (not unit norm) seeded by its text."""
    def encode(texts):
        return torch.stack([torch.randn(dim, generator=torch.Generator().manual_seed(sum(map(ord, s)) * 7919 + len(s)),
                                        dtype=torch.float64) * (1 + len(s)) for s in texts])
    return encode


def test_text_direction_is_the_template_average():
    enc = fake_text_encoder()
    templates = ("a photo of a {}.", "a drawing of a {}.", "there is a {} here.")
    by_hand = torch.stack([F.normalize(enc([t.format("blue circle")])[0], dim=0)
                           - F.normalize(enc([t.format("red circle")])[0], dim=0) for t in templates]).mean(0)
    raw = diffusionclip.text_direction(enc, "red circle", "blue circle", templates, normalize=False)
    assert raw.shape == (1, 6) and torch.allclose(raw[0], by_hand, rtol=0, atol=1e-12)
    unit = diffusionclip.text_direction(enc, "red circle", "blue circle", templates)
    assert torch.allclose(unit[0], by_hand / by_hand.norm(), rtol=0, atol=1e-12)
    # not the first template alone, nor a single template
    for tpl in templates:
        one = diffusionclip.text_direction(enc, "red circle", "blue circle", (tpl,))
        assert (one - unit).abs().max() > 0.05
    # default templates: course_utils.clip.TEMPLATES
    assert torch.allclose(diffusionclip.text_direction(enc, "red circle", "blue circle"),
                          diffusionclip.text_direction(enc, "red circle", "blue circle", clip.TEMPLATES))


@pytest.mark.parametrize("kwargs,match", [
    (dict(templates=()), "empty"),
    (dict(templates=("a photo",)), r"\{\}"),
    (dict(target="red circle"), "same text"),
    (dict(encode_text=lambda texts: torch.zeros(1, 4)), r"\(2, D\)"),
])
def test_text_direction_bad_input(kwargs, match):
    args = dict(encode_text=fake_text_encoder(), source="red circle", target="blue circle", templates=("a {}",))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diffusionclip.text_direction(**args)


# ---- editing on a toy: the Gaussian flow and a fixed linear "image encoder" ------------------------------
W = torch.randn(48, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
DELTA_T = torch.randn(1, 8, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def toy_image_encoder(x):
    """E_I: (N, 3, 4, 4) -> (N, 8), a fixed linear map then L2-normalized, as CLIP's embeddings."""
    return F.normalize(x.flatten(1) @ W, dim=-1)


def test_edit_latent_follows_the_text_direction():
    x_src = gaussian_images()
    x_edit, hist = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T,
                                             t0=0.5, steps=4, lr=0.05, iterations=30)
    assert set(hist) == {"loss", "direction", "l1", "global"} and all(len(v) == 30 for v in hist.values())
    # measured: L_direction 0.733 -> 0.091 (the chord between unit embeddings cannot always be parallel to Delta T)
    assert hist["direction"][0] > 0.6 and hist["direction"][-1] < 0.5 * hist["direction"][0], hist["direction"]
    assert max(hist["direction"][5:]) < 0.5 * hist["direction"][0]  # and it stays down
    final = diffusionclip.directional_clip_loss(toy_image_encoder(x_edit), toy_image_encoder(x_src),
                                                DELTA_T, torch.zeros_like(DELTA_T)).item()
    assert final < 0.5 * hist["direction"][0]
    assert x_edit.shape == x_src.shape and not x_edit.requires_grad


def test_edit_latent_l1_weight_keeps_the_edit_close():
    x_src = gaussian_images()
    kw = dict(t0=0.5, steps=4, lr=0.05, iterations=30)
    free, h_free = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T, **kw)
    tied, h_tied = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T,
                                             lambda_l1=10.0, **kw)
    # measured: mean |x_gen - x_src| 0.105 at the start (4-step round trip), 0.186 free vs 0.016 with lambda_l1 = 10
    assert h_tied["l1"][-1] < 0.25 * h_free["l1"][-1] and h_tied["l1"][-1] <= h_tied["l1"][0]
    assert (tied - x_src).abs().mean() < 0.25 * (free - x_src).abs().mean()
    assert h_tied["direction"][-1] < 0.5 * h_tied["direction"][0]  # the edit still happens


def test_l1_weight_makes_the_edit_local():
    """w = 1 on the kept pixels, 0 on the free ones: the identity term mean w |x_gen - x_src| ties only the kept ones."""
    x_src = gaussian_images()
    kw = dict(t0=0.5, steps=4, lr=0.05, iterations=30, lambda_l1=10.0)
    keep = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    keep[..., :2, :] = 1.0  # top half kept, bottom half free
    local, h_local = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T,
                                               l1_weight=keep, **kw)
    tied, _ = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T, **kw)
    change = (local - x_src).abs()
    kept, free = change[..., :2, :].mean(), change[..., 2:, :].mean()
    # the free half carries the edit; the kept half moves less than under the uniform L1 (which ties both)
    assert free > 2 * kept, (float(free), float(kept))
    assert free > 1.5 * (tied - x_src).abs()[..., 2:, :].mean()
    assert h_local["direction"][-1] < 0.5 * h_local["direction"][0]
    # the identity term is exactly mean w |x_gen - x_src| on the first iteration (nothing updated yet)
    x_first = diffusionclip.generate(gaussian_velocity, diffusionclip.invert(gaussian_velocity, x_src, 4, t_end=0.5),
                                     4, t_start=0.5)
    assert h_local["l1"][0] == pytest.approx(float((keep * (x_first - x_src).abs()).mean()), rel=1e-9)
    # all-ones weights are the plain L1: the same edit, bit for bit
    ones, h_ones = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T,
                                             l1_weight=torch.ones(1, 1, 1, 1, dtype=torch.float64), **kw)
    assert torch.equal(ones, tied)


@pytest.mark.parametrize("weight,match", [
    (torch.ones(3, 1, 4, 4), "broadcasts to x_src"),
    (torch.ones(4, 4), "broadcasts to x_src"),
    ([1.0], "broadcasts to x_src"),
    (-torch.ones(1, 1, 4, 4), ">= 0 that broadcasts"),
])
def test_l1_weight_bad_input(weight, match):
    with pytest.raises(ValueError, match=match):
        diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, gaussian_images(2), DELTA_T,
                                  lambda_l1=1.0, l1_weight=weight, iterations=1)
    with pytest.raises(ValueError, match=match):
        diffusionclip.fine_tune_generator(ToyVelocity(), toy_image_encoder, gaussian_images(2), DELTA_T,
                                          lambda_l1=1.0, l1_weight=weight, iterations=1)


def test_edit_latent_global_loss_and_is_reproducible():
    x_src = gaussian_images(4)
    txt_tar = toy_image_encoder(gaussian_images(1, seed=9))
    kw = dict(txt_tar=txt_tar, t0=0.6, steps=3, lr=0.05, iterations=15, lambda_dir=0.0, lambda_global=1.0,
              inversion="noise")
    a, ha = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, None, generator=5, **kw)
    b, hb = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, None,
                                      generator=torch.Generator().manual_seed(5), **kw)
    c, _ = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, None, generator=6, **kw)
    assert torch.equal(a, b) and ha == hb  # bit-identical with the same seed
    assert not torch.equal(a, c)
    assert ha["global"][-1] < 0.5 * ha["global"][0], ha["global"]
    assert all(v == 0 for v in ha["direction"])
    # the ODE inversion is deterministic: the same twice without a generator
    d1 = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T, iterations=3)
    d2 = diffusionclip.edit_latent(gaussian_velocity, toy_image_encoder, x_src, DELTA_T, iterations=3)
    assert torch.equal(d1[0], d2[0]) and d1[1] == d2[1]


class ToyVelocity(torch.nn.Module):
    """The Gaussian flow's velocity plus a learnable per-pixel offset (zero at init)."""

    def __init__(self):
        super().__init__()
        self.offset = torch.nn.Parameter(torch.zeros(1, 3, 4, 4, dtype=torch.float64))

    def forward(self, x, t):
        return gaussian_velocity(x, t) + self.offset


def test_fine_tune_generator_trains_the_model_not_the_latent():
    x_src = gaussian_images()
    model = ToyVelocity()
    x_edit, hist = diffusionclip.fine_tune_generator(model, toy_image_encoder, x_src, DELTA_T, t0=0.5, steps=4,
                                                     lr=0.05, iterations=30)
    assert model.offset.abs().max() > 0 and model.offset.grad is not None
    assert hist["direction"][-1] < 0.5 * hist["direction"][0], hist["direction"]
    assert x_edit.shape == x_src.shape


def test_edit_latent_leaves_model_and_encoder_gradients_alone():
    model = ToyVelocity()
    diffusionclip.edit_latent(model, toy_image_encoder, gaussian_images(2), DELTA_T, iterations=2)
    assert model.offset.grad is None and torch.equal(model.offset, torch.zeros_like(model.offset))


@pytest.mark.parametrize("kwargs,match", [
    (dict(steps=0), "steps"),
    (dict(t0=0.0), "t0"),
    (dict(t0=1.2), "t0"),
    (dict(iterations=0), "iterations"),
    (dict(lr=0.0), "lr"),
    (dict(lambda_dir=0.0), "at least one"),
    (dict(lambda_l1=-1.0), "weights"),
    (dict(direction=None), "direction"),
    (dict(direction=torch.zeros(3, 8, dtype=torch.float64)), r"\(1, D\) or \(2, D\)"),
    (dict(direction=torch.zeros(1, 5, dtype=torch.float64)), r"\(2, 8\).*\(1, 5\)"),
    (dict(lambda_global=1.0), "txt_tar"),
    (dict(inversion="ddim"), "inversion"),
    (dict(generator="seed"), "generator"),
    (dict(x_src=torch.zeros(2, 3, 4, 4, dtype=torch.long)), "floating-point"),
])
def test_edit_latent_bad_input(kwargs, match):
    args = dict(velocity=gaussian_velocity, encode_image=toy_image_encoder, x_src=gaussian_images(2),
                direction=DELTA_T, iterations=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        diffusionclip.edit_latent(**args)


def test_fine_tune_generator_needs_a_module():
    with pytest.raises(ValueError, match="nn.Module"):
        diffusionclip.fine_tune_generator(gaussian_velocity, toy_image_encoder, gaussian_images(2), DELTA_T)


# ---- the course CLIP: Delta T points along the image difference it names --------------------------------
@pytest.fixture(scope="module")
def course_clip():
    from course_utils.recipes import clip as course
    model, tok = course.load_course_clip()
    return course, model, tok


def test_course_clip_text_direction_matches_its_image_direction(course_clip):
    from course_utils import shapes
    course, model, tok = course_clip

    def encode(color):  # 8 single-circle scenes (sizes and positions from the seed) -> (8, D)
        images = torch.stack([shapes.make_scene(seed, objects=[{"color": color, "shape": "circle"}]).to_tensor()
                              for seed in range(8)])
        with torch.no_grad():
            return course.encode_images(model, images)

    emb = {c: encode(c) for c in ("red", "blue", "green")}
    encode_text = lambda texts: course.encode_texts(model, tok, texts)  # noqa: E731
    for target, other in (("blue", "green"), ("green", "blue")):
        delta_t = diffusionclip.text_direction(encode_text, "red circle", f"{target} circle")
        right = F.cosine_similarity(emb[target] - emb["red"], delta_t)  # (8,)
        wrong = F.cosine_similarity(emb[other] - emb["red"], delta_t)
        # measured: red->blue 0.91..0.95 with blue - red vs 0.51..0.59 with green - red;
        #           red->green 0.87..0.91 vs 0.47..0.55
        assert (right > 0.8).all() and (right > wrong + 0.2).all(), (target, right, wrong)
