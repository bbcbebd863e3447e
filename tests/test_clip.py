"""course_utils.clip (notebook 01): loss parity with open_clip, closed forms, zero-shot classifier
parity, retrieval R@k against a brute-force count; and the course CLIP (course_utils.recipes.clip,
course_utils.bridges.open_clip): the shipped checkpoint loaded by transformers and by open_clip
giving the same embeddings, the training recipe on a tiny run."""
import json
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from course_utils import clip, hub, shapes
from course_utils.bridges import open_clip as oc_bridge
from course_utils.recipes import clip as course_clip
from course_utils.world import text as world_text


def _unit(*shape):
    return F.normalize(torch.randn(*shape, dtype=torch.float64), dim=-1)


# ---------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,d,scale", [(1, 4, 1.0), (8, 16, 14.2857), (33, 64, 100.0)])
def test_clip_loss_matches_open_clip(n, d, scale):
    img, txt = _unit(n, d), _unit(n, d)
    s = torch.tensor(scale, dtype=torch.float64)
    ours = clip.clip_loss(img, txt, s)
    ref = open_clip.ClipLoss()(img, txt, s)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=0), (ours, ref)


def test_clip_logits_match_open_clip():
    img, txt = _unit(5, 8), _unit(5, 8)
    ours = clip.clip_logits(img, txt, 7.0)
    ref = open_clip.ClipLoss().get_logits(img, txt, 7.0)
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(ours, ref))


def test_clip_loss_closed_form():
    # perfect pairs with orthogonal features: logits = s * I, loss = log(1 + (N-1) e^{-s})
    n, s = 5, 10.0
    feats = torch.eye(n, dtype=torch.float64)
    expected = math.log(1 + (n - 1) * math.exp(-s))
    assert abs(clip.clip_loss(feats, feats, s).item() - expected) < 1e-12
    # all features equal: every caption is as likely, loss = log N
    same = F.normalize(torch.ones(n, 3, dtype=torch.float64), dim=-1)
    assert abs(clip.clip_loss(same, same, 3.0).item() - math.log(n)) < 1e-12


def test_clip_loss_gradient_flows_to_logit_scale():
    img, txt = _unit(6, 8).float(), _unit(6, 8).float()
    logit_scale = torch.nn.Parameter(torch.tensor(clip.INIT_LOGIT_SCALE))
    clip.clip_loss(img, txt, logit_scale.exp()).backward()
    assert logit_scale.grad is not None and torch.isfinite(logit_scale.grad) and logit_scale.grad != 0


@pytest.mark.parametrize("fn,args", [
    (clip.clip_loss, (torch.randn(4, 8), torch.randn(5, 8), 1.0)),
    (clip.clip_loss, (torch.randn(4, 8), torch.randn(4, 7), 1.0)),
    (clip.clip_loss_multi_positive, (torch.randn(4, 8), torch.randn(5, 8), 1.0, torch.eye(4, dtype=torch.bool))),
])
def test_mismatched_shapes_raise_naming_both(fn, args):
    with pytest.raises(ValueError) as err:
        fn(*args)
    msg = str(err.value)
    shapes_in_msg = [str(tuple(a.shape)) for a in args[:2]]
    assert sum(s in msg for s in set(shapes_in_msg)) >= 2, msg


def test_one_dimensional_features_raise():
    with pytest.raises(ValueError, match="2-D"):
        clip.clip_loss(torch.randn(8), torch.randn(8), 1.0)


def test_multi_positive_loss_reduces_to_clip_loss_and_counts_positives():
    img, txt = _unit(6, 8), _unit(6, 8)
    eye = torch.eye(6, dtype=torch.bool)
    ref = open_clip.ClipLoss()(img, txt, torch.tensor(10.0, dtype=torch.float64))
    assert torch.allclose(clip.clip_loss_multi_positive(img, txt, 10.0, eye), ref, atol=1e-10)
    # two identical texts describing images 0 and 1: the targets of rows 0, 1 are (1/2, 1/2)
    txt2 = txt.clone()
    txt2[1] = txt2[0]
    pos = eye.clone()
    pos[0, 1] = pos[1, 0] = True
    logits = 10.0 * img @ txt2.T
    lp_r, lp_c = logits.log_softmax(1), logits.log_softmax(0)
    i2t = -(lp_r.diagonal()[2:].sum() + (lp_r[0, :2].sum() + lp_r[1, :2].sum()) / 2) / 6
    t2i = -(lp_c.diagonal()[2:].sum() + (lp_c[:2, 0].sum() + lp_c[:2, 1].sum()) / 2) / 6
    assert torch.allclose(clip.clip_loss_multi_positive(img, txt2, 10.0, pos), (i2t + t2i) / 2, atol=1e-10)
    with pytest.raises(ValueError, match="diagonal"):
        clip.clip_loss_multi_positive(img, txt, 10.0, torch.zeros(6, 6, dtype=torch.bool))


# ---------------------------------------------------------------------------------------------
# Retrieval R@k from a similarity matrix
# ---------------------------------------------------------------------------------------------
def _brute_recall(sim, k, ids, g):
    """R@k counted query by query with Python loops (argsort; ties broken by the lowest index)."""
    n = sim.shape[0]
    out = []
    for m in (sim, sim.T):
        hits = 0
        for q in range(n):
            lo = q - q % g
            row = m[q, lo:lo + g].tolist()
            order = sorted(range(g), key=lambda j: (-row[j], j))[:k]
            hits += any(ids[lo + j] == ids[q] for j in order)
        out.append(hits / n)
    return out


@pytest.mark.parametrize("k,g,dup", [(1, 12, False), (1, 4, True), (3, 6, True), (2, 12, False)])
def test_recall_at_k_matches_a_brute_force_count(k, g, dup):
    gen = torch.Generator().manual_seed(k * 100 + g)
    sim = torch.randn(12, 12, generator=gen, dtype=torch.float64) + 1.5 * torch.eye(12, dtype=torch.float64)
    ids = torch.tensor([0, 1, 0, 2, 3, 3, 4, 5, 6, 5, 7, 8]) if dup else torch.arange(12)
    i2t, t2i = clip.recall_at_k(sim, k, ids=ids if dup else None, gallery_size=g)
    ref = _brute_recall(sim, k, ids.tolist(), g)
    assert abs(i2t.item() - ref[0]) < 1e-12 and abs(t2i.item() - ref[1]) < 1e-12, (i2t, t2i, ref)


def test_recall_at_k_closed_forms_and_errors():
    eye = torch.eye(6)
    assert [r.item() for r in clip.recall_at_k(eye)] == [1.0, 1.0]
    # every image closest to the next caption (a cyclic shift): R@1 = 0, R@2 = 1
    shift = torch.roll(torch.eye(6), 1, dims=1) + 0.5 * torch.eye(6)
    assert [r.item() for r in clip.recall_at_k(shift, 1)] == [0.0, 0.0]
    assert [r.item() for r in clip.recall_at_k(shift, 2)] == [1.0, 1.0]
    with pytest.raises(ValueError, match="divide"):
        clip.recall_at_k(eye, gallery_size=4)
    with pytest.raises(ValueError, match="square"):
        clip.recall_at_k(torch.randn(3, 4))
    with pytest.raises(ValueError, match="k must be"):
        clip.recall_at_k(eye, 7)


# ---------------------------------------------------------------------------------------------
# The course CLIP: build, temperature, tokenizer, pooling
# ---------------------------------------------------------------------------------------------
def _tiny(tokenizer, **kw):
    cfg = course_clip.make_config(len(tokenizer), tokenizer.eos_token_id, tokenizer.bos_token_id, vision_width=32,
                                  vision_layers=kw.pop("layers", 1), vision_heads=2, text_width=32,
                                  text_layers=kw.pop("text_layers", 1), text_heads=2, embed_dim=16, **kw)
    return course_clip.build_model(cfg)


def test_logit_scale_init_and_clamp():
    assert abs(math.exp(clip.INIT_LOGIT_SCALE) - 1 / 0.07) < 1e-9
    tok = world_text.build_tokenizer(["a red circle"], context_length=16)
    model = _tiny(tok, context_length=16)
    assert abs(model.logit_scale.item() - clip.INIT_LOGIT_SCALE) < 1e-6
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    course_clip.clamp_logit_scale_(model)
    assert abs(model.logit_scale.item() - math.log(100)) < 1e-6


@pytest.fixture(scope="module")
def course():
    return course_clip.load_course_clip()


def test_text_pooling_is_at_the_first_eos(course):
    model, tok = course
    enc = tok(["a red circle."], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    ids = enc.input_ids
    eos = int((ids[0] == tok.eos_token_id).nonzero()[0])
    assert eos == 5  # <sot> a red circle . <eot>
    with torch.no_grad():
        out = model.text_model(input_ids=ids)
        # the pooled output is the final-LN'd hidden state at the first EOS
        assert torch.allclose(out.pooler_output[0], out.last_hidden_state[0, eos], atol=1e-6)
        # tokens after the EOS cannot change it (causal attention)
        ids2 = ids.clone()
        ids2[0, eos + 1:] = 7
        assert torch.allclose(model.text_model(input_ids=ids2).pooler_output, out.pooler_output, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# One folder, two libraries: transformers CLIPModel and open_clip local-dir give the same embeddings
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def open_clip_course():
    path = hub.resolve("course/clip-shapes", verbose=False)
    model, _, preprocess = open_clip.create_model_and_transforms("local-dir:" + path)
    return model.eval(), preprocess, open_clip.get_tokenizer("local-dir:" + path)


def test_shipped_folder_has_both_layouts(course):
    path = hub.course_path("course/clip-shapes")
    for f in ("config.json", "model.safetensors", "open_clip_config.json", "open_clip_model.safetensors",
              "tokenizer.json", "preprocessor_config.json"):
        assert (path / f).is_file(), f
    size_mb = sum(p.stat().st_size for p in path.iterdir()) / 1e6
    assert size_mb < 10, size_mb
    # the bridge still writes what shipped
    shipped = json.loads((path / "open_clip_config.json").read_text())["model_cfg"]
    assert oc_bridge.open_clip_model_cfg(course[0].config) == shipped


def test_transformers_and_open_clip_give_the_same_embeddings(course, open_clip_course):
    model, tok = course
    oc_model, _, oc_tok = open_clip_course
    scenes = shapes.scenes("test", 16)
    images = shapes.render_batch(scenes)
    texts = [s.captions[k % 5] for k, s in enumerate(scenes)]
    ids = oc_tok(texts)
    hf_ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
    assert torch.equal(ids, hf_ids)
    with torch.no_grad():
        a = course_clip.encode_images(model, images)
        b = oc_model.encode_image(clip.normalize_images(images), normalize=True)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        a = course_clip.encode_texts(model, tok, texts)
        b = oc_model.encode_text(ids, normalize=True)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        assert torch.allclose(model.logit_scale, oc_model.logit_scale)


def test_preprocessing_agrees(open_clip_course):
    from transformers import CLIPImageProcessor

    _, preprocess, _ = open_clip_course
    path = hub.resolve("course/clip-shapes", verbose=False)
    image = shapes.make_scene(2_000_003).image  # 32 px PIL image
    ours = clip.normalize_images(shapes.pil_to_tensor(image)[None])
    hf = CLIPImageProcessor.from_pretrained(path)(images=image, return_tensors="pt").pixel_values
    oc = preprocess(image)[None]
    assert torch.allclose(ours, hf, atol=1e-5) and torch.allclose(ours, oc, atol=1e-5)


def test_converter_on_a_random_model(tmp_path):
    tok = world_text.build_tokenizer(["a red circle", "a blue square"], context_length=12)
    model = _tiny(tok, layers=2, text_layers=2, context_length=12, image_size=16, patch_size=4).eval()
    course_clip.save_pretrained(model, tok, tmp_path)
    oc, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path))
    oc_tok = open_clip.get_tokenizer("local-dir:" + str(tmp_path))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(course_clip.encode_images(model, x),
                              oc.eval().encode_image(clip.normalize_images(x), normalize=True), atol=1e-5)
        texts = ["a red circle", "a blue square", "a red square"]
        assert torch.allclose(course_clip.encode_texts(model, tok, texts), oc.encode_text(oc_tok(texts), normalize=True),
                              atol=1e-5)


def test_bridge_rejects_an_activation_open_clip_lacks():
    tok = world_text.build_tokenizer(["a red circle"], context_length=8)
    model = _tiny(tok, context_length=8, image_size=8, patch_size=4)
    model.config.vision_config.hidden_act = "relu"
    with pytest.raises(ValueError, match="quick_gelu"):
        oc_bridge.open_clip_model_cfg(model.config)


# ---------------------------------------------------------------------------------------------
# Zero-shot
# ---------------------------------------------------------------------------------------------
def test_zero_shot_classifier_matches_open_clip(course, open_clip_course):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    model, tok = course
    oc_model, _, oc_tok = open_clip_course
    names = ["red circle", "blue square", "green cross"]
    ours = clip.zero_shot_classifier(lambda t: course_clip.encode_texts(model, tok, t), names, clip.TEMPLATES)
    ref = build_zero_shot_classifier(oc_model, oc_tok, names, clip.TEMPLATES, num_classes_per_batch=2,
                                     device="cpu", use_tqdm=False)
    assert ours.shape == (model.config.projection_dim, 3)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_zero_shot_accuracy_matches_open_clip_predictions(course, open_clip_course):
    """The recipe's predictions equal open_clip's own zero-shot pipeline on the same weights."""
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    model, tok = course
    oc_model, preprocess, oc_tok = open_clip_course
    scenes = shapes.scenes("test", 40, n_objects=1, start=5000)
    res = course_clip.zero_shot_accuracy(model, tok, scenes, "shape+color")
    labels, names = course_clip.class_prompts("shape+color")
    with torch.no_grad():
        w = build_zero_shot_classifier(oc_model, oc_tok, names, clip.TEMPLATES, device="cpu", use_tqdm=False)
        feats = oc_model.encode_image(torch.stack([preprocess(s.image) for s in scenes]), normalize=True)
    assert torch.equal(res["predictions"], (feats @ w).argmax(dim=1))
    truth = [labels.index(f"{s.objects[0].color} {s.objects[0].shape}") for s in scenes]
    assert res["targets"].tolist() == truth
    assert abs(res["accuracy"] - sum(p == t for p, t in zip(res["predictions"].tolist(), truth)) / len(truth)) < 1e-6


def test_zero_shot_input_checks():
    with pytest.raises(ValueError, match="slot"):
        clip.zero_shot_classifier(lambda t: torch.randn(len(t), 4), ["a"], ["no slot"])
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(3, 2\)"):
        clip.zero_shot_predict(torch.randn(5, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="unknown zero-shot task"):
        course_clip.class_prompts("size")


def test_accuracy_of_part_reads_the_24_way_labels():
    labels, _ = course_clip.class_prompts("shape+color")
    idx = {l: i for i, l in enumerate(labels)}
    res = {"labels": labels, "targets": torch.tensor([idx["red circle"], idx["blue square"]]),
           "predictions": torch.tensor([idx["red square"], idx["green square"]])}
    assert course_clip.accuracy_of_part(res, "color") == 0.5 and course_clip.accuracy_of_part(res, "shape") == 0.5


def test_hub_ids_fall_back_to_the_course_clip():
    path = hub.resolve("open_clip/ViT-B-32/laion2b_s34b_b79k", online=False, verbose=False)
    assert hub.is_course_path(path) and path.endswith("clip-shapes")


# ---------------------------------------------------------------------------------------------
# Retrieval with duplicated captions, on the shipped model
# ---------------------------------------------------------------------------------------------
def test_retrieval_counts_identical_captions(course):
    model, tok = course
    scenes = shapes.scenes("test", 20, start=20_000)
    scenes = scenes + [scenes[0]]  # the same scene twice: same image, same caption
    r = course_clip.retrieval_recall(model, tok, scenes, caption_index=0)
    assert r["n_duplicated"] >= 2 and r["gallery_size"] == 21
    # identical rows and columns: at most one of the two copies can find its exact partner
    assert r["image_to_text_r1"] <= 20 / 21 + 1e-6 and r["text_to_image_r1"] <= 20 / 21 + 1e-6
    assert r["image_to_text_r1_dup_hits"] >= r["image_to_text_r1"]
    assert r["text_to_image_r1_dup_hits"] >= r["text_to_image_r1"]
    # galleries of 7: the mean of the three galleries' R@1, each computed on its own
    g = course_clip.retrieval_recall(model, tok, scenes, caption_index=0, gallery_size=7)
    parts = [course_clip.retrieval_recall(model, tok, scenes[i:i + 7], caption_index=0) for i in (0, 7, 14)]
    assert abs(g["image_to_text_r1"] - sum(p["image_to_text_r1"] for p in parts) / 3) < 1e-6
    assert abs(g["text_to_image_r1_dup_hits"] - sum(p["text_to_image_r1_dup_hits"] for p in parts) / 3) < 1e-6


# ---------------------------------------------------------------------------------------------
# The training recipe (scripts/train_clip.py calls it)
# ---------------------------------------------------------------------------------------------
def test_positives_of_partial_descriptions():
    # scenes: 0 red circle, 1 blue circle, 2 red square, 3 two objects (counts id 7, colors id 9)
    attrs = torch.tensor([[0, 0, 1, 2], [0, 1, 3, 4], [1, 0, 5, 6], [-1, -1, 7, 9]])
    t = torch.arange(4)[:, None].expand(4, 3)  # four different texts
    kind = torch.tensor([0, 1, -1, 3])  # "a circle.", "a blue shape.", a full caption, "counts"
    expected = torch.tensor([[1, 0, 0, 0],   # image 0 (red circle): "a circle." is true of it
                             [1, 1, 0, 0],   # image 1 (blue circle): "a circle." and "a blue shape."
                             [0, 0, 1, 0],
                             [0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(course_clip.positives(t, kind, attrs), expected)


def test_train_recipe_runs_and_ships_both_layouts(tmp_path):
    tc = course_clip.TrainConfig(steps=2, batch_size=24, n_scenes=60, twin_pairs=4, eval_scenes=12, vision_layers=1,
                                 text_layers=1, warmup=1)
    out = course_clip.train(tc, tmp_path, log=lambda msg: None)
    info = json.loads((tmp_path / "training_info.json").read_text())
    assert info["args"]["steps"] == 2 and set(info["args"]) == set(json.loads(
        (hub.course_path("course/clip-shapes") / "training_info.json").read_text())["args"])
    assert len(out["history"].loss) == 2
    oc, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path))
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.allclose(course_clip.encode_images(out["model"], x),
                              oc.eval().encode_image(clip.normalize_images(x), normalize=True), atol=1e-5)
