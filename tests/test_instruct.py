"""course_utils.world.instruct: grounded instruction data for Shapes World (notebook 02)."""
import json
import random

import httpx
import pytest

from course_utils import chat, llava
from course_utils.world import instruct, shapes
from course_utils.world.shapes import ShapeObject

# A hand-made scene: a large red circle at the top left, a small blue square at the bottom right,
# a small red triangle at the top right.
OBJECTS = [ShapeObject("circle", "red", "large", 0.25, 0.25), ShapeObject("square", "blue", "small", 0.8, 0.8),
           ShapeObject("triangle", "red", "small", 0.8, 0.2)]


def test_the_context_round_trips_to_the_scene_objects():
    scene = shapes.make_scene(5)
    ctx = instruct.scene_context(scene)
    assert ctx.split("\n\n")[0].splitlines() == scene.captions
    back = instruct.objects_from_context(ctx)
    assert [(o.color, o.shape, o.size, o.region) for o in back] == \
        [(o.color, o.shape, o.size, o.region) for o in scene.objects]
    with pytest.raises(ValueError, match="boxes"):
        instruct.objects_from_context("a caption without boxes")
    with pytest.raises(ValueError, match="color"):
        instruct.objects_from_context("person: [0.1, 0.1, 0.2, 0.2]")


def test_the_generator_is_deterministic_varied_and_reads_the_messages():
    gen = instruct.GroundedGenerator()
    scene = shapes.make_scene(7)
    msgs = instruct.messages_for(scene, "conversation")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert gen(msgs) == gen(msgs)
    texts = {instruct.GroundedGenerator.respond(OBJECTS, "conversation", seed) for seed in range(30)}
    assert len(texts) == 30
    questions = {q for t in texts for q, _ in llava.parse_qa_blocks(t)}
    assert len(questions) >= 30
    answers = [a for t in texts for _, a in llava.parse_qa_blocks(t)]
    assert any(a.startswith("No") for a in answers) and any(a.startswith("Yes") for a in answers)
    with pytest.raises(ValueError, match="SYSTEM_PROMPTS"):
        gen([{"role": "system", "content": "Be nice."}, {"role": "user", "content": instruct.scene_context(scene)}])


def test_every_generated_answer_agrees_with_the_boxes():
    for scene in shapes.scenes("val", 40):
        objects = instruct.objects_from_context(instruct.scene_context(scene))
        for rtype in llava.RESPONSE_TYPES:
            text = instruct.GroundedGenerator.respond(objects, rtype, seed=scene.seed)
            assert instruct.check_answer(objects, text) == [], (scene, text)


@pytest.mark.parametrize("text,kind", [
    ("There are two objects in the image.", "count"),
    ("I can see no triangles.", "count"),
    ("The circle is blue.", "color"),
    ("The red object is a cross.", "shape"),
    ("There is a small red circle at the top left.", "size"),
    ("The red circle is at the bottom right.", "position"),
    ("Yes, the blue square is above the red circle.", "relation"),
    ("There is also a green cross in the center.", "hallucination"),
])
def test_the_checker_flags_each_kind_of_contradiction(text, kind):
    issues = instruct.check_answer(OBJECTS, text)
    assert [i.kind for i in issues] == [kind], issues


@pytest.mark.parametrize("text", [
    "There are three objects in the image.", "No, there is no green cross in the image.",
    "I do not see any blue circle.", "The large red circle sits at the top left.",
    "The blue square is to the right of the red circle.", "There are two red objects.",
    "At the top right there is a small red triangle.",
])
def test_the_checker_accepts_true_statements(text):
    assert instruct.check_answer(OBJECTS, text) == []


def test_corruptions_are_caught():
    rng = random.Random(0)
    text = instruct.GroundedGenerator.respond(OBJECTS, "detail", seed=3)
    for kind in instruct.CORRUPTIONS:
        bad = instruct.corrupt(OBJECTS, text, kind, rng)
        assert bad != text and instruct.check_answer(OBJECTS, bad), (kind, bad)
    scores = instruct.checker_scores(shapes.scenes("val", 20))
    assert scores["false_alarms"] == 0 and scores["recall"] > 0.9 and scores["corrupted"] > 200


def test_records_from_the_offline_backend_follow_llavas_format():
    scenes = shapes.scenes("train", 6, start=500)
    for rtype in llava.RESPONSE_TYPES:
        records = instruct.generate_records(scenes, instruct.offline_backend(), rtype)
        for scene, rec in zip(scenes, records):
            llava.check_llava_record(rec)
            assert rec["id"] == f"shapes-{scene.seed:07d}-{rtype}" and rec["type"] == rtype
            assert instruct.record_issues(scene.objects, rec) == []
    assert instruct.mixed_types(158).count("conversation") == 58 and instruct.mixed_types(158).count("detail") == 23


def test_the_openai_backend_runs_the_same_pipeline_on_a_recorded_answer(monkeypatch):
    """The online path end to end: the client sends the lecture's message list, its answer becomes a record."""
    monkeypatch.setenv(chat.ENV_API_KEY, "sk-never-used")
    scene = shapes.make_scene(42)
    recorded = instruct.GroundedGenerator.respond(scene.objects, "conversation", seed=1)
    seen = []

    def handler(request):
        seen.append(json.loads(request.content))
        return httpx.Response(200, json={"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                         "choices": [{"index": 0, "finish_reason": "stop",
                                                      "message": {"role": "assistant", "content": recorded}}]})

    backend = chat.OpenAIChat("gpt-4o", http_client=httpx.Client(transport=httpx.MockTransport(handler)))
    (rec,) = instruct.generate_records([scene], backend, "conversation")
    assert seen[0]["messages"] == instruct.messages_for(scene, "conversation")
    assert seen[0]["messages"][0]["content"] == llava.SYSTEM_PROMPTS["conversation"]
    assert rec["conversations"][1]["value"] == llava.parse_qa_blocks(recorded)[0][1]


def test_the_simple_expansion_lacks_diversity():
    scenes = shapes.scenes("train", 200)
    simple = instruct.diversity(instruct.simple_expansion_records(scenes))
    records = [r for k in llava.RESPONSE_TYPES for r in instruct.generate_records(scenes[:70], instruct.offline_backend(), k)]
    rich = instruct.diversity(records)
    assert simple["distinct_questions"] <= len(instruct.BRIEF_QUESTIONS) < rich["distinct_templates"]
    assert simple["answers_saying_no"] == 0 < rich["answers_saying_no"]
    assert rich["answer_words_std"] > 2 * simple["answer_words_std"]
