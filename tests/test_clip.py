"""course_utils.clip (notebook 01): loss parity with open_clip, DiffusionCLIP losses in closed form,
zero-shot classifier parity, the course tokenizer vs CLIP's real BPE, and the shipped checkpoint
loaded by transformers and by open_clip giving the same embeddings."""
import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from course_utils import clip, hub, shapes


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
    assert logit_scale.grad is not None and torch.isfinite(logit_scale.grad)


@pytest.mark.parametrize("fn,args", [
    (clip.clip_loss, (torch.randn(4, 8), torch.randn(5, 8), 1.0)),
    (clip.clip_loss, (torch.randn(4, 8), torch.randn(4, 7), 1.0)),
    (clip.global_clip_loss, (torch.randn(4, 8), torch.randn(4, 6))),
    (clip.global_clip_loss, (torch.randn(4, 8), torch.randn(3, 8))),
    (clip.directional_clip_loss, (torch.randn(4, 8), torch.randn(3, 8), torch.randn(1, 8), torch.randn(1, 8))),
    (clip.directional_clip_loss, (torch.randn(4, 8), torch.randn(4, 8), torch.randn(1, 8), torch.randn(1, 9))),
])
def test_mismatched_shapes_raise_naming_both(fn, args):
    with pytest.raises(ValueError) as err:
        fn(*args)
    msg = str(err.value)
    shapes_in_msg = [str(tuple(a.shape)) for a in args if isinstance(a, torch.Tensor)]
    assert sum(s in msg for s in set(shapes_in_msg)) >= 2, msg


def test_one_dimensional_features_raise():
    with pytest.raises(ValueError, match="2-D"):
        clip.clip_loss(torch.randn(8), torch.randn(8), 1.0)


def test_directional_loss_closed_form():
    ref_i, ref_t = torch.randn(3, 4), torch.randn(1, 4)
    d = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    # dI parallel to dT: 0; opposite: 2; orthogonal: 1
    assert abs(clip.directional_clip_loss(ref_i + 2 * d, ref_i, ref_t + d, ref_t).item()) < 1e-6
    assert abs(clip.directional_clip_loss(ref_i - d, ref_i, ref_t + d, ref_t).item() - 2) < 1e-6
    ortho = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    assert abs(clip.directional_clip_loss(ref_i + ortho, ref_i, ref_t + d, ref_t).item() - 1) < 1e-6


def test_directional_loss_is_the_batch_mean_of_the_lecture_formula():
    g, r, tt, tr = (torch.randn(5, 8, dtype=torch.float64) for _ in range(4))
    di, dt = g - r, tt - tr
    expected = torch.stack([1 - di[k] @ dt[k] / (di[k].norm() * dt[k].norm()) for k in range(5)]).mean()
    assert torch.allclose(clip.directional_clip_loss(g, r, tt, tr), expected, atol=1e-12)


def test_global_loss_closed_form():
    x = torch.randn(4, 8, dtype=torch.float64)
    assert clip.global_clip_loss(x, 3 * x).abs().item() < 1e-12
    assert abs(clip.global_clip_loss(x, -x).item() - 2) < 1e-12
    t = torch.randn(1, 8, dtype=torch.float64)
    expected = (1 - F.normalize(x, dim=-1) @ F.normalize(t, dim=-1).T).mean()
    assert torch.allclose(clip.global_clip_loss(x, t), expected, atol=1e-12)


def test_logit_scale_init_and_clamp():
    assert abs(math.exp(clip.INIT_LOGIT_SCALE) - 1 / 0.07) < 1e-9
    tok = clip.build_tokenizer(["a red circle"], context_length=16)
    cfg = clip.make_config(len(tok), tok.eos_token_id, tok.bos_token_id, vision_width=32, vision_layers=1,
                           vision_heads=2, text_width=32, text_layers=1, text_heads=2, embed_dim=16, context_length=16)
    model = clip.build_model(cfg)
    assert abs(model.logit_scale.item() - clip.INIT_LOGIT_SCALE) < 1e-6
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        model.logit_scale.fill_(10.0)
    clip.clamp_logit_scale_(model)
    assert abs(model.logit_scale.item() - math.log(100)) < 1e-6


# ---------------------------------------------------------------------------------------------
# Tokenizer: CLIP's real BPE, restricted to the course's words
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def course():
    model, tokenizer = clip.load_course_clip()
    return model, tokenizer


def test_tokenizer_matches_real_clip_bpe(course):
    _, tok = course
    real = open_clip.get_tokenizer("ViT-B-32")  # open_clip's SimpleTokenizer, offline
    real_vocab = dict(real.encoder)
    real_vocab["<|startoftext|>"] = real.sot_token_id
    real_vocab["<|endoftext|>"] = real.eot_token_id
    inv = {i: t for t, i in tok.get_vocab().items()}
    texts = [c for s in shapes.scenes("test", 40) for c in s.captions] + [q.question for s in shapes.scenes("test", 20) for q in s.qa]
    texts += ["A photo of a RED circle.", "there is a tiny purple plus sign in the image."]
    for text in texts:
        ours = tok(text).input_ids
        ref = real(text, context_length=77)[0]
        ref = ref[ref != 0].tolist()
        assert [real_vocab[inv[i]] for i in ours] == ref, text
    # special tokens: own ids, EOS the largest (CLIP's convention), not the legacy id 2
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    assert tok.eos_token_id != 2


def test_unknown_words_still_tokenize(course):
    _, tok = course
    ids = tok("zebra xylophone").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) > 4


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


def test_shipped_folder_has_both_layouts():
    path = hub.course_path("course/clip-shapes")
    for f in ("config.json", "model.safetensors", "open_clip_config.json", "open_clip_model.safetensors",
              "tokenizer.json", "preprocessor_config.json"):
        assert (path / f).is_file(), f
    size_mb = sum(p.stat().st_size for p in path.iterdir()) / 1e6
    assert size_mb < 10, size_mb


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
        a = clip.encode_images(model, images)
        b = oc_model.encode_image(clip.normalize_images(images), normalize=True)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        a = clip.encode_texts(model, tok, texts)
        b = oc_model.encode_text(ids, normalize=True)
        assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()
        assert torch.allclose(model.logit_scale, oc_model.logit_scale)


def test_preprocessing_agrees(course, open_clip_course):
    from transformers import CLIPImageProcessor

    _, preprocess, _ = open_clip_course
    path = hub.resolve("course/clip-shapes", verbose=False)
    image = shapes.make_scene(2_000_003).image  # 32 px PIL image
    ours = clip.normalize_images(shapes.pil_to_tensor(image)[None])
    hf = CLIPImageProcessor.from_pretrained(path)(images=image, return_tensors="pt").pixel_values
    oc = preprocess(image)[None]
    assert torch.allclose(ours, hf, atol=1e-5) and torch.allclose(ours, oc, atol=1e-5)


def test_converter_on_a_random_model(tmp_path):
    tok = clip.build_tokenizer(["a red circle", "a blue square"], context_length=12)
    cfg = clip.make_config(len(tok), tok.eos_token_id, tok.bos_token_id, vision_width=32, vision_layers=2,
                           vision_heads=2, text_width=32, text_layers=2, text_heads=2, embed_dim=16,
                           context_length=12, image_size=16, patch_size=4)
    model = clip.build_model(cfg).eval()
    clip.save_pretrained(model, tok, tmp_path)
    oc, _, _ = open_clip.create_model_and_transforms("local-dir:" + str(tmp_path))
    oc_tok = open_clip.get_tokenizer("local-dir:" + str(tmp_path))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(clip.encode_images(model, x), oc.eval().encode_image(clip.normalize_images(x), normalize=True), atol=1e-5)
        texts = ["a red circle", "a blue square", "a red square"]
        assert torch.allclose(clip.encode_texts(model, tok, texts), oc.encode_text(oc_tok(texts), normalize=True), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Zero-shot
# ---------------------------------------------------------------------------------------------
def test_zero_shot_classifier_matches_open_clip(course, open_clip_course):
    from open_clip.zero_shot_classifier import build_zero_shot_classifier

    model, tok = course
    oc_model, _, oc_tok = open_clip_course
    names = ["red circle", "blue square", "green cross"]
    ours = clip.zero_shot_classifier(lambda t: clip.encode_texts(model, tok, t), names, clip.TEMPLATES)
    ref = build_zero_shot_classifier(oc_model, oc_tok, names, clip.TEMPLATES, num_classes_per_batch=2,
                                     device="cpu", use_tqdm=False)
    assert ours.shape == (model.config.projection_dim, 3)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_zero_shot_input_checks():
    with pytest.raises(ValueError, match="slot"):
        clip.zero_shot_classifier(lambda t: torch.randn(len(t), 4), ["a"], ["no slot"])
    with pytest.raises(ValueError, match=r"\(5, 4\).*\(3, 2\)"):
        clip.zero_shot_predict(torch.randn(5, 4), torch.randn(3, 2))
    with pytest.raises(ValueError, match="unknown zero-shot task"):
        clip.class_prompts("size")


def test_shipped_model_zero_shot_smoke(course):
    # a quick check on 120 held-out scenes; the full measurement is benchmarks/bench_clip.py
    model, tok = course
    scenes = shapes.scenes("test", 120, n_objects=1, start=5000)
    feats = clip.embed_scenes(model, scenes)
    # shape-only prompts: 0.925 before the text augmentation, 0.983 with it
    for task, floor in (("color", 0.95), ("shape", 0.95), ("shape+color", 0.9)):
        acc = clip.zero_shot_accuracy(model, tok, scenes, task, image_features=feats)["accuracy"]
        assert acc >= floor, (task, acc)


def test_hub_ids_fall_back_to_the_course_clip():
    path = hub.resolve("open_clip/ViT-B-32/laion2b_s34b_b79k", online=False, verbose=False)
    assert hub.is_course_path(path) and path.endswith("clip-shapes")


# ---------------------------------------------------------------------------------------------
# Text augmentation (scripts/train_clip.py) and retrieval with duplicated captions
# ---------------------------------------------------------------------------------------------
def test_partial_captions_granularities(course):
    _, tok = course
    one = shapes.make_scene(7, n_objects=1)
    o = one.objects[0]
    caps = clip.partial_captions(one.objects, 40, seed=0)
    assert caps == clip.partial_captions(one.objects, 40, seed=0)  # deterministic
    assert all(o.shape in c or o.color in c for c in caps)
    other_colors = [c for c in shapes.COLORS if c != o.color]
    other_shapes = [s for s in shapes.SHAPES if s != o.shape]
    assert not any(w in c.split() or w + "." in c.split() for c in caps for w in other_colors + other_shapes)
    shape_only = [c for c in caps if o.color not in c]
    color_only = [c for c in caps if o.shape not in c]
    assert shape_only and color_only  # both granularities are generated
    multi = shapes.make_scene(0, objects=[{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"},
                                          {"shape": "square", "color": "blue"}])
    mcaps = set(clip.partial_captions(multi.objects, 40, seed=1))
    assert {"a circle and two squares.", "two squares and a circle."} & mcaps
    assert mcaps <= {"a circle and two squares.", "two squares and a circle."} | {
        f"{a} and {b} {n}." for a, b in (("red", "blue"), ("blue", "red")) for n in shapes.OBJECT_NOUNS}
    # every word is in the course vocabulary (no <|endoftext|> used as unknown inside the text)
    for c in caps + sorted(mcaps):
        assert tok.eos_token_id not in tok(c).input_ids[1:-1], c
    with pytest.raises(ValueError, match="at least one object"):
        clip.partial_captions([], 1, seed=0)


def test_retrieval_counts_identical_captions(course):
    model, tok = course
    scenes = shapes.scenes("test", 20, start=20_000)
    scenes = scenes + [scenes[0]]  # the same scene twice: same image, same caption
    r = clip.retrieval_recall(model, tok, scenes, caption_index=0)
    assert r["n_duplicated"] >= 2
    # identical rows and columns: at most one of the two copies can find its exact partner
    assert r["image_to_text_r1"] <= 20 / 21 + 1e-6 and r["text_to_image_r1"] <= 20 / 21 + 1e-6
    assert r["image_to_text_r1_dup_hits"] >= r["image_to_text_r1"]
    assert r["text_to_image_r1_dup_hits"] >= r["text_to_image_r1"]


def test_multi_positive_loss_reduces_to_clip_loss_and_counts_positives():
    img, txt = _unit(6, 8), _unit(6, 8)
    eye = torch.eye(6, dtype=torch.bool)
    assert torch.allclose(clip.clip_loss_multi_positive(img, txt, 10.0, eye), clip.clip_loss(img, txt, 10.0), atol=1e-10)
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
