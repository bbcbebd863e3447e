"""Notebook 01's "pipeline real" code (course_utils.recipes.clip) run offline on tiny random models
whose configs have the real hub models' structure (tests/fixtures/hub_configs):

- ``openai/clip-vit-base-patch32``: a transformers ``CLIPModel`` (quick_gelu, patch 32, legacy
  ``eos_token_id = 2`` so the text is pooled at ``argmax(input_ids)``, full 49,408-token CLIP
  tokenizer), through ``load_hf_clip`` / ``hf_clip_zero_shot``, and the same weights through
  open_clip via the course's bridge (``local-dir:``), through ``load_open_clip`` /
  ``open_clip_zero_shot``: the two libraries must agree;
- ``open_clip/ViT-B-32/laion2b_s34b_b79k``: open_clip's ViT-B-32 model config (shrunk), built by
  ``open_clip.create_model_and_transforms`` exactly as ``load_open_clip`` does online.
"""
import json
from pathlib import Path

import open_clip
import pytest
import torch

from course_utils import hub, shapes
from course_utils.recipes import clip as course_clip
from course_utils.world import text as world_text

FIXTURES = Path(__file__).parent / "fixtures" / "hub_configs"


def _fixture(name: str) -> dict:
    cfg = json.loads((FIXTURES / name).read_text())
    assert cfg.pop("_source")
    return cfg


def _images(size: int, n: int = 3):
    return [s.image for s in shapes.scenes("test", n, size=size, n_objects=1, start=40_000)]


CLASSES = ["red circle", "blue square", "cat"]


@pytest.fixture(scope="module")
def openai_folder(tmp_path_factory):
    """A random CLIPModel with openai/clip-vit-base-patch32's structure, saved as the hub repo is
    (config, weights, tokenizer, preprocessor) plus open_clip's local-dir layout."""
    from transformers import CLIPConfig, CLIPModel

    config = CLIPConfig.from_dict(_fixture("openai--clip-vit-base-patch32.json"))
    assert config.text_config.hidden_act == config.vision_config.hidden_act == "quick_gelu"
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    folder = tmp_path_factory.mktemp("clip-vit-base-patch32")
    course_clip.save_pretrained(model, world_text.clip_tokenizer(), folder)
    return folder


def test_hf_pipeline_on_a_hub_shaped_clip(openai_folder):
    model, processor = course_clip.load_hf_clip(str(openai_folder))
    assert model.config.text_config.eos_token_id == 2 and len(processor.tokenizer) == 49408
    assert model.config._attn_implementation == "sdpa" and not model.training
    out = course_clip.hf_clip_zero_shot(model, processor, _images(64), CLASSES)
    assert out["probs"].shape == (3, 3) and torch.allclose(out["probs"].sum(-1), torch.ones(3))
    assert out["prompts"][0] == "a photo of a red circle."
    # legacy eos_token_id = 2: transformers pools at argmax(input_ids), the first <|endoftext|> (49407)
    ids = processor.tokenizer(out["prompts"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        t = model.text_model(input_ids=ids)
    first_eos = (ids == 49407).int().argmax(dim=1)
    assert torch.allclose(t.pooler_output, t.last_hidden_state[torch.arange(3), first_eos])


def test_open_clip_reads_the_same_hub_shaped_weights(openai_folder):
    """The course bridge maps quick_gelu and argmax pooling: open_clip gives transformers' numbers."""
    model, processor = course_clip.load_hf_clip(str(openai_folder))
    oc_model, preprocess, tokenizer = course_clip.load_open_clip("local-dir:" + str(openai_folder))
    assert isinstance(oc_model.visual.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    assert oc_model.text_pool_type == "argmax"
    images = _images(64)  # at the model's size: no resampling difference between the two preprocessors
    hf = course_clip.hf_clip_zero_shot(model, processor, images, CLASSES)
    oc = course_clip.open_clip_zero_shot(oc_model, preprocess, tokenizer, images, CLASSES)
    assert torch.allclose(hf["image_embeds"], oc["image_features"], atol=1e-5)
    assert torch.allclose(hf["text_embeds"], oc["text_features"], atol=1e-5)


def test_hf_pipeline_follows_device_and_dtype(openai_folder):
    model, processor = course_clip.load_hf_clip(str(openai_folder), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16
    out = course_clip.hf_clip_zero_shot(model, processor, _images(64, 2), CLASSES)
    ref = course_clip.hf_clip_zero_shot(course_clip.load_hf_clip(str(openai_folder))[0], processor,
                                        _images(64, 2), CLASSES)
    assert out["probs"].dtype == torch.float32 and torch.allclose(out["probs"], ref["probs"], atol=0.05)


@pytest.fixture(scope="module")
def vit_b_32_tiny(tmp_path_factory):
    """open_clip's ViT-B-32 config, shrunk, registered under its own name (no weights: random init)."""
    folder = tmp_path_factory.mktemp("open_clip_cfg")
    (folder / "ViT-B-32-course-tiny.json").write_text(json.dumps(_fixture("open_clip--ViT-B-32.json")))
    open_clip.add_model_config(folder / "ViT-B-32-course-tiny.json")
    return "ViT-B-32-course-tiny"


def test_open_clip_pipeline_on_a_vit_b_32_shaped_model(vit_b_32_tiny):
    torch.manual_seed(0)
    model, preprocess, tokenizer = course_clip.load_open_clip(vit_b_32_tiny, None)
    assert isinstance(model.visual.transformer.resblocks[0].mlp.gelu, torch.nn.GELU)  # no quick_gelu
    assert model.text_pool_type == "argmax" and model.token_embedding.num_embeddings == 49408
    assert model.visual.transformer.resblocks[0].attn.num_heads == 12
    assert isinstance(tokenizer, open_clip.tokenizer.SimpleTokenizer) and tokenizer.context_length == 77
    images = _images(32)  # 32 px scenes, resized to the model's 64 px by open_clip's preprocess
    assert preprocess(images[0]).shape == (3, 64, 64)
    out = course_clip.open_clip_zero_shot(model, preprocess, tokenizer, images, CLASSES)
    assert out["probs"].shape == (3, 3) and torch.allclose(out["probs"].sum(-1), torch.ones(3))
    assert out["image_features"].shape == (3, 16) and torch.allclose(out["image_features"].norm(dim=-1), torch.ones(3))
    # bfloat16: the same calls, the model and the pixels cast
    low, _, _ = course_clip.load_open_clip(vit_b_32_tiny, None, dtype=torch.bfloat16)
    low.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    out_low = course_clip.open_clip_zero_shot(low, preprocess, tokenizer, images, CLASSES)
    assert out_low["image_features"].dtype == torch.bfloat16
    assert torch.allclose(out_low["probs"], out["probs"], atol=0.05)


def test_open_clip_source_tiers(monkeypatch):
    name, pretrained, offline = course_clip.open_clip_source()
    assert offline and pretrained is None and name == "local-dir:" + str(hub.course_path("course/clip-shapes"))
    # online: hub.resolve hands back the id, and open_clip gets its architecture and pretrained tag
    monkeypatch.setattr(hub, "resolve", lambda n, **kw: n)
    assert course_clip.open_clip_source() == ("ViT-B-32", "laion2b_s34b_b79k", False)
    with pytest.raises(ValueError, match="open_clip/<architecture>"):
        course_clip.open_clip_source("openai/clip-vit-base-patch32")
