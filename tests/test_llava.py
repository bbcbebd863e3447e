"""course_utils.llava: the lecture's prompt pieces (notebook 02) and visual tokens (notebook 03)."""
import json
import re
from pathlib import Path

import pytest
import torch

from course_utils import llava

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "llava_lecture_example.json").read_text(encoding="utf-8"))


# ---- notebook 02: the prompt --------------------------------------------------------------------
def test_the_lecture_boxes_are_formatted_as_in_the_lecture():
    boxes = [(label, box) for label, box in FIXTURE["boxes"]]
    assert len(boxes) == 12
    assert llava.format_boxes(boxes, sep=", ") == FIXTURE["boxes_text"]
    assert llava.parse_boxes(FIXTURE["boxes_text"]) == [(lab, list(b)) for lab, b in boxes]


def test_the_lecture_context_has_captions_a_blank_line_and_one_box_per_line():
    ctx = llava.format_context(FIXTURE["captions"], FIXTURE["boxes"])
    caps, boxes = ctx.split("\n\n")
    assert caps.splitlines() == FIXTURE["captions"]
    assert boxes.splitlines()[1] == "person: [0.63, 0.222, 0.686, 0.516]"
    assert ", ".join(boxes.splitlines()) == FIXTURE["boxes_text"]


def test_boxes_are_rounded_to_three_decimals_and_checked():
    assert llava.format_box("red circle", [0.12345, 0.5, 0.98765, 1.0]) == "red circle: [0.123, 0.5, 0.988, 1.0]"
    with pytest.raises(ValueError, match="normalized"):
        llava.format_box("car", [10, 20, 30, 40])
    with pytest.raises(ValueError, match=r"x1, y1, x2, y2"):
        llava.format_box("car", [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="normalized"):
        llava.format_box("car", [0.5, 0.2, 0.3, 0.4])  # x2 < x1
    with pytest.raises(ValueError, match="caption"):
        llava.format_context([], FIXTURE["boxes"])


def _normalize(text: str) -> str:
    text = text.replace("**", "")
    text = re.sub(r"^- ", "", text, flags=re.M)
    return " ".join(text.split())


def test_the_conversation_system_prompt_is_the_lectures():
    raw = "\n".join(FIXTURE["conversation_system_prompt_lines"])
    lecture = raw.split('"content": f"""', 1)[1].rsplit('""}]', 1)[0].replace("```", "")
    assert _normalize(llava.SYSTEM_PROMPTS["conversation"]) == _normalize(lecture)


def test_each_response_type_has_its_own_system_prompt():
    assert set(llava.SYSTEM_PROMPTS) == set(llava.RESPONSE_TYPES) == set(llava.LLAVA_INSTRUCT_158K)
    assert sum(llava.LLAVA_INSTRUCT_158K.values()) == 158_000
    for kind in ("detail", "complex"):
        p = llava.SYSTEM_PROMPTS[kind]
        assert "bounding box" in p and "as if you were looking at the image" in p
    assert "Question:" in llava.SYSTEM_PROMPTS["complex"] and "detailed manner" in llava.SYSTEM_PROMPTS["detail"]


def test_the_message_list_is_built_as_in_the_lecture():
    fewshot = [{"context": "c1", "response": "r1"}, {"context": "c2", "response": "r2"}]
    msgs = llava.build_messages("SYS", fewshot, ["line 1", "line 2"])
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert [m["content"] for m in msgs] == ["SYS", "c1", "r1", "c2", "r2", "line 1\nline 2"]
    with pytest.raises(ValueError, match="context"):
        llava.build_messages("SYS", [{"question": "q"}], "x")


def test_question_answer_blocks_and_llava_records():
    turns = [("How many objects?", "Two."), ("Is there a red cross?", "No, there is no red cross.")]
    text = llava.format_qa_blocks(turns)
    assert text.startswith("Question:\nHow many objects?\n===\nAnswer:\nTwo.\n===")
    assert llava.parse_qa_blocks(text) == turns
    with pytest.raises(ValueError, match="Question"):
        llava.parse_qa_blocks("just some text")
    rec = llava.to_llava_record("000000033471", "000000033471.jpg", turns)
    assert rec["conversations"][0] == {"from": "human", "value": "<image>\nHow many objects?"}
    assert [t["from"] for t in rec["conversations"]] == ["human", "gpt", "human", "gpt"]
    assert "<image>" not in rec["conversations"][2]["value"]
    llava.check_llava_record(rec)
    bad = json.loads(json.dumps(rec))
    bad["conversations"][0]["value"] = "How many objects?"
    with pytest.raises(ValueError, match="<image>"):
        llava.check_llava_record(bad)
    with pytest.raises(ValueError, match="alternate"):
        llava.check_llava_record({**rec, "conversations": rec["conversations"][:3]})


def test_the_simple_expansion():
    assert llava.simple_expansion("Describe the image concisely.", "A red circle.") == \
        "Human: Describe the image concisely. <image> ### Assistant: A red circle. ###"


# ---- notebook 03: visual tokens -----------------------------------------------------------------
def test_projectors_have_llavas_structure_and_names():
    lin = llava.build_vision_projector("linear", 64, 32)
    assert isinstance(lin, torch.nn.Linear) and sum(p.numel() for p in lin.parameters()) == 64 * 32 + 32
    mlp = llava.build_vision_projector("mlp2x_gelu", 64, 32)
    assert list(mlp.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]  # upstream mm_projector.{0,2}
    assert isinstance(mlp[1], torch.nn.GELU)
    assert len(llava.build_vision_projector("mlp3x_gelu", 8, 8)) == 5
    with pytest.raises(ValueError, match="mlp2x_gelu"):
        llava.build_vision_projector("qformer", 8, 8)
    with pytest.raises(ValueError, match="identity"):
        llava.build_vision_projector("identity", 8, 4)


def test_image_features_drop_cls_from_the_chosen_layer():
    hs = [torch.full((2, 5, 3), float(k)) for k in range(4)]
    z = llava.select_image_features(hs)
    assert z.shape == (2, 4, 3) and z.unique().item() == 2.0   # layer -2, CLS dropped
    assert llava.select_image_features(hs, -1, "cls_patch").shape == (2, 5, 3)
    with pytest.raises(ValueError, match="patch"):
        llava.select_image_features(hs, -2, "spatial")


def test_merge_puts_features_at_the_image_positions_and_labels_skip_them():
    img = 9
    ids = torch.tensor([llava.expand_image_tokens([1, img, 4, 5, 6], img, 3)])   # (1, 7)
    assert ids.tolist() == [[1, 9, 9, 9, 4, 5, 6]]
    emb = torch.zeros(1, 7, 2)
    feats = torch.arange(6.0).view(1, 3, 2)
    merged = llava.merge_image_features(emb, ids, feats, img)
    assert merged[0, 1:4].tolist() == [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    assert merged[0, [0, 4, 5, 6]].abs().sum() == 0
    answer = torch.tensor([[0, 0, 0, 0, 0, 1, 1]])
    assert llava.answer_labels(ids, answer, img).tolist() == [[-100, -100, -100, -100, -100, 5, 6]]


def test_bad_image_inputs_raise_clear_errors():
    ids = torch.tensor([[1, 9, 9, 4]])
    emb = torch.zeros(1, 4, 2)
    with pytest.raises(ValueError, match="2 image tokens in the text, 3 features"):
        llava.merge_image_features(emb, ids, torch.zeros(1, 3, 2), 9)
    with pytest.raises(ValueError, match="no image token"):
        llava.merge_image_features(emb, torch.tensor([[1, 2, 3, 4]]), torch.zeros(1, 2, 2), 9)
    with pytest.raises(ValueError, match="width"):
        llava.merge_image_features(emb, ids, torch.zeros(1, 2, 3), 9)
    with pytest.raises(ValueError, match="exactly one image token"):
        llava.expand_image_tokens([1, 2, 3], 9, 4)


def _tiny_hf_llava():
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=16, patch_size=4)
    text = LlamaConfig(vocab_size=50, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.3)
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_index=49)
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(cfg).eval()


def test_from_scratch_forward_equals_transformers_llava():
    from course_utils.bridges.transformers_llava import llava_from_hf

    ref = _tiny_hf_llava()
    model = llava_from_hf(ref)
    assert isinstance(model, llava.Llava) and isinstance(model.multi_modal_projector, torch.nn.Sequential)
    n = (16 // 4) ** 2
    ids = torch.tensor([llava.expand_image_tokens([1, 49, 5, 6, 7], 49, n), llava.expand_image_tokens([1, 8, 49, 3, 2], 49, n)])
    px = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        want = ref(input_ids=ids, pixel_values=px).logits
        got = model(ids, px)
        no_image = ref(input_ids=ids.masked_fill(ids == 49, 0)).logits
    assert (want - no_image).abs().max() > 1e-2          # the image really changes the logits
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    ref.config.projector_hidden_act = "linear"           # LLaVA's H_v = W Z_v: two linear maps folded into one
    from transformers.activations import ACT2FN

    ref.model.multi_modal_projector.act = ACT2FN["linear"]
    model = llava_from_hf(ref)
    assert isinstance(model.multi_modal_projector, torch.nn.Linear)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, px), ref(input_ids=ids, pixel_values=px).logits, atol=1e-4, rtol=1e-4)


def test_visual_tokens_on_meta_and_in_bfloat16():
    from course_utils.llama import Llama

    for device, dtype in (("meta", torch.float32), ("cpu", torch.bfloat16)):
        lm = Llama(vocab_size=20, dim=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_dim=32)
        proj = llava.build_vision_projector("mlp2x_gelu", 8, 16).to(device, dtype)
        model = llava.Llava(lambda z: [z, z], proj, lm.to(device, dtype), image_token_id=19)  # "tower": its input
        ids = torch.tensor([[1] + [19] * 4 + [3, 4]], device=device)
        out = model(ids, torch.randn(1, 5, 8, device=device, dtype=dtype))     # CLS + 4 patches of width 8
        assert out.shape == (1, 7, 20) and out.dtype == dtype and out.device.type == device
        labels = llava.answer_labels(ids, ids > 2, 19)
        assert llava.shifted_lm_loss(out, labels).dtype == torch.float32


# ---- the course's tiny LLaVA (recipes.llava): built from the shipped CLIP and llama-tiny ----------
@pytest.fixture(scope="module")
def course_llava():
    from course_utils.recipes import llava as R

    tok = R.build_tokenizer(n_instruction_scenes=30)
    return R, tok, R.build_model(tok), R.build_processor(tok)


def test_the_course_tokenizer_keeps_llama_tinys_ids_and_adds_image(course_llava):
    from course_utils.world.text import shapes_tokenizer

    R, tok, _, _ = course_llava
    base = shapes_tokenizer()
    assert all(tok.convert_tokens_to_ids(w) == i for w, i in base.get_vocab().items())
    image_id = tok.convert_tokens_to_ids("<image>")
    assert image_id == base.vocab_size and tok.encode("<image>\nwhat color is the circle ?")[0] == image_id
    text = tok.apply_chat_template([{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Q?"}]}],
                                   tokenize=False, add_generation_prompt=True)
    assert text == "USER: <image>\nQ? ASSISTANT:"


def test_a_conversation_is_encoded_as_the_chat_template_writes_it(course_llava):
    R, tok, _, _ = course_llava
    questions, answers = ("What color is the circle?", "How many objects are there?"), ("red", "2")
    ids, mask = R.encode(tok, 3, questions, answers)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": questions[0]}]},
                {"role": "assistant", "content": answers[0]},
                {"role": "user", "content": questions[1]}, {"role": "assistant", "content": answers[1]}]
    text = tok.apply_chat_template(messages, tokenize=False)
    image_id = tok.convert_tokens_to_ids("<image>")
    want = [tok.bos_token_id] + llava.expand_image_tokens(tok.encode(text, add_special_tokens=False), image_id, 3)
    assert ids == want                                   # the template's layout, the image only in the first turn
    assert ids.count(image_id) == 3
    assert tok.convert_ids_to_tokens([i for i, m in zip(ids, mask) if m]) == ["red", tok.eos_token, "2", tok.eos_token]
    single = R.encode(tok, 3, questions[0], answers[0])
    assert single == (ids[:len(single[0])], mask[:len(single[0])])    # one turn = the conversation's first turn
    with pytest.raises(ValueError):
        R.encode(tok, 3, questions, answers[:1])          # a question without its answer


def test_multiple_choice_prompts_use_the_lectures_wording_and_known_words(course_llava):
    from course_utils.world import shapes

    R, tok, _, _ = course_llava
    scene = shapes.make_scene(7, n_objects=2)
    qa = scene.multiple_choice[0]
    naive, explicit = R.mc_prompt(qa, "naive"), R.mc_prompt(qa, "explicit")
    assert naive.endswith("\nPlease select the correct answer from the options above.")
    assert "Final Answer: <answer>" in explicit and explicit.endswith("Only include the letter.")
    assert "\nOptions:\nA. " in naive
    import random

    rng = random.Random(0)
    for style in ("naive", "explicit"):
        text = R.mc_prompt(qa, style) + " " + R.mc_response(qa, style, rng)
        assert tok.unk_token_id not in tok.encode(text, add_special_tokens=False), style   # every word has an id
    assert R.mc_response(qa, "explicit", rng).endswith(f"Final Answer: {qa.answer}")
    assert "Final Answer" not in R.mc_response(qa, "naive", rng)
    with pytest.raises(ValueError, match="prompt style"):
        R.mc_prompt(qa, "chain-of-thought")
    with pytest.raises(ValueError, match="multiple-choice"):
        R.mc_prompt(scene.qa[0], "naive")
    convs = R.conversation_examples(shapes.scenes("train", 20), max_turns=4, mc_rate=1.0)
    assert all(1 <= len(q) <= 5 and len(q) == len(a) for _, q, a, _ in convs)
    assert all(any("Options:" in x for x in q) for _, q, _, _ in convs)       # mc_rate 1: one MC turn each


def test_balanced_conversations_cover_every_kind_of_the_scene():
    from course_utils.recipes import llava as R

    scenes = R.scenes_1_to_3("train", 60)

    def covered(convs):
        hits = []
        for (i, qs, ans, _), s in zip(convs, scenes, strict=True):
            kind = {q.question: q.kind for q in s.qa}
            assert len(qs) == len(ans) == min(5, sum(q.kind in R.QA_KINDS for q in s.qa))
            hits.append({kind[q] for q in qs} == {q.kind for q in s.qa if q.kind in R.QA_KINDS})
        return hits

    # five turns, five kinds: round-robin puts one of each kind the scene has; a random subset often misses one
    assert all(covered(R.conversation_examples(scenes, max_turns=5, mc_rate=0.0, balance_kinds=True)))
    assert not all(covered(R.conversation_examples(scenes, max_turns=5, mc_rate=0.0)))


def test_z_v_is_the_penultimate_clip_layer_without_cls(course_llava):
    from transformers import CLIPVisionModel

    from course_utils import clip as clip_lecture, hub
    from course_utils.world import shapes

    R, tok, model, _ = course_llava
    clip = CLIPVisionModel.from_pretrained(hub.resolve("course/clip-shapes")).eval()
    px = clip_lecture.normalize_images(shapes.render_batch(shapes.scenes("val", 2)))
    with torch.no_grad():
        z_v = llava.select_image_features(clip(px, output_hidden_states=True).hidden_states)      # Z_v = g(X_v)
        h_v = torch.stack(list(model.model.get_image_features(pixel_values=px).pooler_output))  # per image
    assert z_v.shape == (2, 64, 64)
    proj = model.model.multi_modal_projector
    torch.testing.assert_close(h_v.reshape(2, 64, -1), proj(z_v), atol=1e-5, rtol=1e-5)


def test_the_course_llava_from_scratch_equals_transformers(course_llava):
    from course_utils.bridges.transformers_llava import llava_from_hf
    from course_utils.world import shapes

    R, tok, model, _ = course_llava
    ours = llava_from_hf(model)
    scenes = shapes.scenes("val", 2)
    batch = R.collate(tok, 64, shapes.render_batch(scenes), [(0, "What color is the circle?", "red", "color"),
                                                             (1, "How many objects are there?", "2", "count")])
    with torch.no_grad():
        want = model(input_ids=batch["input_ids"], pixel_values=batch["pixel_values"]).logits
        got = ours(batch["input_ids"], batch["pixel_values"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_the_model_card_code_path_runs_on_the_course_model(course_llava, tmp_path):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from course_utils import clip as clip_lecture
    from course_utils.world import shapes

    R, tok, model, processor = course_llava
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    model2 = AutoModelForImageTextToText.from_pretrained(tmp_path).eval()
    proc2 = AutoProcessor.from_pretrained(tmp_path)
    image = shapes.make_scene(3).image
    inputs = proc2(images=image, text=proc2.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}],
        add_generation_prompt=True), return_tensors="pt")
    assert int((inputs["input_ids"] == model.config.image_token_index).sum()) == 64   # CLS dropped: 8 x 8 patches
    # the processor gives the pixels training used (clip.normalize_images on the 32-px rendering)
    torch.testing.assert_close(inputs["pixel_values"], clip_lecture.normalize_images(
        shapes.render_batch([shapes.make_scene(3)])), atol=1e-5, rtol=0)
    assert R.ask(model2, proc2, image, "What color is the circle?") == R.ask(model, processor, image, "What color is the circle?")
    with pytest.raises(ValueError, match="doesn't match model"):                    # a wrong image size
        model(input_ids=inputs["input_ids"], pixel_values=torch.zeros(1, 3, 64, 64))
    with pytest.raises(ValueError, match="[Ii]mage features and image tokens do not match"):
        model(input_ids=inputs["input_ids"][:, 10:], pixel_values=inputs["pixel_values"])


def test_the_chat_rejects_bad_questions_clearly(course_llava):
    from course_utils.world import shapes

    R, tok, model, processor = course_llava
    image = shapes.make_scene(3).image
    for image_, question, match in ((None, "What color is the circle?", "pass a PIL image"),
                                    (image, "", "non-empty string"), (image, 3, "non-empty string"),
                                    (image, "<image> What color is the circle?", "do not write <image>")):
        with pytest.raises(ValueError, match=match):
            R.ask(model, processor, image_, question)


LLAVA_15 = Path(__file__).parent / "fixtures" / "hub_configs" / "llava-hf--llava-1.5-7b-hf.json"


def test_llava_15_calls_run_on_a_hub_shaped_model(tmp_path):
    """Notebook 03's "Pipeline real" calls (``load_llava`` + ``ask``), offline, on a tiny random model with
    llava-hf/llava-1.5-7b-hf's structure saved as the hub repo is."""
    from course_utils.bridges.transformers_llava import llava_from_hf
    from course_utils.recipes import llava as R
    from course_utils.world import shapes

    R.hub_shaped_model(LLAVA_15).save_pretrained(tmp_path)
    R.tiny_processor(LLAVA_15).save_pretrained(tmp_path)
    model, processor = R.load_llava(str(tmp_path))
    c = model.config
    assert (c.image_token_index, c.pad_token_id, c.text_config.vocab_size) == (32000, 32001, 32064)
    assert (c.vision_feature_layer, c.vision_feature_select_strategy, c.projector_hidden_act) == (-2, "default", "gelu")
    assert c.vision_config.hidden_act == "quick_gelu" and c.vision_config.patch_size == 14
    image = shapes.make_scene(5, size=64).image
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What color is the circle?"}]}]
    prompt = processor.apply_chat_template(conversation, add_generation_prompt=True)
    assert prompt == "USER: <image>\nWhat color is the circle? ASSISTANT:"
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    assert inputs["pixel_values"].shape == (1, 3, 56, 56)            # resized and center-cropped to the tower's size
    ids = inputs["input_ids"][0]
    assert ids[0] == 1 and int((ids == 32000).sum()) == c.image_seq_length == (56 // 14) ** 2   # <s>, CLS dropped
    answer = R.ask(model, processor, image, "What color is the circle?", max_new_tokens=3)
    assert isinstance(answer, str) and len(answer.split()) == 3     # random weights: 3 words, meaningless
    with torch.no_grad():                                          # the from-scratch forward on this structure too
        want = model(**inputs).logits
        got = llava_from_hf(model)(inputs["input_ids"], inputs["pixel_values"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="LLaVA config"):
        R.read_hub_config({"model_type": "mllama"})


def test_the_llava_calls_and_the_bridge_follow_bfloat16():
    from course_utils.bridges.transformers_llava import llava_from_hf
    from course_utils.recipes import llava as R
    from course_utils.world import shapes

    model, processor = R.hub_shaped_model(LLAVA_15).to(torch.bfloat16), R.tiny_processor(LLAVA_15)
    image = shapes.make_scene(7, size=64).image
    assert len(R.ask(model, processor, image, "What color is the circle?", max_new_tokens=2).split()) == 2
    inputs = processor(images=image, text="USER: <image>\nWhat is it? ASSISTANT:", return_tensors="pt")
    ours = llava_from_hf(model)
    assert next(ours.language_model.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        px = inputs["pixel_values"].to(torch.bfloat16)
        want, got = model(input_ids=inputs["input_ids"], pixel_values=px).logits, ours(inputs["input_ids"], px)
    assert got.dtype == torch.bfloat16 and (got.float() - want.float()).abs().max() < 0.1 * want.float().abs().max()


def test_the_training_script_runs_both_stages_and_saves(tmp_path, capsys):
    import importlib.util

    from course_utils import config

    spec = importlib.util.spec_from_file_location("train_llava", config.REPO_ROOT / "scripts" / "train_llava.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    script.main(["--train-scenes", "60", "--test-scenes", "30", "--eval-per-kind", "4", "--stage1-steps", "2",
                 "--stage2-steps", "2", "--batch-size", "4", "--tower-layers", "1", "--threads", "1",
                 "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "[stage 1]" in out and "[stage 2]" in out and "text only" in out
    report = json.loads(out.strip().splitlines()[-1])
    assert set(report["stages"][-1]["accuracy"]) == {"color", "count", "existence", "position", "shape", "overall"}
    assert (tmp_path / "config.json").exists() and (tmp_path / "chat_template.jinja").exists()
    saved = json.loads((tmp_path / "training_info.json").read_text())
    assert saved["args"]["stage2_steps"] == 2 and saved["parameters"] == sum(
        p.numel() for p in __import__("transformers").LlavaForConditionalGeneration.from_pretrained(tmp_path).parameters())
    # the shipped model is what the script's defaults train: `python scripts/train_llava.py --out ...` reproduces it
    from course_utils import hub

    shipped = json.loads((hub.course_path("course/llava-shapes") / "training_info.json").read_text())
    # threads, device and eval_every (held-out measurements during training, no effect on it) do not change the recipe
    skip = ("out", "threads", "device", "eval_every")
    defaults = {k: v for k, v in vars(script.parser().parse_args([])).items() if k not in skip}
    assert {k: shipped["args"][k] for k in defaults} == defaults
    assert shipped["ablations"][-1]["accuracy"] == shipped["stages"][-1]["accuracy"]
    # notebook 07's model: the command in the script's docstring, from the shipped model
    mc = json.loads((hub.course_path("course/llava-shapes-mc") / "training_info.json").read_text())
    command = script.__doc__.split("python scripts/train_llava.py --init", 1)[1].split("\n\n", 1)[0]
    argv = ["--init"] + command.replace("\\\n", " ").split()
    documented = {k: v for k, v in vars(script.parser().parse_args(argv)).items() if k not in skip}
    assert {k: mc["args"][k] for k in documented} == documented
