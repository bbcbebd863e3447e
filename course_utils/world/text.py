"""Tokenizers over the course's own text, and the text augmentation the course models train with.

- ``build_tokenizer(texts)``: CLIP's real BPE restricted to the words of ``texts`` (a transformers
  ``CLIPTokenizer``, notebook 01); ``shapes_corpus()`` the texts it must cover; ``clip_tokenizer()``
  the full CLIP tokenizer (49,408 ids, what ``openai/clip-vit-base-patch32`` ships), built offline;
- ``partial_captions(objects, n, seed)``: shape-only / color-only / count descriptions (notebook 01);
- ``shapes_tokenizer()``: a word-level Llama-3-style tokenizer over Shapes World's words (notebooks 04-05).
"""
from __future__ import annotations

import gzip
import math
from typing import Iterable

from ..clip import TEMPLATES
from . import shapes

SOT_TOKEN = "<|startoftext|>"
EOT_TOKEN = "<|endoftext|>"


# ============================================================================================
# CLIP's BPE restricted to the course's words (notebook 01)
# ============================================================================================
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character map (as in open_clip's tokenizer)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_bpe_merges() -> list[tuple[str, str]]:
    """The 48,894 merges of CLIP's BPE, read from the file open_clip ships (works offline)."""
    from open_clip.tokenizer import default_bpe

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]


def _clip_vocab_list(merges: list[tuple[str, str]]) -> list[str]:
    """CLIP's token list for ``merges``: the 256 byte symbols, the same with ``</w>``, one token per
    merge (in rank order), then ``<|startoftext|>`` and ``<|endoftext|>`` (the largest id)."""
    symbols = list(_bytes_to_unicode().values())
    return symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT_TOKEN, EOT_TOKEN]


def _clip_tokenizer(merges: list[tuple[str, str]], context_length: int):
    from transformers import CLIPTokenizer

    vocab_list = _clip_vocab_list(merges)
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    if len(vocab) != len(vocab_list):
        raise RuntimeError("duplicate tokens in the CLIP vocabulary")
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=context_length)
    if tok.eos_token_id != len(vocab) - 1 or tok.bos_token_id != len(vocab) - 2:
        raise RuntimeError(f"unexpected special-token ids: bos {tok.bos_token_id}, eos {tok.eos_token_id}")
    return tok


def clip_tokenizer(context_length: int = 77):
    """The full CLIP tokenizer as a transformers ``CLIPTokenizer`` (49,408 ids, ``<|endoftext|>`` =
    49407), built offline from the BPE file open_clip ships: the ids of ``openai/clip-vit-*``'s
    tokenizer and of ``open_clip.get_tokenizer("ViT-B-32")``."""
    return _clip_tokenizer(clip_bpe_merges(), context_length)


def _bpe_trace(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to one pre-token (already byte-encoded), in order."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(parts) > 1:
        pairs = {(a, b) for a, b in zip(parts, parts[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, math.inf))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return used


def shapes_corpus(n_scenes: int = 2000) -> list[str]:
    """Texts whose words the course tokenizer must know: Shapes World captions, questions and the
    vocabulary itself, the zero-shot templates and a few words for the real photographs."""
    texts = []
    for s in shapes.scenes("train", n_scenes):
        texts += s.captions + [q.question for q in s.qa] + [q.answer for q in s.qa]
    words = list(shapes.COLORS) + list(shapes.SHAPES) + list(shapes.SIZES) + list(shapes.OBJECT_NOUNS)
    words += [w for syn in shapes.SHAPE_SYNONYMS.values() for w in syn]
    words += [w for syn in shapes.SIZE_SYNONYMS.values() for w in syn]
    words += [w for row in shapes.REGIONS for w in row] + list(shapes.RELATIONS)
    words += list(shapes.NUMBER_WORDS.values()) + [str(i) for i in range(10)]
    texts += words + [t.format(w) for t in TEMPLATES for w in words]
    texts += ["is there a red circle?", "an object", "a shape", "the background is plain", "a cat", "a dog",
              "an astronaut", "a cup of coffee", "a rocket", "a flower", "a woman", "a man", "a building"]
    return texts


def build_tokenizer(texts: Iterable[str], context_length: int = 48):
    """A transformers ``CLIPTokenizer`` with CLIP's real BPE restricted to the words of ``texts``.

    Every word of ``texts`` tokenizes exactly as with the full CLIP tokenizer (the same merges are
    applied, in the same order), other text falls back to smaller pieces of the same BPE (the 512
    byte-level symbols are always there). Ids are renumbered densely: the 512 byte symbols, the
    kept merges in rank order, then ``<|startoftext|>`` and ``<|endoftext|>`` (the largest id, as in
    CLIP, so open_clip's ``argmax`` pooling and transformers' ``eos_token_id`` pooling agree).
    """
    import regex as re

    merges = clip_bpe_merges()
    ranks = {m: i for i, m in enumerate(merges)}
    byte_encoder = _bytes_to_unicode()
    # CLIP's pre-tokenization: lower case, then this pattern (open_clip's SimpleTokenizer)
    pat = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", re.IGNORECASE)
    kept: set[tuple[str, str]] = set()
    seen: set[str] = set()
    for text in texts:
        for tok in re.findall(pat, " ".join(text.lower().split())):
            if tok not in seen:
                seen.add(tok)
                kept.update(_bpe_trace("".join(byte_encoder[b] for b in tok.encode("utf-8")), ranks))
    kept_merges = [m for m in merges if m in kept]  # rank order
    return _clip_tokenizer(kept_merges, context_length)


# ============================================================================================
# Text augmentation at several granularities (scripts/train_clip.py, notebook 01)
# ============================================================================================
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
# Phrasings for a partial description; "{}" is "circle", "red shape" or "red circle".
PARTIAL_TEMPLATES: tuple[str, ...] = ("a {}.", "{}.", "one {}.", "a single {}.") + TEMPLATES


PARTIAL_KINDS = ("shape", "color", "shape+color", "counts", "colors")


def partial_captions(objects, n: int, seed: int, return_kinds: bool = False):
    """``n`` partial descriptions of a Shapes World scene built from ``scene.objects`` (training
    text augmentation, notebook 01): the full captions almost always attach a color to the shape,
    so a text naming only the shape ("a photo of a circle.") or only the color ("a red shape.") is
    out of the text tower's training distribution unless we add such texts.

    One object: the shape only ("a circle.", "a photo of a square."; 1/2), the color only
    ("a red shape.", "a red object."; 1/4) or color and shape ("a drawing of a red circle."; 1/4).
    Several objects: the shapes with their counts ("a circle and two squares."; 2/3) or the colors
    ("red and blue shapes."; 1/3). Deterministic given ``seed``. With ``return_kinds``, also the
    kind of each text (an entry of ``PARTIAL_KINDS``): which other scenes it describes as well.
    """
    import random

    if not objects:
        raise ValueError("partial_captions needs a scene with at least one object")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    out, kinds = [], []
    for _ in range(n):
        if len(objects) == 1:
            o = objects[0]
            kind = rng.choice(("shape", "shape", "color", "shape+color"))
            if kind == "shape":
                out.append(rng.choice(PARTIAL_TEMPLATES).format(o.shape))
            elif kind == "color":
                noun = rng.choice(("shape", "shape", "object", "figure"))
                out.append(rng.choice(PARTIAL_TEMPLATES).format(f"{o.color} {noun}"))
            else:
                out.append(rng.choice(PARTIAL_TEMPLATES).format(f"{o.color} {o.shape}"))
            kinds.append(kind)
            continue
        kinds.append("counts" if rng.random() < 2 / 3 else "colors")
        if kinds[-1] == "counts":  # shapes with counts, colors ignored
            counts = {}
            for o in objects:
                counts[o.shape] = counts.get(o.shape, 0) + 1
            parts = [("a " + sh) if k == 1 else f"{shapes.NUMBER_WORDS[k]} {PLURALS[sh]}"
                     for sh, k in rng.sample(list(counts.items()), len(counts))]
        else:  # colors, shapes ignored
            colors = list(dict.fromkeys(o.color for o in objects))
            parts = rng.sample(colors, len(colors))
            parts[-1] += " " + rng.choice(shapes.OBJECT_NOUNS)
        text = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        out.append(text + ".")
    return (out, kinds) if return_kinds else out


# --------------------------------------------------------------------------------------------
# A word-level tokenizer for Shapes World text (the course's tiny Llama models, notebooks 04-05)
# --------------------------------------------------------------------------------------------
# Llama 3's special tokens (names as in the released tokenizer; ids are the course's own, small).
SPECIAL_TOKENS = ("<|finetune_right_pad_id|>", "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>",
                  "<|image|>", "<|python_tag|>", "<unk>")


def shapes_vocabulary(n_scenes: int = 3000) -> list[str]:
    """Every word and punctuation mark of Shapes World captions and questions (sorted, deterministic)."""
    import re

    words = set()
    for scene in shapes.scenes("train", n_scenes):
        for text in [*scene.captions, *(f"{q.question} {q.answer}" for q in scene.qa)]:
            words.update(re.findall(r"\w+|[^\w\s]", text.lower()))
    return sorted(words)


def shapes_tokenizer(n_scenes: int = 3000):
    """A transformers ``PreTrainedTokenizerFast`` (word level, lower-cased) over Shapes World's words.

    Ids: the Llama 3 special tokens first (``pad`` = 0, ``<|begin_of_text|>`` = 1, ``<|end_of_text|>``
    = 2, ``<|eot_id|>`` = 3, ``<|image|>`` = 4, ...), then the words. Built offline in about a second;
    the course checkpoints ship it with ``save_pretrained``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
    for w in shapes_vocabulary(n_scenes):
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|finetune_right_pad_id|>", unk_token="<unk>",
                                   additional_special_tokens=["<|image|>", "<|end_of_text|>", "<|python_tag|>"])
    fast.model_max_length = 128
    return fast
