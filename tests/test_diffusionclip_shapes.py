"""course_utils.recipes.diffusionclip_shapes (notebook 13): the glue between course_utils.diffusionclip and the
course models -- the velocity against the transformer, the VAE helpers, a differentiable image encoder, the
held-out edit cases, the judge's verdicts on hand-made edits -- and one small end-to-end edit."""
import dataclasses

import pytest
import torch

from course_utils import diffusionclip
from course_utils.recipes import diffusionclip_shapes as dcs
from course_utils.recipes import judges, sd3_shapes
from course_utils.recipes.clip import load_course_clip
from course_utils.world import shapes


@pytest.fixture(scope="module")
def random_pipe():
    """The shipped structure with random weights (no training needed): VAE + transformer + course CLIP text."""
    vae = sd3_shapes.make_vae()
    vae.register_to_config(scaling_factor=1.5, shift_factor=0.1)
    pipe = sd3_shapes.make_pipeline(sd3_shapes.make_transformer(num_layers=1), vae)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def course_clip():
    return load_course_clip()


@pytest.fixture(scope="module")
def judge():
    return judges.load_shapes_judge()


def _with(scene, **changes):
    """The scene re-rendered with its red circle changed (colour, position, ...)."""
    objs = [dict(color=o.color, shape=o.shape, size=o.size, cx=o.cx, cy=o.cy) for o in scene.objects]
    next(o for o in objs if (o["color"], o["shape"]) == ("red", "circle")).update(changes)
    return shapes.make_scene(scene.seed, objects=objs)


# ---- the edit cases --------------------------------------------------------------------------------------
def test_recolor_scenes_are_held_out_and_well_formed():
    cases = dcs.recolor_scenes(6)
    test_seeds = set(shapes.split_seeds("test", 6))
    assert [c.scene.seed for c in cases] == sorted(test_seeds)
    for i, c in enumerate(cases):
        assert c.scene.objects[0].color == "red" and c.scene.objects[0].shape == "circle" or \
            any((o.color, o.shape) == ("red", "circle") for o in c.scene.objects)
        assert (c.other is not None) == (i % 2 == 1)
        if c.other:
            assert c.other[0] not in ("red", "blue") and len(c.scene.objects) == 2
        assert c.source_prompt.replace("red circle", "blue circle") == c.target_prompt
    with pytest.raises(ValueError, match="colour"):
        dcs.recolor_scenes(2, source=("crimson", "circle"))
    with pytest.raises(ValueError, match="nothing to edit"):
        dcs.recolor_scenes(2, target=("red", "circle"))
    with pytest.raises(ValueError, match="n must be"):
        dcs.recolor_scenes(0)


# ---- the course models as callables --------------------------------------------------------------------
def test_velocity_is_the_transformer(random_pipe):
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([0.3, 0.8])
    prompts = ["a red circle", "a blue square"]
    c_tx, c_vec = dcs.prompt_embeddings(random_pipe, prompts)
    assert c_tx.shape == (2, 32 + sd3_shapes.T5_TOKENS, 128) and c_vec.shape == (2, 128)
    with torch.no_grad():
        ref = random_pipe.transformer(hidden_states=x, encoder_hidden_states=c_tx, pooled_projections=c_vec,
                                      timestep=1000 * t).sample
        got = dcs.velocity(random_pipe, prompts)(x, t)
        torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
        # one prompt for the whole batch
        one = dcs.velocity(random_pipe, prompts[:1])(x, t)
        torch.testing.assert_close(one[0], ref[0], atol=1e-5, rtol=1e-5)
        # classifier-free guidance: v("") + s (v(p) - v(""))
        u_tx, u_vec = dcs.prompt_embeddings(random_pipe, [""] * 2)
        unc = random_pipe.transformer(hidden_states=x, encoder_hidden_states=u_tx, pooled_projections=u_vec,
                                      timestep=1000 * t).sample
        cfg = dcs.velocity(random_pipe, prompts, guidance_scale=3.0)(x, t)
        torch.testing.assert_close(cfg, unc + 3.0 * (ref - unc), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="one prompt per image"):
        dcs.velocity(random_pipe, prompts * 2)(x, t)
    with pytest.raises(ValueError, match="list of strings"):
        dcs.velocity(random_pipe, "a red circle")


def test_encode_decode_shapes_and_image_encoder_is_differentiable(random_pipe, course_clip):
    model, _ = course_clip
    images = shapes.render_batch(shapes.scenes("test", 2))
    z = dcs.encode(random_pipe, images)
    assert z.shape == (2, 4, 16, 16) and not z.requires_grad
    x = dcs.decode(random_pipe, z)
    assert x.shape == (2, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert dcs.to_uint8(x).dtype == torch.uint8
    z = z.clone().requires_grad_(True)
    emb = dcs.image_encoder(random_pipe, model)(z)
    assert emb.shape == (2, model.config.projection_dim)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(2), atol=1e-5, rtol=0)
    (g,) = torch.autograd.grad(emb[:, 0].sum(), z)
    assert g.shape == z.shape and g.abs().sum() > 0
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        dcs.encode(random_pipe, torch.zeros(3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="latents must be"):
        dcs.decode(random_pipe, torch.zeros(1, 3, 16, 16))


def test_direction_is_the_template_average(course_clip):
    model, tok = course_clip
    d = dcs.direction(model, tok, "red circle", "blue circle", templates=("a photo of a {}.", "a {}"))
    assert d.shape == (1, model.config.projection_dim)
    from course_utils.recipes.clip import encode_texts
    with torch.no_grad():
        e = encode_texts(model, tok, ["a photo of a red circle.", "a red circle", "a photo of a blue circle.",
                                      "a blue circle"])
    expected = torch.nn.functional.normalize((e[2:] - e[:2]).mean(0, keepdim=True), dim=-1)
    torch.testing.assert_close(d, expected, atol=1e-5, rtol=1e-5)


# ---- the judge's verdicts on hand-made edits --------------------------------------------------------------
def test_measure_edits_on_hand_made_cases(judge):
    cases = dcs.recolor_scenes(4)
    src = shapes.render_batch([c.scene for c in cases])
    # identical: nothing changed -> IoU 1, target not reached, the other object unchanged
    same = dcs.measure_edits(judge, cases, src, src)
    assert same["reached"] == 0 and same["iou"] == 1 and same["others_unchanged"] == 1 and same["ok"] == 0
    # the scene re-rendered with a blue circle in the same place: reached, IoU 1
    blue = shapes.render_batch([_with(c.scene, color="blue") for c in cases])
    done = dcs.measure_edits(judge, cases, src, blue)
    assert done["reached"] == 1 and done["iou"] == 1 and done["others_unchanged"] == 1 and done["ok"] == 1
    # the blue circle moved by a quarter of the image: IoU < 0.8, not ok
    one = [c for c in cases if c.other is None]
    moved = [_with(c.scene, color="blue", cx=c.scene.objects[0].cx + (0.25 if c.scene.objects[0].cx < 0.5 else -0.25))
             for c in one]
    res = dcs.measure_edits(judge, one, shapes.render_batch([c.scene for c in one]), shapes.render_batch(moved))
    assert all(r["iou"] < 0.8 for r in res["rows"]) and res["ok"] == 0 and res["reached"] == 1
    # the other object recoloured: not unchanged
    two = [c for c in cases if c.other]
    other_recoloured = []
    for c in two:
        objs = [dict(color=("blue" if o.color == "red" else "yellow" if o.color != "yellow" else "green"),
                     shape=o.shape, size=o.size, cx=o.cx, cy=o.cy) for o in c.scene.objects]
        other_recoloured.append(shapes.make_scene(c.scene.seed, objects=objs))
    res = dcs.measure_edits(judge, two, shapes.render_batch([c.scene for c in two]),
                            shapes.render_batch(other_recoloured))
    assert res["others_unchanged"] == 0 and res["reached"] == 1
    with pytest.raises(ValueError, match="one case per image"):
        dcs.measure_edits(judge, cases[:2], src, src)
    with pytest.raises(ValueError, match="uint8"):
        dcs.measure_edits(judge, cases, src.float() / 255, src)
    with pytest.raises(ValueError, match="colors must be"):
        dcs.object_masks(src, ["crimson"])


def test_edit_masks_and_paste():
    cases = [c for c in dcs.recolor_scenes(6) if c.other is not None]
    src = shapes.render_batch([c.scene for c in cases])
    pixels, latent = dcs.edit_masks(src, "red", dilate=1)
    assert pixels.shape == (len(cases), 1, 32, 32) and latent.shape == (len(cases), 1, 16, 16)
    every = dcs.object_masks(src, list(shapes.COLORS))
    assert torch.equal(pixels[:, 0].bool(), every["red"])
    for k, c in enumerate(cases):
        # the red circle only: read against the whole palette, the other object is not in it
        other = every[c.other[0]][k]
        assert other.any() and not (pixels[k, 0].bool() & other).any()
        assert pixels[k].sum() > 10
    # the latent mask covers every masked pixel (each latent cell is 2 x 2 pixels)
    up = latent.repeat_interleave(2, -1).repeat_interleave(2, -2)
    assert bool((up >= pixels).all()) and up.sum() > pixels.sum()
    assert torch.equal(dcs.edit_masks(src, "red", dilate=0)[1], torch.nn.functional.max_pool2d(pixels, 2))
    # paste: the edited pixels inside the mask, the source outside, bit for bit
    edited = torch.full_like(src, 7)
    pasted = dcs.paste(src, edited, pixels)
    inside = pixels.bool().expand_as(src)
    assert torch.equal(pasted[inside], edited[inside]) and torch.equal(pasted[~inside], src[~inside])
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        dcs.paste(src, edited, pixels[:, :, :16])
    with pytest.raises(ValueError, match="dilate"):
        dcs.edit_masks(src, "red", dilate=-1)


def test_edit_rejects_bad_input(random_pipe, course_clip):
    model, tok = course_clip
    cases = dcs.recolor_scenes(2)
    with pytest.raises(ValueError, match="method"):
        dcs.edit(random_pipe, model, tok, cases, method="sdedit")
    with pytest.raises(ValueError, match="EditCase"):
        dcs.edit(random_pipe, model, tok, [])
    mixed = [cases[0], dataclasses.replace(cases[1], target=("green", "circle"))]
    with pytest.raises(ValueError, match="same source and target"):
        dcs.edit(random_pipe, model, tok, mixed)
    with pytest.raises(ValueError, match="localize"):
        dcs.edit(random_pipe, model, tok, cases, method="regenerate", localize=True)
    with pytest.raises(ValueError, match="'source', 'target' or 'object'"):
        dcs.edit(random_pipe, model, tok, cases, generate_with="scene")
    with pytest.raises(ValueError, match="x_t0"):
        diffusionclip.edit_latent(lambda x, t: x, lambda x: x.flatten(1), torch.zeros(2, 3), torch.ones(1, 3),
                                  x_t0=torch.zeros(3, 3))


def test_generate_with_picks_the_prompts_of_the_generator_and_of_the_global_loss(random_pipe, course_clip, monkeypatch):
    """Inversion always uses the source captions; the edit generates with the source caption, the target one, or
    the edited object's alone ("a blue circle": notebook 13's local recipe), and L_global aims at that prompt."""
    model, tok = course_clip
    cases = dcs.recolor_scenes(2)            # the second one has a neighbour, named in its captions
    assert "blue circle" in cases[1].target_prompt and cases[1].target_prompt != "a blue circle"
    seen = {"velocity": [], "global": []}
    velocity, encode_texts = dcs.velocity, dcs.encode_texts
    monkeypatch.setattr(dcs, "velocity", lambda pipe, prompts, **kw: seen["velocity"].append(list(prompts))
                        or velocity(pipe, prompts, **kw))
    monkeypatch.setattr(dcs, "encode_texts", lambda m, t, prompts: seen["global"].append(list(prompts))
                        or encode_texts(m, t, prompts))
    source = [c.source_prompt for c in cases]
    for generate_with, want in (("source", source), ("target", [c.target_prompt for c in cases]),
                                ("object", ["a blue circle", "a blue circle"])):
        seen["velocity"].clear(), seen["global"].clear()
        dcs.edit(random_pipe, model, tok, cases, method="latent", iterations=1, steps=1, lambda_global=1.0,
                 generate_with=generate_with)
        assert seen["velocity"][0] == source and seen["velocity"][-1] == want
        # (the other encode_texts calls are Delta T's templates)
        assert (want if generate_with != "source" else [c.target_prompt for c in cases]) in seen["global"]


# ---- end to end on the shipped model ---------------------------------------------------------------------
def test_small_end_to_end_edit(course_clip, judge):
    pipe = sd3_shapes.load_pipeline()
    model, tok = course_clip
    cases = dcs.recolor_scenes(2)
    for method in dcs.METHODS:
        out = dcs.edit(pipe, model, tok, cases, method=method, iterations=2, steps=2)
        assert out["edited"].shape == out["source"].shape == (2, 3, 32, 32) and out["edited"].dtype == torch.uint8
        if method != "regenerate":
            assert len(out["history"]["loss"]) == 2
        res = dcs.measure_edits(judge, cases, out["source"], out["edited"])
        assert 0 <= res["iou"] <= 1 and res["n"] == 2
    # a local edit: the identity term weighs (1 - mask); the returned mask is the red circle's pixels
    out = dcs.edit(pipe, model, tok, cases, method="finetune", iterations=2, steps=2, localize=True,
                   generate_with="target")
    assert torch.equal(out["mask"], dcs.edit_masks(out["source"], "red")[0])
    assert out["edited"].shape == (2, 3, 32, 32) and len(out["history"]["l1"]) == 2
    # the transformer of the pipeline is left as it was by "finetune" (it trains a copy)
    fresh = sd3_shapes.load_pipeline()
    for (k, a), b in zip(pipe.transformer.state_dict().items(), fresh.transformer.state_dict().values()):
        assert torch.equal(a, b), k
