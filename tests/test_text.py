"""course_utils.world.text, CLIP part (notebook 01): the course tokenizer vs CLIP's real BPE, the
full CLIP tokenizer built offline, and the partial captions the course CLIP trains with."""
import open_clip
import pytest

from course_utils import hub, shapes
from course_utils.world import text as world_text


@pytest.fixture(scope="module")
def shipped_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(hub.resolve("course/clip-shapes", verbose=False))


@pytest.fixture(scope="module")
def real():
    tok = open_clip.get_tokenizer("ViT-B-32")  # open_clip's SimpleTokenizer, offline
    vocab = dict(tok.encoder)
    vocab["<|startoftext|>"] = tok.sot_token_id
    vocab["<|endoftext|>"] = tok.eot_token_id
    return tok, vocab


def _texts():
    texts = [c for s in shapes.scenes("test", 40) for c in s.captions]
    texts += [q.question for s in shapes.scenes("test", 20) for q in s.qa]
    return texts + ["A photo of a RED circle.", "there is a tiny purple plus sign in the image."]


@pytest.mark.parametrize("which", ["shipped", "rebuilt"])
def test_tokenizer_matches_real_clip_bpe(which, shipped_tokenizer, real):
    tok = shipped_tokenizer if which == "shipped" else world_text.build_tokenizer(world_text.shapes_corpus(500))
    ref_tok, real_vocab = real
    inv = {i: t for t, i in tok.get_vocab().items()}
    for text in _texts():
        ours = tok(text).input_ids
        ref = ref_tok(text, context_length=77)[0]
        ref = ref[ref != 0].tolist()
        assert [real_vocab[inv[i]] for i in ours] == ref, text
    # special tokens: own ids, EOS the largest (CLIP's convention), not the legacy id 2
    assert tok.eos_token_id == len(tok) - 1 and tok.bos_token_id == len(tok) - 2
    assert tok.eos_token_id != 2


def test_full_clip_tokenizer_has_open_clip_ids(real):
    ref_tok, _ = real
    tok = world_text.clip_tokenizer()
    assert len(tok) == 49408 == ref_tok.vocab_size and tok.eos_token_id == 49407 and tok.bos_token_id == 49406
    texts = _texts()[:30] + ["a zebra playing the xylophone, 3 times!"]
    ids = tok(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref = ref_tok(texts)
    # open_clip pads with 0, transformers with <|endoftext|>: compare up to the first EOS
    for a, b in zip(ids.tolist(), ref.tolist()):
        n = b.index(49407) + 1
        assert a[:n] == b[:n]


def test_unknown_words_still_tokenize(shipped_tokenizer):
    tok = shipped_tokenizer
    ids = tok("zebra xylophone").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) > 4


def test_partial_captions_granularities(shipped_tokenizer):
    tok = shipped_tokenizer
    one = shapes.make_scene(7, n_objects=1)
    o = one.objects[0]
    caps = world_text.partial_captions(one.objects, 40, seed=0)
    assert caps == world_text.partial_captions(one.objects, 40, seed=0)  # deterministic
    assert all(o.shape in c or o.color in c for c in caps)
    other_colors = [c for c in shapes.COLORS if c != o.color]
    other_shapes = [s for s in shapes.SHAPES if s != o.shape]
    assert not any(w in c.split() or w + "." in c.split() for c in caps for w in other_colors + other_shapes)
    shape_only = [c for c in caps if o.color not in c]
    color_only = [c for c in caps if o.shape not in c]
    assert shape_only and color_only  # both granularities are generated
    multi = shapes.make_scene(0, objects=[{"shape": "circle", "color": "red"}, {"shape": "square", "color": "blue"},
                                          {"shape": "square", "color": "blue"}])
    mcaps, kinds = world_text.partial_captions(multi.objects, 40, seed=1, return_kinds=True)
    assert set(kinds) <= {"counts", "colors"}
    assert {"a circle and two squares.", "two squares and a circle."} & set(mcaps)
    assert set(mcaps) <= {"a circle and two squares.", "two squares and a circle."} | {
        f"{a} and {b} {n}." for a, b in (("red", "blue"), ("blue", "red")) for n in shapes.OBJECT_NOUNS}
    # every word is in the course vocabulary (no <|endoftext|> used as unknown inside the text)
    for c in caps + sorted(set(mcaps)):
        assert tok.eos_token_id not in tok(c).input_ids[1:-1], c
    with pytest.raises(ValueError, match="at least one object"):
        world_text.partial_captions([], 1, seed=0)
