"""LLaVA (notebooks 02-03): GPT-assisted instruction data and visual tokens for a language model.

Notebook 02 -- the data. GPT-4 never sees the image: it reads two symbolic contexts, five captions
("Context type 1") and ``label: [x1, y1, x2, y2]`` boxes ("Context type 2"), and writes three kinds of
response (conversation, detailed description, complex reasoning) from a system prompt, a few
hand-written examples and the query. ``format_context``, ``SYSTEM_PROMPTS``, ``build_messages``,
the conversation JSON helpers (``to_llava_record``) and ``simple_expansion`` are those pieces.

Notebook 03 -- the model. A vision encoder gives ``Z_v = g(X_v)`` (CLIP's penultimate layer without CLS:
``select_image_features``), a trainable projection gives ``H_v = W Z_v`` (``build_vision_projector``,
LLaVA's ``linear`` and LLaVA-1.5's ``mlp2x_gelu``), and the visual tokens replace the ``<image>``
positions of the text embeddings (``merge_image_features``); the loss only sees the answer
(``IGNORE_INDEX`` on image and prompt positions: ``answer_labels``). Names follow upstream
(haotian-liu/LLaVA ``llava/constants.py``, ``multimodal_projector/builder.py``; transformers'
``modeling_llava.py``).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

# llava/constants.py
IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200
DEFAULT_IMAGE_TOKEN = "<image>"
# The paper's <STOP> (LLaVA v1 follows Vicuna-v0 and uses "###").
STOP = "###"
RESPONSE_TYPES = ("conversation", "detail", "complex")
# The paper's 158K instruction-following samples, per response type.
LLAVA_INSTRUCT_158K = {"conversation": 58_000, "detail": 23_000, "complex": 77_000}

# ============================================================================================
# Notebook 02: the prompt GPT-4 reads
# ============================================================================================
_CONVERSATION = """You are an AI visual assistant, and you are seeing a single image. What you see are provided with five sentences, describing the same image you are looking at. Answer all questions as you are seeing the image.

Design a conversation between you and a person asking about this photo. The answers should be in a tone that a visual AI assistant is seeing the image and answering the question. Ask diverse questions and give corresponding answers.

Include questions asking about the visual content of the image, including the object types, counting the objects, object actions, object locations, relative positions between objects, etc. Only include questions that have definite answers:
(1) one can see the content in the image that the question asks about and can answer confidently;
(2) one can determine confidently from the image that it is not in the image. Do not ask any question that cannot be answered confidently.

Also include complex questions that are relevant to the content in the image, for example, asking about background knowledge of the objects in the image, asking to discuss about events happening in the image, etc. Again, do not ask about uncertain details. Provide detailed answers when answering complex questions. For example, give detailed examples or reasoning steps to make the content more convincing and well-organized. You can include multiple paragraphs if necessary."""

_BOXES = ("In addition, the locations of specific objects in the image are given as bounding boxes "
          "[x1, y1, x2, y2], with numbers between 0 and 1: the top-left and the bottom-right corners, "
          "x from left to right and y from top to bottom.")

_DETAIL = f"""You are an AI visual assistant that can analyze a single image. You receive five sentences, each describing the same image you are looking at. {_BOXES}

Using the captions and the bounding boxes, describe the scene in a detailed manner: what objects there are, how many of each, their colors and shapes, where they are and where they are relative to each other.

Do not mention the coordinates themselves: turn them into natural language ("at the top left", "to the right of the circle"). Do not say that the information comes from captions or boxes; always answer as if you were looking at the image. Only describe what can be seen with confidence."""

_COMPLEX = f"""You are an AI visual assistant that can analyze a single image. You receive five sentences, each describing the same image you are looking at. {_BOXES}

Using the captions and the bounding boxes, create a plausible question about the image that goes beyond describing the scene, and answer it in detail. To answer it one must first understand the visual content (which objects, how many, where) and then reason about it step by step: comparing, counting, checking what is and what is not there. Do not put the visual details in the question, so that the reader has to look at the image first.

Do not mention the coordinates themselves, and do not say that the information comes from captions or boxes; always answer as if you were looking at the image. Do not ask about uncertain details.

Write the question after "Question:" and the answer after "Answer:", separated by a line "==="."""

SYSTEM_PROMPTS = {"conversation": _CONVERSATION, "detail": _DETAIL, "complex": _COMPLEX}


def format_box(label: str, box: Sequence[float]) -> str:
    """``"person: [0.681, 0.242, 0.774, 0.694]"``: normalized corners rounded to 3 decimals."""
    if len(box) != 4:
        raise ValueError(f"a box is [x1, y1, x2, y2], got {len(box)} values for {label!r}")
    x1, y1, x2, y2 = (round(float(v), 3) for v in box)
    if not (0.0 <= x1 <= x2 <= 1.0 and 0.0 <= y1 <= y2 <= 1.0):
        raise ValueError(f"box of {label!r} must be normalized corners 0 <= x1 <= x2 <= 1, 0 <= y1 <= y2 <= 1; "
                         f"got {list(box)} (divide pixel coordinates by the image size)")
    return f"{label}: [{x1}, {y1}, {x2}, {y2}]"


def format_boxes(boxes: Sequence[tuple[str, Sequence[float]]], sep: str = ", ") -> str:
    """The lecture's "Context type 2: Boxes" from ``(label, [x1, y1, x2, y2])`` pairs."""
    return sep.join(format_box(label, box) for label, box in boxes)


def format_context(captions: Sequence[str], boxes: Sequence[tuple[str, Sequence[float]]], box_sep: str = "\n") -> str:
    """Both contexts as LLaVA's few-shot ``*_caps.txt`` lay them out: captions, a blank line, boxes."""
    if not captions:
        raise ValueError("give at least one caption (LLaVA uses the five COCO captions)")
    return "\n".join(captions) + ("\n\n" + format_boxes(boxes, box_sep) if boxes else "")


_BOX_LINE = re.compile(r"([^:\n,\]]+?):\s*\[([^\]]*)\]")


def parse_boxes(text: str) -> list[tuple[str, list[float]]]:
    """Inverse of ``format_boxes``: every ``label: [x1, y1, x2, y2]`` found in ``text``."""
    out = []
    for label, nums in _BOX_LINE.findall(text):
        values = [float(v) for v in nums.split(",")]
        if len(values) != 4:
            raise ValueError(f"box of {label.strip()!r} has {len(values)} numbers, expected 4")
        out.append((label.strip(), values))
    return out


def build_messages(system: str, fewshot: Sequence[dict], query: str | Sequence[str]) -> list[dict]:
    """The lecture's message list: the system prompt, one ``user``/``assistant`` pair per few-shot
    sample (``{"context": ..., "response": ...}``), then the query (lines joined with newlines)."""
    messages = [{"role": "system", "content": system}]
    for sample in fewshot:
        if not {"context", "response"} <= set(sample):
            raise ValueError(f"a few-shot sample needs 'context' and 'response' keys, got {sorted(sample)}")
        messages.append({"role": "user", "content": sample["context"]})
        messages.append({"role": "assistant", "content": sample["response"]})
    messages.append({"role": "user", "content": query if isinstance(query, str) else "\n".join(query)})
    return messages


def parse_qa_blocks(text: str) -> list[tuple[str, str]]:
    """``Question:\\n...\\n===\\nAnswer:\\n...\\n===`` (LLaVA's few-shot conversation files) -> turns."""
    blocks = [b.strip() for b in text.split("===") if b.strip()]
    turns, question = [], None
    for block in blocks:
        if block.startswith("Question:"):
            question = block[len("Question:"):].strip()
        elif block.startswith("Answer:") and question is not None:
            turns.append((question, block[len("Answer:"):].strip()))
            question = None
    if not turns:
        raise ValueError("no 'Question:' / 'Answer:' pair separated by '===' in the response")
    return turns


def format_qa_blocks(turns: Sequence[tuple[str, str]]) -> str:
    """Inverse of ``parse_qa_blocks``."""
    return "\n===\n".join(f"Question:\n{q}\n===\nAnswer:\n{a}" for q, a in turns) + "\n==="


def to_llava_record(record_id: str, image: str, turns: Sequence[tuple[str, str]]) -> dict:
    """LLaVA's JSON: ``id``, ``image``, ``conversations`` alternating ``human``/``gpt`` turns, with
    ``<image>\\n`` before the first question (where the visual tokens go)."""
    if not turns:
        raise ValueError("a record needs at least one (question, answer) turn")
    conversations = []
    for k, (q, a) in enumerate(turns):
        conversations.append({"from": "human", "value": (DEFAULT_IMAGE_TOKEN + "\n" if k == 0 else "") + q})
        conversations.append({"from": "gpt", "value": a})
    return {"id": record_id, "image": image, "conversations": conversations}


def check_llava_record(record: dict) -> None:
    """Raise ``ValueError`` unless ``record`` follows LLaVA's format (one ``<image>``, in turn 1)."""
    missing = {"id", "image", "conversations"} - set(record)
    if missing:
        raise ValueError(f"a LLaVA record needs keys id, image, conversations; missing {sorted(missing)}")
    conv = record["conversations"]
    if not conv or len(conv) % 2:
        raise ValueError(f"record {record['id']}: conversations must alternate human/gpt turns, got {len(conv)}")
    for k, turn in enumerate(conv):
        if turn.get("from") != ("human", "gpt")[k % 2] or not turn.get("value"):
            raise ValueError(f"record {record['id']}: turn {k} must be a non-empty {('human', 'gpt')[k % 2]!r} turn")
    if not conv[0]["value"].startswith(DEFAULT_IMAGE_TOKEN + "\n"):
        raise ValueError(f"record {record['id']}: the first human turn must start with '<image>\\n'")
    if sum(t["value"].count(DEFAULT_IMAGE_TOKEN) for t in conv) != 1:
        raise ValueError(f"record {record['id']}: exactly one '<image>' token expected")


def simple_expansion(question: str, caption: str, stop: str = STOP) -> str:
    """The naive instruction version of an image-caption pair:
    ``Human: X_q X_v <STOP> Assistant: X_c <STOP>`` (``X_v`` is the ``<image>`` placeholder)."""
    return f"Human: {question} {DEFAULT_IMAGE_TOKEN} {stop} Assistant: {caption} {stop}"


# ============================================================================================
# Notebook 03: visual tokens
# ============================================================================================
def select_image_features(hidden_states: Sequence[torch.Tensor], layer: int = -2, strategy: str = "patch") -> torch.Tensor:
    """``Z_v = g(X_v)``: the vision tower's hidden states at ``layer`` (LLaVA: -2, the penultimate),
    without the CLS token (``"patch"``, HF's ``"default"``) or with it (``"cls_patch"``, HF's ``"full"``)."""
    z = hidden_states[layer]                                  # (B, 1 + N, C)
    if strategy in ("patch", "default"):
        return z[:, 1:]                                       # (B, N, C)
    if strategy in ("cls_patch", "full"):
        return z
    raise ValueError(f"unknown feature strategy {strategy!r}; use 'patch' (drop CLS) or 'cls_patch'")


def build_vision_projector(projector_type: str, mm_hidden_size: int, hidden_size: int) -> nn.Module:
    """LLaVA's ``build_vision_projector``: ``"linear"`` is ``H_v = W Z_v`` (LLaVA), ``"mlpNx_gelu"`` is
    Linear-(GELU-Linear) x (N-1) (``"mlp2x_gelu"``: LLaVA-1.5), ``"identity"`` passes ``Z_v`` through."""
    if projector_type == "linear":
        # H_v = W . Z_v
        return nn.Linear(mm_hidden_size, hidden_size)
    m = re.match(r"^mlp(\d+)x_gelu$", projector_type)
    if m and int(m.group(1)) >= 1:
        layers: list[nn.Module] = [nn.Linear(mm_hidden_size, hidden_size)]
        for _ in range(1, int(m.group(1))):
            layers += [nn.GELU(), nn.Linear(hidden_size, hidden_size)]
        return nn.Sequential(*layers)
    if projector_type == "identity":
        if mm_hidden_size != hidden_size:
            raise ValueError(f"'identity' needs mm_hidden_size == hidden_size, got {mm_hidden_size} != {hidden_size}")
        return nn.Identity()
    raise ValueError(f"unknown projector type {projector_type!r}; use 'linear', 'mlp2x_gelu' (any 'mlpNx_gelu') or 'identity'")


def expand_image_tokens(input_ids: Sequence[int], image_token_id: int, n_image_tokens: int) -> list[int]:
    """One ``<image>`` id -> ``n_image_tokens`` copies (what HF's processor does to the text), so each
    visual token has a position of its own."""
    if list(input_ids).count(image_token_id) != 1:
        raise ValueError(f"expected exactly one image token (id {image_token_id}) in the prompt, "
                         f"found {list(input_ids).count(image_token_id)}: put '<image>' once in the first turn")
    out: list[int] = []
    for t in input_ids:
        out += [t] * n_image_tokens if t == image_token_id else [t]
    return out


def merge_image_features(inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_features: torch.Tensor,
                         image_token_id: int) -> torch.Tensor:
    """Visual tokens ``H_v`` replace the embeddings at the ``<image>`` positions (HF's ``masked_scatter``).

    inputs_embeds (B, T, D), input_ids (B, T), image_features (n_images, N, D) or (n_images * N, D);
    the number of ``<image>`` ids must equal the number of feature vectors.
    """
    mask = input_ids == image_token_id                                          # (B, T)
    n_features = image_features.numel() // max(image_features.shape[-1], 1)
    n_tokens = n_features if mask.device.type == "meta" else int(mask.sum())  # meta tensors hold no values
    if n_tokens == 0:
        raise ValueError(f"no image token (id {image_token_id}) in input_ids: the prompt needs '<image>' where "
                         "the visual tokens go (the processor expands it to one token per feature)")
    if image_features.shape[-1] != inputs_embeds.shape[-1] or n_tokens != n_features:
        raise ValueError(f"image features and image tokens do not match: {n_tokens} image tokens in the text, "
                         f"{n_features} features of width {image_features.shape[-1]} for embeddings of width "
                         f"{inputs_embeds.shape[-1]}; expand '<image>' to one token per visual token")
    # x_i = H_v[j] at the j-th <image> position, the word embedding elsewhere
    return inputs_embeds.masked_scatter(mask.unsqueeze(-1).expand_as(inputs_embeds),
                                        image_features.to(inputs_embeds.dtype))


def answer_labels(input_ids: torch.Tensor, answer_mask: torch.Tensor, image_token_id: int) -> torch.Tensor:
    """Labels for the language-model loss: the token ids where ``answer_mask`` is true, ``IGNORE_INDEX``
    (-100) on the image tokens and the prompt, so only ``X_a`` is predicted."""
    if answer_mask.shape != input_ids.shape:
        raise ValueError(f"answer_mask {tuple(answer_mask.shape)} must match input_ids {tuple(input_ids.shape)}")
    keep = answer_mask.bool() & (input_ids != image_token_id)
    return torch.where(keep, input_ids, torch.full_like(input_ids, IGNORE_INDEX))


def shifted_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts label t+1; ``IGNORE_INDEX`` positions are skipped."""
    # L = -1/|A| sum_{t in A} log p(x_{t+1} | x_<=t, H_v)
    return nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(),
                                       ignore_index=IGNORE_INDEX)


class Llava(nn.Module):
    """LLaVA from its parts (notebook 03): vision tower -> ``Z_v`` -> projector -> ``H_v`` merged into
    the text embeddings -> language model.

    ``vision_tower(pixel_values)`` returns the list of hidden states (a HF ``CLIPVisionModel`` wrapped
    with ``output_hidden_states``); ``language_model`` is a decoder with ``embed_tokens``, ``layers``,
    ``norm`` and ``lm_head`` (``course_utils.llama.Llama``).
    """

    def __init__(self, vision_tower, projector: nn.Module, language_model: nn.Module, image_token_id: int,
                 vision_feature_layer: int = -2, vision_feature_select_strategy: str = "patch"):
        super().__init__()
        self.vision_tower, self.multi_modal_projector, self.language_model = vision_tower, projector, language_model
        self.image_token_id = image_token_id
        self.vision_feature_layer, self.vision_feature_select_strategy = vision_feature_layer, vision_feature_select_strategy

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, N, D)
        z_v = select_image_features(self.vision_tower(pixel_values), self.vision_feature_layer,
                                    self.vision_feature_select_strategy)      # Z_v = g(X_v)
        return self.multi_modal_projector(z_v)                                # H_v = W . Z_v

    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, V)
        lm = self.language_model
        x = merge_image_features(lm.embed_tokens(input_ids), input_ids, self.get_image_features(pixel_values),
                                 self.image_token_id)                          # (B, T, D)
        for layer in lm.layers:
            x = layer(x)
        return lm.lm_head(lm.norm(x))                                          # (B, T, V)
