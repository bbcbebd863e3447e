"""course_utils.mllama (Llama 3.2 Vision's gated cross-attention) against transformers' Mllama, the VQA
batches and recipes of the course's tiny Mllama, and notebook 05's real-model function on a tiny
random model with the structure of Llama 3.2 11B Vision Instruct."""
import json
from pathlib import Path

import pytest
import torch
from transformers.models.mllama.configuration_mllama import MllamaTextConfig
from transformers.models.mllama.modeling_mllama import (MllamaCrossAttentionDecoderLayer, MllamaForCausalLM,
                                                        _prepare_cross_attention_mask)

from course_utils import hub, llama as L, mllama as M, shapes
from course_utils.llama import IGNORE_INDEX
from course_utils.recipes import mllama as RM
from course_utils.world.text import shapes_tokenizer

TOL = 1e-5
FIXTURES = Path(__file__).parent / "fixtures" / "hub_configs"


def _randomize_norms(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:  # RMSNorm weights start at 1: perturb them so a wrong copy shows
                p.add_(0.2 * torch.randn_like(p))


def test_cross_attention_layer_positions_of_the_11b_model():
    assert M.cross_attention_layer_indices(32, 4) == [3, 8, 13, 18, 23, 28, 33, 38]
    assert MllamaTextConfig().cross_attention_layers == [3, 8, 13, 18, 23, 28, 33, 38]
    with pytest.raises(ValueError):
        M.cross_attention_layer_indices(4, 0)


# ---- gated cross-attention (Llama 3.2 Vision) --------------------------------------------------------
def _mllama_text_cfg():
    return MllamaTextConfig(vocab_size=61, hidden_size=64, intermediate_size=96, num_hidden_layers=6,
                            num_attention_heads=8, num_key_value_heads=2, cross_attention_layers=[1, 4],
                            pad_token_id=0, bos_token_id=1, eos_token_id=2,
                            rope_parameters={"rope_type": "default", "rope_theta": 500000.0})


def test_gated_cross_attention_layer_parity_with_masks():
    cfg = _mllama_text_cfg()
    cfg._attn_implementation = "eager"
    ref = MllamaCrossAttentionDecoderLayer(cfg, layer_idx=1).eval()
    _randomize_norms(ref)
    with torch.no_grad():
        ref.cross_attn_attn_gate.fill_(0.8)
        ref.cross_attn_mlp_gate.fill_(-0.5)
    mine = M.GatedCrossAttentionLayer(64, 8, 2, 96).eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    x, img = torch.randn(2, 7, 64), torch.randn(2, 10, 64)
    # text tokens 0-1 come before the image: they see no image tile (masked rows)
    cam = torch.ones(2, 7, 1, 1)
    cam[:, :2] = 0
    mask, rows = _prepare_cross_attention_mask(cam, num_vision_tokens=10, dtype=torch.float32)
    with torch.no_grad():
        out_ref = ref(x, cross_attention_states=img, cross_attention_mask=mask, attention_mask=None,
                      full_text_row_masked_out_mask=rows)
        out = mine(x, img, mask, rows[:, 0])
        assert torch.allclose(out, out_ref, atol=TOL)
        assert torch.allclose(mine(x, img), ref(x, cross_attention_states=img, cross_attention_mask=None,
                                                attention_mask=None, full_text_row_masked_out_mask=None), atol=TOL)
    with pytest.raises(ValueError, match="n_image_tokens"):
        mine(x, torch.randn(2, 10, 32))


def test_identity_at_init_and_full_stack_parity_with_mllama():
    torch.manual_seed(1)
    text = L.Llama(61, 64, 4, 8, 2, 96).eval()
    _randomize_norms(text)
    mm = M.LlamaWithCrossAttention(text, every=2).eval()
    assert mm.cross_positions == [1, 4]
    ids, img = torch.randint(0, 61, (2, 9)), torch.randn(2, 10, 64)
    with torch.no_grad():
        # gates tanh(0) = 0: the multimodal model IS the text model
        assert torch.allclose(mm(ids, img), text(ids), atol=1e-6)
        for layer in mm.cross_layers:
            layer.cross_attn_attn_gate.fill_(0.6)
            layer.cross_attn_mlp_gate.fill_(0.3)
        assert not torch.allclose(mm(ids, img), text(ids), atol=1e-3)
        assert torch.allclose(mm(ids), text(ids), atol=1e-6)  # no image: the cross layers are skipped
    # the same weights in transformers' MllamaForCausalLM
    # eager attention: with SDPA and no cross_attention_mask, transformers 5.24 treats the cross-attention as
    # causal and crops the image keys to the text length (the processor always passes the mask)
    ref = MllamaForCausalLM._from_config(_mllama_text_cfg(), attn_implementation="eager").eval()
    sd = {"lm_head.weight": text.lm_head.weight, "model.norm.weight": text.norm.weight}
    emb = ref.model.embed_tokens.weight.detach().clone()
    emb[:61] = text.embed_tokens.weight
    sd["model.embed_tokens.weight"] = emb
    text_iter, cross_iter = iter(text.layers), iter(mm.cross_layers)
    for j in range(6):
        layer = next(cross_iter) if j in mm.cross_positions else next(text_iter)
        sd.update({f"model.layers.{j}.{k}": v for k, v in layer.state_dict().items()})
    ref.load_state_dict(sd, strict=True)
    with torch.no_grad():
        want = ref(input_ids=ids, cross_attention_states=img).logits
        assert torch.allclose(mm(ids, img), want, atol=TOL)


def test_prefix_vs_cross_cost():
    c = M.prefix_vs_cross_attention_cost(4, image_tokens=576, text_tokens=256)
    assert c["prefix"]["context_tokens"] == 256 + 4 * 576
    assert c["cross_attention"]["context_tokens"] == 256
    assert c["cross_attention"]["kv_cache_bytes"] < c["prefix"]["kv_cache_bytes"]
    assert c["cross_attention"]["attention_flops"] < c["prefix"]["attention_flops"]
    with pytest.raises(ValueError):
        M.prefix_vs_cross_attention_cost(-1)


# ---- tokenizer, data and the shipped checkpoints ---------------------------------------------------
def test_tokenizer_and_vqa_labels():
    tok = shapes_tokenizer(n_scenes=300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 3)
    assert tok.convert_tokens_to_ids("<|image|>") == 4
    proc = RM.build_processor(tok)
    data = RM.vqa_data("train", 4, proc)
    assert isinstance(data.dataset, shapes.ShapesQADataset)  # the course's one QA dataset underneath
    b = data.batch(range(len(data)))
    for row, (i, q) in enumerate(data.items):
        kept = b["labels"][row][b["labels"][row] != IGNORE_INDEX].tolist()
        assert kept == tok.convert_tokens_to_ids([q.answer, tok.eos_token])  # loss only on the answer and <|eot_id|>
        assert q in data.scenes[i].qa and q.kind in ("color", "existence")
        # answer_pos is the last prompt token: the next input token is the answer
        assert b["input_ids"][row, b["answer_pos"][row] + 1] == tok.convert_tokens_to_ids(q.answer)
    assert b["pixel_values"].shape == (len(data), 1, 1, 3, 32, 32)
    with pytest.raises(ValueError, match="one word"):
        RM.vqa_data("train", 2, proc, kinds=("relation",))


def test_tiny_mllama_config_vision_sizes():
    from transformers import LlamaConfig

    tok = shapes_tokenizer(n_scenes=300)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2)
    cfg = RM.tiny_mllama_config(text, tok, every=1, patch_size=4, vision_width=32, vision_layers=3)
    assert cfg.text_config.cross_attention_layers == M.cross_attention_layer_indices(4, 1)
    assert cfg.text_config.num_hidden_layers == 4 + len(cfg.text_config.cross_attention_layers)
    assert (cfg.vision_config.hidden_size, cfg.vision_config.vision_output_dim) == (32, 64)
    assert cfg.vision_config.intermediate_layers_indices == [2]
    assert (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 == 64  # 64 image tokens (+ CLS)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        RM.tiny_mllama_config(text, tok, patch_size=5)


def test_shipped_mllama_reads_the_image():
    from transformers import MllamaForConditionalGeneration, MllamaProcessor

    path = hub.resolve("course/mllama-shapes")
    model = MllamaForConditionalGeneration.from_pretrained(path).eval()
    proc = MllamaProcessor.from_pretrained(path)
    assert max(abs(g) for g in RM.mllama_gates(model)["attn"]) > 0.05  # trained: gates left zero
    data = RM.vqa_data("test", 60, proc, ("color",))
    acc_img, acc_txt = RM.vqa_accuracy(model, data)["color"], RM.vqa_accuracy(model, data, image=False)["color"]
    assert acc_img > acc_txt + 0.2  # the color of a named shape cannot be known from the text alone


# ---- notebook 05's real-model function on a tiny model shaped like Llama 3.2 11B Vision Instruct ----------
# Llama 3.2 Vision Instruct's chat template, shortened to the turns the notebook uses (user: image + text).
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
                 "{% for c in m['content'] %}{% if c['type'] == 'image' %}<|image|>{% else %}{{ c['text'] }}"
                 "{% endif %}{% endfor %}<|eot_id|>{% endfor %}"
                 "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def _hub_mllama_config():
    from transformers import MllamaConfig

    d = json.loads((FIXTURES / "meta-llama--Llama-3.2-11B-Vision-Instruct.json").read_text())
    assert d["_source"]
    return MllamaConfig(**{k: v for k, v in d.items() if not k.startswith("_")})


def test_answer_questions_on_a_tiny_hub_shaped_mllama(tmp_path):
    from transformers import MllamaForConditionalGeneration, MllamaImageProcessor, MllamaProcessor

    cfg = _hub_mllama_config()
    assert cfg.text_config.rope_parameters["rope_type"] == "llama3" and cfg.vision_config.max_num_tiles == 4
    assert cfg.vision_config.vision_output_dim == cfg.vision_config.hidden_size * (
        1 + len(cfg.vision_config.intermediate_layers_indices))
    torch.manual_seed(0)
    model = MllamaForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # open the gates so the image reaches the text
        for layer in model.model.language_model.layers:
            if hasattr(layer, "cross_attn_attn_gate"):
                layer.cross_attn_attn_gate.fill_(1.0)
                layer.cross_attn_mlp_gate.fill_(1.0)
    model.save_pretrained(tmp_path)
    tok = shapes_tokenizer(n_scenes=300)
    tok.add_special_tokens({"additional_special_tokens": ["<|image|>", "<|start_header_id|>", "<|end_header_id|>"]})
    size = cfg.vision_config.image_size
    proc = MllamaProcessor(image_processor=MllamaImageProcessor(size={"height": size, "width": size},
                                                                max_image_tiles=cfg.vision_config.max_num_tiles),
                           tokenizer=tok, chat_template=CHAT_TEMPLATE)
    assert tok.convert_tokens_to_ids("<|image|>") == cfg.image_token_index
    proc.save_pretrained(tmp_path)
    scene = shapes.make_scene(shapes.split_seeds("test", 1, start=7)[0])
    questions = ["How many objects are there?", f"What color is the {scene.objects[0].shape}?"]
    res = RM.answer_questions(str(tmp_path), scene, questions, max_new_tokens=3)
    assert [q for q, _ in res["answers"]] == questions and all(isinstance(a, str) for _, a in res["answers"])
    shapes_in = res["input_shapes"]
    # the chat-template path: the prompt is a user turn, the image cut into tiles of the processor's size
    assert shapes_in["pixel_values"][-3:] == (3, size, size) and shapes_in["pixel_values"][2] <= 4
    assert shapes_in["input_ids"][1] > 10
    # and the image does reach the logits (a random model, but its gates are open)
    inputs = res["processor"](images=scene.image, text="<|image|><|begin_of_text|>what", return_tensors="pt",
                              add_special_tokens=False)
    other = res["processor"](images=shapes.make_scene(3).image, text="<|image|><|begin_of_text|>what",
                             return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        assert not torch.allclose(res["model"](**inputs).logits, res["model"](**other).logits, atol=1e-4)


def test_answer_questions_offline_is_the_course_model():
    """What notebook 05's real-model cell runs offline: the shipped course/mllama-shapes, no chat template."""
    scene = shapes.make_scene(shapes.split_seeds("test", 1, start=7)[0])
    res = RM.answer_questions(hub.resolve("meta-llama/Llama-3.2-11B-Vision-Instruct"), scene,
                              ["How many objects are there?"])
    assert res["input_shapes"]["pixel_values"] == (1, 1, 1, 3, 32, 32)
    assert res["answers"][0][1] in {"0", "1", "2", "3", "4", "5"}
    with pytest.raises(ValueError, match="processor"):
        RM.answer_questions(res["model"], scene, ["?"])


# ---- device and dtype ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_cross_attention_runs_on_meta_and_in_bfloat16(device, dtype):
    torch.manual_seed(0)
    with torch.device(device):
        layer = M.GatedCrossAttentionLayer(64, 8, 2, 96).to(dtype)
        mm = M.LlamaWithCrossAttention(L.Llama(61, 64, 2, 8, 2, 96), every=1).to(dtype).eval()
        x, img = torch.randn(2, 7, 64, dtype=dtype), torch.randn(2, 10, 64, dtype=dtype)
        ids = torch.randint(0, 61, (2, 7))
    with torch.no_grad():
        for lyr in mm.cross_layers:
            lyr.cross_attn_attn_gate.fill_(0.5)
        y = layer(x, img)
        logits = mm(ids, img)
    assert y.shape == x.shape and y.dtype == dtype and y.device.type == device
    assert logits.shape == (2, 7, 61) and logits.dtype == dtype and logits.device.type == device
    out = L.generate_greedy(lambda t: mm(t, img), ids, 2)
    assert out.shape == (2, 9) and out.device.type == device
    if device == "cpu":
        ref = mm.float()(ids, img.float())
        assert ((logits.float() - ref).abs().max() / ref.abs().max()) < 0.05
