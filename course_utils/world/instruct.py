"""LLaVA-style instruction data for Shapes World (notebook 02).

- ``scene_context(scene)``: the lecture's two contexts (five captions, ``label: [x1, y1, x2, y2]`` boxes);
  ``objects_from_context(text)`` reads the objects back from the boxes -- all the truth a chat model sees.
- ``GroundedGenerator``: an offline stand-in for GPT-4. It reads the same messages a chat model gets
  (system prompt -> response type, last user message -> boxes) and writes a conversation, a detailed
  description or a complex-reasoning question with its answer, deterministically (seeded by the context)
  and with variety: several phrasings per question type, answers that sometimes say "no".
  ``offline_backend()`` wraps it in ``course_utils.chat.OfflineChat``.
- ``generate_records(scenes, backend, response_type)``: messages -> back end -> LLaVA JSON records.
- ``check_answer(objects, text)``: a fact checker that flags claims contradicting the boxes (count,
  color, shape, size, position, relation, things said to be there that are not); ``corrupt(...)`` makes
  deliberately wrong answers to measure it.
- ``simple_expansion_records`` and ``diversity``: the naive ``Human: X_q X_v <STOP> Assistant: X_c <STOP>``
  data and the measurements of why it lacks diversity.
"""
from __future__ import annotations

import random
import re
import statistics
import zlib
from dataclasses import dataclass
from typing import Sequence

from .. import llava
from ..chat import ChatBackend, OfflineChat
from . import shapes
from .shapes import COLORS, REGIONS, SHAPES, ShapeObject, relation

NUMBERS = ("no", "one", "two", "three", "four")
REGION_WORDS = sorted({r for row in REGIONS for r in row}, key=len, reverse=True)
NOUNS = ("objects", "shapes", "figures")
# LLaVA's instructions for brief descriptions (the paper's Table 8, used by the simple expansion).
BRIEF_QUESTIONS = (
    "Describe the image concisely.", "Provide a brief description of the given image.",
    "Offer a succinct explanation of the picture presented.", "Summarize the visual content of the image.",
    "Give a short and clear explanation of the subsequent image.", "Share a concise interpretation of the image provided.",
    "Present a compact description of the photo's key features.", "Relay a brief, clear account of the picture shown.",
    "Render a clear and concise summary of the photo.", "Write a terse but informative summary of the picture.",
    "Create a compact narrative representing the image presented.")
# Questions paired with a detailed description (LLaVA's detail_23k draws one per sample).
DETAIL_QUESTIONS = (
    "Describe the following image in detail.", "What do you see in this image? Describe it thoroughly.",
    "Can you give a detailed description of this picture?", "Explain the visual content of the image in great detail.",
    "Walk me through everything that is in this image.", "Write a detailed account of the scene shown here.")


# ============================================================================================
# Contexts: what the chat model sees
# ============================================================================================
def scene_context(scene: shapes.Scene, box_sep: str = "\n") -> str:
    """Five captions, a blank line, then one ``color shape: [x1, y1, x2, y2]`` box per object."""
    return llava.format_context(scene.captions, [(o.label, o.box) for o in scene.objects], box_sep)


def objects_from_context(text: str) -> list[ShapeObject]:
    """Shapes World objects from the boxes in a context (size from the box width, center from its middle)."""
    objects = []
    for label, (x1, y1, x2, y2) in llava.parse_boxes(text):
        words = label.split()
        if len(words) != 2 or words[0] not in COLORS or words[1] not in SHAPES:
            raise ValueError(f"box label {label!r} is not '<color> <shape>' (colors: {', '.join(COLORS)}; "
                             f"shapes: {', '.join(SHAPES)})")
        half = (x2 - x1) / 2
        size = min(shapes.SIZES, key=lambda s: abs(shapes.SIZES[s] - half))
        objects.append(ShapeObject(words[1], words[0], size, (x1 + x2) / 2, (y1 + y2) / 2))
    if not objects:
        raise ValueError("no 'label: [x1, y1, x2, y2]' boxes in the context: the generator is grounded in them")
    return objects


# ============================================================================================
# Phrases
# ============================================================================================
def _plural(shape: str) -> str:
    return shape + ("es" if shape.endswith("s") else "s")


def _count_phrase(n: int, color: str | None = None, shape: str | None = None, noun: str = "objects") -> str:
    """``"two red circles"``, ``"one square"``, ``"no blue objects"``."""
    head = (shape if n == 1 else _plural(shape)) if shape else (noun[:-1] if n == 1 else noun)
    return " ".join([NUMBERS[n]] + ([color] if color else []) + [head])


def _at(region: str) -> str:
    """"in the center", "on the left", "at the top right"."""
    return {"center": "in the center", "left": "on the left", "right": "on the right"}.get(region, f"at the {region}")


def _where(o: ShapeObject) -> str:
    return _at(o.region)


def _ref(o: ShapeObject, objects: Sequence[ShapeObject]) -> str | None:
    """A unique name: "the red circle" or "the small red circle"; None when ambiguous."""
    same = [p for p in objects if (p.color, p.shape) == (o.color, o.shape)]
    if len(same) == 1:
        return f"the {o.color} {o.shape}"
    if sum(p.size == o.size for p in same) == 1:
        return f"the {o.size} {o.color} {o.shape}"
    return None


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _list(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _absent(objects, rng) -> tuple[str, str]:
    present = {(o.color, o.shape) for o in objects}
    return rng.choice([(c, s) for c in COLORS for s in SHAPES if (c, s) not in present])


# ============================================================================================
# The grounded generator (an offline GPT-4 for Shapes World)
# ============================================================================================
def _q_count(objects, rng):
    noun, n = rng.choice(NOUNS), len(objects)
    q = rng.choice(["How many {n} are there in the image?", "How many {n} can you see?",
                    "Can you count the {n} in the picture?", "What is the number of {n} in this image?"]).format(n=noun)
    a = rng.choice(["There are {c} in the image.", "I can see {c}.", "The image contains {c}."])
    if n == 1:
        a = rng.choice(["There is only {c} in the image.", "I can see just {c}."])
    return q, a.format(c=_count_phrase(n, noun=noun))


def _q_count_some(objects, rng):
    if rng.random() < 0.5:
        color = rng.choice(list(COLORS))
        n, q = sum(o.color == color for o in objects), rng.choice(
            ["How many {c} objects are there?", "How many {c} shapes do you see?", "Count the {c} figures, please."])
        q, phrase = q.format(c=color), _count_phrase(sum(o.color == color for o in objects), color=color)
    else:
        shape = rng.choice(SHAPES)
        n, q = sum(o.shape == shape for o in objects), rng.choice(
            ["How many {p} are in the image?", "How many {p} can you count?", "Are there any {p}? How many?"])
        q, phrase = q.format(p=_plural(shape)), _count_phrase(n, shape=shape)
    if n == 0:
        return q, rng.choice([f"There are {phrase} in the image.", f"None: I see {phrase} here.",
                              f"Zero. The picture has {phrase}."])
    return q, rng.choice([f"I can see {phrase}.", f"There {'is' if n == 1 else 'are'} {phrase} in the image."])


def _q_color(objects, rng):
    o = rng.choice([o for o in objects if sum(p.shape == o.shape for p in objects) == 1] or [None])
    if o is None:
        return None
    q = rng.choice(["What color is the {s}?", "Which color does the {s} have?", "Can you tell me the color of the {s}?"])
    a = rng.choice(["The {s} is {c}.", "It is {a}.", "The {s} in the image is {c}."])
    return q.format(s=o.shape), a.format(s=o.shape, c=o.color, a=_a(f"{o.color} {o.shape}"))


def _q_shape(objects, rng):
    o = rng.choice([o for o in objects if sum(p.color == o.color for p in objects) == 1] or [None])
    if o is None:
        return None
    q = rng.choice(["What shape is the {c} object?", "What kind of figure is the {c} one?", "Which shape is {c}?"])
    a = rng.choice(["The {c} object is {a}.", "It is {a}.", "The {c} one is {a}."])
    return q.format(c=o.color), a.format(c=o.color, a=_a(o.shape))


def _q_exists(objects, rng):
    q = rng.choice(["Is there {x} in the image?", "Do you see any {y}?", "Can you find {x} in the picture?"])
    if rng.random() < 0.5:
        o = rng.choice(objects)
        x = f"{o.color} {o.shape}"
        a = rng.choice([f"Yes, there is {_a(x)} {_where(o)}.", f"Yes, I can see {_a(x)} {_where(o)} of the image."])
    else:
        c, s = _absent(objects, rng)
        x = f"{c} {s}"
        a = rng.choice([f"No, there is no {x} in the image.", f"No, I do not see any {x}.",
                        f"No. The image has no {x}."])
    return q.format(x=_a(x), y=x), a


def _q_position(objects, rng):
    o = rng.choice(objects)
    ref = _ref(o, objects)
    if ref is None:
        return None
    q = rng.choice(["Where is {r}?", "In which part of the image is {r}?", "Where can I find {r}?"]).format(r=ref)
    a = rng.choice(["{R} is {w} of the image.", "You can find {r} {w}.", "{R} sits {w}."])
    return q, a.format(R=ref[0].upper() + ref[1:], r=ref, w=_where(o))


def _q_relation(objects, rng):
    pairs = [(a, b) for a in objects for b in objects if a is not b and _ref(a, objects) and _ref(b, objects)]
    if not pairs:
        return None
    a, b = rng.choice(pairs)
    ra, rb, rel = _ref(a, objects), _ref(b, objects), relation(a, b)
    truth = rng.random() < 0.5
    asked = rel if truth else rng.choice([r for r in shapes.RELATIONS if r != rel and _holds(a, b, r) is False])
    q = rng.choice(["Is {a} {r} {b}?", "Would you say that {a} is {r} {b}?"]).format(a=ra, r=asked, b=rb)
    if truth:
        return q, f"Yes, {ra} is {rel} {rb}."
    return q, rng.choice([f"No, {ra} is {rel} {rb}.", f"No. Actually {ra} is {rel} {rb}."])


QUESTION_TYPES = {"count": _q_count, "count_some": _q_count_some, "color": _q_color, "shape": _q_shape,
                  "existence": _q_exists, "position": _q_position, "relation": _q_relation}


def _conversation(objects, rng) -> list[tuple[str, str]]:
    kinds = rng.sample(list(QUESTION_TYPES), rng.randint(3, 5))
    turns = [t for t in (QUESTION_TYPES[k](objects, rng) for k in kinds) if t is not None]
    return turns or [_q_count(objects, rng)]


def _describe_object(o, objects, rng) -> str:
    x = f"{o.size} {o.color} {o.shape}"
    return rng.choice([f"{_where(o)[0].upper() + _where(o)[1:]} there is {_a(x)}.",
                       f"There is {_a(x)} {_where(o)}.", f"{_a(x)[0].upper() + _a(x)[1:]} appears {_where(o)}."])


def _detail(objects, rng) -> str:
    n, noun = len(objects), rng.choice(NOUNS)
    opening = rng.choice([f"The image shows {_count_phrase(n, noun=noun)} on a plain light background.",
                          f"This is a simple picture with {_count_phrase(n, noun=noun)} on an empty, light background."])
    if n == 1:
        opening = rng.choice([f"The image shows a single {objects[0].shape} on a plain light background.",
                              f"This is a simple picture with just one {objects[0].shape} on an empty background."])
    body = [_describe_object(o, objects, rng) for o in rng.sample(list(objects), n)]
    refs = [(a, b) for a in objects for b in objects if a is not b and _ref(a, objects) and _ref(b, objects)]
    if refs:
        a, b = rng.choice(refs)
        body.append(f"{_ref(a, objects).capitalize()} is {relation(a, b)} {_ref(b, objects)}.")
    by_color = {c: sum(o.color == c for o in objects) for c in COLORS}
    if n > 1 and max(by_color.values()) == n:
        body.append(f"All of them are {objects[0].color}.")
    elif n > 1:
        body.append(f"Each one has its own color." if max(by_color.values()) == 1 else
                    f"Some colors repeat: there are {_count_phrase(max(by_color.values()), color=max(by_color, key=by_color.get))}.")
    return " ".join([opening] + body)


def _complex(objects, rng) -> tuple[str, str]:
    n = len(objects)
    names = [f"{_a(o.color + ' ' + o.shape)} {_where(o)}" for o in objects]
    seen = f"I can see {_count_phrase(n)}: {_list(names)}." if n > 1 else f"There is only one object: {names[0]}."
    kind = rng.choice(["remove", "order", "same_color", "missing"] if n > 1 else ["remove", "missing"])
    if kind == "remove":
        color = rng.choice([o.color for o in objects] + [rng.choice(list(COLORS))])
        gone = [o for o in objects if o.color == color]
        rest = [o for o in objects if o.color != color]
        q = rng.choice([f"If all the {color} things were taken away, what would be left in the picture?",
                        f"Imagine removing every {color} object. What remains?"])
        left = f"what remains is {_list([_a(o.color + ' ' + o.shape) for o in rest])}." if rest else "nothing would be left."
        step = (f"There {'is' if len(gone) == 1 else 'are'} {_count_phrase(len(gone), color=color)}, so "
                if gone else f"There are no {color} objects, so nothing changes and ")
        return q, f"{seen} {step}{left}"
    if kind == "order":
        q = rng.choice(["Could you list the objects from left to right?", "Reading the picture from left to right, "
                        "in what order do the objects appear?"])
        order = sorted(objects, key=lambda o: o.cx)
        return q, f"{seen} From left to right the order is: {_list([_a(o.color + ' ' + o.shape) for o in order])}."
    if kind == "same_color":
        q = rng.choice(["Do all the objects share the same color? Explain.", "Is this picture monochrome or colorful?"])
        colors = sorted({o.color for o in objects})
        verdict = (f"So yes, every object is {colors[0]}." if len(colors) == 1 else
                   f"So no: they use {NUMBERS[len(colors)]} different colors ({_list(colors)}).")
        return q, f"{seen} {verdict}"
    missing = [s for s in SHAPES if all(o.shape != s for o in objects)]
    q = rng.choice(["Which of the four basic shapes (circle, square, triangle, cross) are missing from the picture?",
                    "What shapes would you have to add so that every kind of shape appears?"])
    verdict = (f"Every kind of shape already appears, so none is missing." if not missing else
               f"So the missing {'shape is the' if len(missing) == 1 else 'shapes are the'} {_list(missing)}.")
    return q, f"{seen} {verdict}"


class GroundedGenerator:
    """Offline GPT-4 stand-in: ``messages -> response`` grounded in the boxes of the last user message.

    The response type comes from the system prompt (``llava.SYSTEM_PROMPTS``); the output has the format
    a chat model is asked for (``Question:/===/Answer:`` blocks for conversation and complex reasoning,
    the answer only for detailed description). Seeded by the context, so the same query gives the same text.
    """

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, messages: Sequence[dict]) -> str:
        system = messages[0]["content"] if messages and messages[0]["role"] == "system" else ""
        kind = next((k for k, p in llava.SYSTEM_PROMPTS.items() if p == system), None)
        if kind is None:
            raise ValueError("the offline generator needs one of llava.SYSTEM_PROMPTS as the system message")
        context = messages[-1]["content"]
        return self.respond(objects_from_context(context), kind, zlib.crc32(f"{self.seed}|{kind}|{context}".encode()))

    @staticmethod
    def respond(objects: Sequence[ShapeObject], response_type: str, seed: int) -> str:
        rng = random.Random(seed)
        if response_type == "conversation":
            return llava.format_qa_blocks(_conversation(objects, rng))
        if response_type == "detail":
            return _detail(objects, rng)
        if response_type == "complex":
            return llava.format_qa_blocks([_complex(objects, rng)])
        raise ValueError(f"unknown response type {response_type!r}; use one of {llava.RESPONSE_TYPES}")


def offline_backend(seed: int = 0) -> OfflineChat:
    """The grounded generator behind the chat interface (``course_utils.chat``)."""
    return OfflineChat(GroundedGenerator(seed), name="offline-grounded")


# ============================================================================================
# Messages -> records
# ============================================================================================
FEWSHOT_SEEDS = (11, 23)  # train scenes whose (checked) responses serve as the hand-written examples


def fewshot_samples(response_type: str, seeds: Sequence[int] = FEWSHOT_SEEDS) -> list[dict]:
    """``{"context", "response"}`` pairs for the message list (LLaVA wrote these by hand)."""
    out = []
    for s in seeds:
        scene = shapes.make_scene(s)
        out.append({"context": scene_context(scene),
                    "response": GroundedGenerator.respond(scene.objects, response_type, seed=s)})
    return out


def messages_for(scene: shapes.Scene, response_type: str, fewshot: Sequence[dict] | None = None) -> list[dict]:
    """The lecture's message list for one scene: system prompt, few-shot pairs, the scene's context."""
    if response_type not in llava.SYSTEM_PROMPTS:
        raise ValueError(f"unknown response type {response_type!r}; use one of {llava.RESPONSE_TYPES}")
    fewshot = fewshot_samples(response_type) if fewshot is None else fewshot
    return llava.build_messages(llava.SYSTEM_PROMPTS[response_type], fewshot, scene_context(scene))


def record_id(scene: shapes.Scene, response_type: str) -> str:
    return f"shapes-{scene.seed:07d}-{response_type}"


def image_name(scene: shapes.Scene) -> str:
    return f"shapes/{scene.seed:07d}.png"


def to_record(scene: shapes.Scene, response_type: str, response: str) -> dict:
    """A chat model's response -> LLaVA JSON (the detail question is drawn per scene, as in detail_23k)."""
    if response_type == "detail":
        rng = random.Random(zlib.crc32(record_id(scene, response_type).encode()))
        turns = [(rng.choice(DETAIL_QUESTIONS), response.strip())]
    else:
        turns = llava.parse_qa_blocks(response)
    record = llava.to_llava_record(record_id(scene, response_type), image_name(scene), turns)
    record["type"] = response_type
    return record


def generate_records(scenes: Sequence[shapes.Scene], backend: ChatBackend, response_type: str) -> list[dict]:
    """One LLaVA record per scene from any back end (``OpenAIChat`` or ``offline_backend()``)."""
    fewshot = fewshot_samples(response_type)
    return [to_record(s, response_type, backend.complete(messages_for(s, response_type, fewshot))) for s in scenes]


def mixed_types(n: int, seed: int = 0) -> list[str]:
    """``n`` response types in LLaVA-158K's proportions (58K / 23K / 77K), deterministically shuffled."""
    total = sum(llava.LLAVA_INSTRUCT_158K.values())
    counts = {k: round(n * v / total) for k, v in llava.LLAVA_INSTRUCT_158K.items()}
    counts["complex"] += n - sum(counts.values())
    types = [k for k, c in counts.items() for _ in range(c)]
    random.Random(seed).shuffle(types)
    return types


# ============================================================================================
# Fact checking
# ============================================================================================
@dataclass(frozen=True)
class Issue:
    kind: str  # "count", "color", "shape", "size", "position", "relation", "hallucination"
    claim: str
    truth: str


_C = "|".join(COLORS)
_S = "|".join(SHAPES)
_NUM = r"(?P<num>no|zero|one|two|three|four|\d)"
_NP = rf"(?:(?P<size>small|large|big|little|tiny)\s+)?(?P<color>{_C})\s+(?P<shape>{_S})"
_NEG = re.compile(r"\b(?:no|not|any|n't|without|none)\s+(?:\w+\s+){0,2}$")
_SIZE_WORDS = {"big": "large", "little": "small", "tiny": "small"}
_WORD_NUM = {"no": 0, "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}
_COUNT = re.compile(rf"\b{_NUM}\s+(?:(?P<color>{_C})\s+)?(?P<head>(?:{_S})(?:e?s)?|objects?|shapes?|figures?)\b")
_ATTR_COLOR = re.compile(rf"\bthe\s+(?P<shape>{_S})\s+(?:in the image\s+)?is\s+(?P<color>{_C})\b")
_ATTR_SHAPE = re.compile(rf"\bthe\s+(?P<color>{_C})\s+(?:object|one|figure|shape)\s+is\s+an?\s+(?P<shape>{_S})\b")
_REGION = "|".join(REGION_WORDS)
_POS = re.compile(rf"{_NP}\s+(?:(?:is|sits|appears)\s+)?(?:at the|in the|on the)\s+(?P<region>{_REGION})\b")
_POS_FRONT = re.compile(rf"\b(?:at the|in the|on the)\s+(?P<region>{_REGION})\s+there is an?\s+{_NP}")
_REL = re.compile(rf"{_NP}\s+is\s+(?P<rel>to the left of|to the right of|above|below)\s+the\s+"
                  rf"(?:(?P<size2>small|large)\s+)?(?P<color2>{_C})\s+(?P<shape2>{_S})")


def _holds(a: ShapeObject, b: ShapeObject, rel: str) -> bool:
    """A relation claim is false when the opposite holds along its axis."""
    return {"to the left of": a.cx < b.cx, "to the right of": a.cx > b.cx,
            "above": a.cy < b.cy, "below": a.cy > b.cy}[rel]


def _match(objects, color=None, shape=None, size=None):
    size = _SIZE_WORDS.get(size, size)
    return [o for o in objects if (color is None or o.color == color) and (shape is None or o.shape == shape)
            and (size is None or o.size == size)]


def _missing_kind(objects, color, shape, size) -> tuple[str, str]:
    """Why "a <size> <color> <shape>" is false: the kind of error and what is there instead."""
    if _match(objects, color, shape):
        return "size", f"the {color} {shape} is {', '.join(o.size for o in _match(objects, color, shape))}"
    if _match(objects, shape=shape):
        return "color", f"the {shape} is {' / '.join(o.color for o in _match(objects, shape=shape))}"
    if _match(objects, color=color):
        return "shape", f"the {color} object is {' / '.join(_a(o.shape) for o in _match(objects, color=color))}"
    return "hallucination", f"there is no {color} {shape}"


def check_answer(objects: Sequence[ShapeObject], text: str) -> list[Issue]:
    """Claims in ``text`` that contradict the objects (the boxes), one ``Issue`` each."""
    issues: list[Issue] = []
    for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
        s = sentence.lower()
        if s.rstrip().endswith("?"):
            continue  # a question claims nothing
        for m in _COUNT.finditer(s):
            head = m.group("head")
            shape = next((x for x in SHAPES if head.startswith(x)), None)
            n_true, n_said = len(_match(objects, m.group("color"), shape)), _WORD_NUM.get(m.group("num"))
            n_said = int(m.group("num")) if n_said is None else n_said
            if n_said != n_true:
                issues.append(Issue("count", m.group(0), f"{n_true}"))
        counted = [m.span() for m in _COUNT.finditer(s)]
        for m in re.finditer(_NP, s):
            if any(a <= m.start() < b for a, b in counted) or _NEG.search(s[:m.start()]):
                continue  # a count (checked above) or a negation ("no blue square")
            if not _match(objects, m["color"], m["shape"], m["size"]):
                kind, truth = _missing_kind(objects, m["color"], m["shape"], m["size"])
                issues.append(Issue(kind, m.group(0), truth))
        for pattern, kind in ((_ATTR_COLOR, "color"), (_ATTR_SHAPE, "shape")):
            for m in pattern.finditer(s):
                if not _match(objects, m["color"], m["shape"]):
                    issues.append(Issue(kind, m.group(0), _missing_kind(objects, m["color"], m["shape"], None)[1]))
        for m in list(_POS.finditer(s)) + list(_POS_FRONT.finditer(s)):
            found = _match(objects, m["color"], m["shape"], m["size"])
            if found and all(o.region != m["region"] for o in found):
                issues.append(Issue("position", m.group(0), " / ".join(o.region for o in found)))
        for m in _REL.finditer(s):
            a, b = _match(objects, m["color"], m["shape"], m["size"]), _match(objects, m["color2"], m["shape2"], m["size2"])
            if a and b and not any(_holds(x, y, m["rel"]) for x in a for y in b):
                issues.append(Issue("relation", m.group(0), relation(a[0], b[0])))
    return issues


def record_issues(objects: Sequence[ShapeObject], record: dict) -> list[Issue]:
    """Issues in every ``gpt`` turn of a LLaVA record."""
    return [i for t in record["conversations"] if t["from"] == "gpt" for i in check_answer(objects, t["value"])]


CORRUPTIONS = ("count", "color", "shape", "position", "hallucination")


def corrupt(objects: Sequence[ShapeObject], text: str, kind: str, rng: random.Random) -> str | None:
    """A deliberately wrong version of a (correct) answer, or None when ``text`` offers no such claim.

    count: a number word changed; color / shape: one named object's color / shape swapped for one that is
    not in the scene with it; position: a region swapped; hallucination: an extra object that is not there.
    """
    if kind == "hallucination":
        present_c, present_s = {o.color for o in objects}, {o.shape for o in objects}
        options = [(c, s) for c in COLORS for s in SHAPES if c not in present_c and s not in present_s] or \
                  [(c, s) for c in COLORS for s in SHAPES if not _match(objects, c, s)]
        c, s = rng.choice(options)
        region = rng.choice(REGION_WORDS)
        return text.rstrip() + f" There is also {_a(c + ' ' + s)} {_at(region)}."
    if kind == "count":
        spots = [m for m in _COUNT.finditer(text.lower()) if not m["num"].isdigit()]
        if not spots:
            return None
        m = rng.choice(spots)
        new = rng.choice([w for w in NUMBERS if _WORD_NUM[w] != _WORD_NUM[m["num"]]])
        return text[:m.start("num")] + new + text[m.end("num"):]
    if kind in ("color", "shape"):
        spots = [m for m in re.finditer(rf"\b({_C})\s+({_S})\b", text)
                 if not re.search(r"\b(no|not|any)\s+$", text[:m.start()])]
        if not spots:
            return None
        m = rng.choice(spots)
        c, s = m.group(1), m.group(2)
        if kind == "color":
            new = [x for x in COLORS if not _match(objects, x, s)]
            return text[:m.start(1)] + rng.choice(new) + text[m.end(1):]
        new = [x for x in SHAPES if not _match(objects, c, x)]
        return text[:m.start(2)] + rng.choice(new) + text[m.end(2):]
    if kind == "position":
        spots = list(re.finditer(rf"\b(?:at the|in the|on the) ({_REGION})\b", text))
        if not spots:
            return None
        m = rng.choice(spots)
        new = rng.choice([r for r in REGION_WORDS if r != m.group(1) and r != "center"])
        return text[:m.start()] + _at(new) + text[m.end():]
    raise ValueError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")


def checker_scores(scenes: Sequence[shapes.Scene], seed: int = 0) -> dict:
    """Precision / recall of ``check_answer`` on clean answers and one corrupted copy per kind."""
    rng = random.Random(seed)
    tp = fp = fn = tn = 0
    per_kind = {k: [0, 0] for k in CORRUPTIONS}  # caught, total
    for scene in scenes:
        objects = objects_from_context(scene_context(scene))
        for rtype in llava.RESPONSE_TYPES:
            text = GroundedGenerator.respond(objects, rtype, seed=scene.seed)
            answers = " ".join(a for _, a in llava.parse_qa_blocks(text)) if rtype != "detail" else text
            flagged = bool(check_answer(objects, answers))
            fp, tn = fp + flagged, tn + (not flagged)
            for kind in CORRUPTIONS:
                bad = corrupt(objects, answers, kind, rng)
                if bad is None or bad == answers:
                    continue
                caught = bool(check_answer(objects, bad))
                tp, fn = tp + caught, fn + (not caught)
                per_kind[kind][0] += caught
                per_kind[kind][1] += 1
    return {"precision": tp / max(tp + fp, 1), "recall": tp / max(tp + fn, 1), "clean": fp + tn,
            "false_alarms": fp, "corrupted": tp + fn,
            "recall_by_kind": {k: c / max(t, 1) for k, (c, t) in per_kind.items()},
            "n_by_kind": {k: t for k, (_, t) in per_kind.items()}}


# ============================================================================================
# The simple expansion, and diversity
# ============================================================================================
def simple_expansion_records(scenes: Sequence[shapes.Scene], seed: int = 0) -> list[dict]:
    """``Human: X_q X_v <STOP> Assistant: X_c <STOP>``: a brief-description question and one caption."""
    rng = random.Random(seed)
    return [{**llava.to_llava_record(f"shapes-{s.seed:07d}-brief", image_name(s),
                                     [(rng.choice(BRIEF_QUESTIONS), rng.choice(s.captions))]), "type": "brief"}
            for s in scenes]


def diversity(records: Sequence[dict]) -> dict:
    """Distinct questions, question openings, answer lengths (words) and vocabulary of a record set."""
    questions = [t["value"].replace(llava.DEFAULT_IMAGE_TOKEN + "\n", "") for r in records
                 for t in r["conversations"] if t["from"] == "human"]
    answers = [t["value"] for r in records for t in r["conversations"] if t["from"] == "gpt"]
    lengths = [len(a.split()) for a in answers]
    words = {w.strip(".,:;!?()").lower() for a in answers for w in a.split()}
    slot = re.compile(rf"\b(?:{_C}|{_S}|circles|squares|triangles|crosses|{'|'.join(NUMBERS)}|small|large|{_REGION})\b")
    templates = {slot.sub("_", q.lower()) for q in questions}
    return {"turns": len(questions), "distinct_questions": len(set(questions)), "distinct_templates": len(templates),
            "distinct_openings": len({" ".join(q.split()[:2]).lower() for q in questions}),
            "answer_words_mean": statistics.fmean(lengths), "answer_words_std": statistics.pstdev(lengths),
            "answer_vocabulary": len(words),
            "answers_saying_no": sum(bool(re.match(r"(no|none|zero)\b", a.lower())) for a in answers) / len(answers)}
