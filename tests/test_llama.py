"""course_utils.llama: Llama 3 pieces and Llama 3.2 Vision's gated cross-attention vs transformers."""
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding
from transformers.models.mllama.configuration_mllama import MllamaTextConfig
from transformers.models.mllama.modeling_mllama import (MllamaCrossAttentionDecoderLayer, MllamaForCausalLM,
                                                        _prepare_cross_attention_mask)

from course_utils import hub, llama as L

TOL = 1e-5


def _cfg(**kw):
    base = dict(vocab_size=61, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=8,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, tie_word_embeddings=False,
                rope_parameters={"rope_type": "default", "rope_theta": 500000.0})
    base.update(kw)
    return LlamaConfig(**base)


def _randomize_norms(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1:  # RMSNorm weights start at 1: perturb them so a wrong copy shows
                p.add_(0.2 * torch.randn_like(p))


# ---- the paper's table -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,expected_256,expected_000", [
    ("8B", 8_030_261_248, 8_028_164_096),
    ("70B", 70_553_706_496, 70_549_512_192),
    ("405B", 405_853_388_800, 405_845_000_192),
])
def test_count_parameters_exact(name, expected_256, expected_000):
    c = L.LLAMA3_CONFIGS[name]
    assert L.count_parameters(**c, vocab_size=128_256) == expected_256
    assert L.count_parameters(**c, vocab_size=128_000) == expected_000
    assert L.count_parameters(**c, vocab_size=128_256, tied_embeddings=True) == expected_256 - 128_256 * c["dim"]


def test_count_parameters_matches_a_real_model():
    cfg = _cfg()
    model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    assert L.count_parameters(2, 64, 96, 8, 2, 61) == n


def test_count_parameters_rejects_bad_heads():
    with pytest.raises(ValueError, match="multiple of n_kv_heads"):
        L.count_parameters(2, 64, 96, 8, 3, 61)
    with pytest.raises(ValueError, match="divisible by n_heads"):
        L.count_parameters(2, 60, 96, 8, 2, 61)
    with pytest.raises(ValueError, match="positive int"):
        L.count_parameters(0, 64, 96, 8, 2, 61)


def test_kv_cache_mfu_flops():
    # 8B: 2 (K,V) * 32 layers * 8 kv heads * 128 dims * 8192 tokens * 2 bytes = 1 GiB
    assert L.kv_cache_bytes(32, 8, 128, 8192) == 2**30
    assert L.kv_cache_bytes(32, 8, 128, 131072) == 16 * 2**30
    assert L.mfu(430) == pytest.approx(0.4346, abs=1e-4)
    assert L.training_flops_per_token(10, 1, 2, 3) == 6 * 10 + 12 * 1 * 2 * 3
    assert L.training_flops_per_token(10, 1, 2, 3, causal=True) == 6 * 10 + 6 * 1 * 2 * 3
    with pytest.raises(ValueError):
        L.mfu(400, peak_tflops=0)
    with pytest.raises(ValueError):
        L.kv_cache_bytes(32, 8, 128, -1)


def test_cross_attention_layer_positions_of_the_11b_model():
    assert L.cross_attention_layer_indices(32, 4) == [3, 8, 13, 18, 23, 28, 33, 38]
    assert MllamaTextConfig().cross_attention_layers == [3, 8, 13, 18, 23, 28, 33, 38]
    with pytest.raises(ValueError):
        L.cross_attention_layer_indices(4, 0)


# ---- pieces vs transformers --------------------------------------------------------------------------
def test_rmsnorm_parity():
    ref = LlamaRMSNorm(64, eps=1e-5)
    mine = L.RMSNorm(64, eps=1e-5)
    _randomize_norms(ref)
    mine.load_state_dict(ref.state_dict())
    x = torch.randn(3, 5, 64) * 3
    assert torch.allclose(mine(x), ref(x), atol=TOL)


def test_rope_forms_and_parity():
    head_dim, t = 16, 11
    pos = torch.arange(t)
    cos, sin = L.rope_cos_sin(pos, head_dim)
    rot = LlamaRotaryEmbedding(_cfg(hidden_size=128, num_attention_heads=8))
    ref_cos, ref_sin = rot(torch.zeros(1, t, 128), pos[None])
    assert torch.allclose(cos, ref_cos[0], atol=TOL) and torch.allclose(sin, ref_sin[0], atol=TOL)
    x = torch.randn(2, 3, t, head_dim)
    assert torch.allclose(L.apply_rope(x, cos, sin), L.apply_rope_complex(x, pos), atol=TOL)
    # relative position: <R_m q, R_n k> depends on m - n only
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def dot(m, n):
        qm = L.apply_rope_complex(q[None], torch.tensor([m]))[0]
        kn = L.apply_rope_complex(k[None], torch.tensor([n]))[0]
        return float(qm @ kn)

    assert dot(7, 3) == pytest.approx(dot(104, 100), abs=1e-4)
    assert dot(7, 3) != pytest.approx(dot(3, 7), abs=1e-4)
    with pytest.raises(ValueError, match="even"):
        L.rope_frequencies(15)


def test_swiglu_parity():
    cfg = _cfg()
    ref = LlamaMLP(cfg)
    mine = L.SwiGLU(64, 96)
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 7, 64)
    assert torch.allclose(mine(x), ref(x), atol=TOL)


def test_gqa_attention_parity():
    cfg = _cfg()
    cfg._attn_implementation = "eager"
    ref = LlamaAttention(cfg, layer_idx=0).eval()
    mine = L.GroupedQueryAttention(64, 8, 2).eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 9, 64)
    pe = LlamaRotaryEmbedding(cfg)(x, torch.arange(9)[None])
    mask = L.causal_mask(9)[None, None]
    out_ref, _ = ref(x, position_embeddings=pe, attention_mask=mask)
    assert torch.allclose(mine(x), out_ref, atol=TOL)
    mine.fused = False  # the written-out softmax(q k^T / sqrt(d) + M) v
    assert torch.allclose(mine(x), out_ref, atol=TOL)
    assert L.repeat_kv(torch.randn(1, 2, 3, 4), 4).shape == (1, 8, 3, 4)


def test_tiny_llama_logits_and_greedy_generation_equal_transformers():
    cfg = _cfg()
    hf = LlamaForCausalLM(cfg).eval()
    _randomize_norms(hf)
    mine = L.Llama.from_hf_config(cfg).load_hf_state_dict(hf.state_dict()).eval()
    ids = torch.randint(0, 61, (3, 13))
    with torch.no_grad():
        assert torch.allclose(mine(ids), hf(ids).logits, atol=TOL)
    # an explicit attention mask: otherwise generate() masks every prompt token equal to pad_token_id
    want = hf.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=12, do_sample=False,
                       pad_token_id=0)
    assert torch.equal(L.generate_greedy(mine, ids[:1], 12), want)


def test_llama_rejects_bad_input():
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        L.Llama.from_hf_config(_cfg(tie_word_embeddings=True))
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        L.Llama(11, 16, 1, 2, 1, 32)(torch.zeros(5, dtype=torch.long))
    with pytest.raises(RuntimeError):  # a state dict of another shape fails loudly
        L.Llama(11, 16, 1, 2, 1, 32).load_hf_state_dict(LlamaForCausalLM(_cfg()).state_dict())


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
    mine = L.GatedCrossAttentionLayer(64, 8, 2, 96).eval()
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
    mm = L.LlamaWithCrossAttention(text, every=2).eval()
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
    c = L.prefix_vs_cross_attention_cost(4, image_tokens=576, text_tokens=256)
    assert c["prefix"]["context_tokens"] == 256 + 4 * 576
    assert c["cross_attention"]["context_tokens"] == 256
    assert c["cross_attention"]["kv_cache_bytes"] < c["prefix"]["kv_cache_bytes"]
    assert c["cross_attention"]["attention_flops"] < c["prefix"]["attention_flops"]
    with pytest.raises(ValueError):
        L.prefix_vs_cross_attention_cost(-1)


# ---- tokenizer, data and the shipped checkpoints ---------------------------------------------------
def test_tokenizer_and_vqa_labels():
    from transformers import MllamaImageProcessor

    tok = L.shapes_tokenizer(n_scenes=300)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 3)
    assert tok.convert_tokens_to_ids("<|image|>") == 4
    data = L.ShapesVQA("train", 4, tok, MllamaImageProcessor(size={"height": 32, "width": 32}, max_image_tiles=1))
    b = data.batch(range(len(data)))
    for row, (_, q, a, _) in zip(range(len(data)), data.items):
        kept = b["labels"][row][b["labels"][row] != L.IGNORE_INDEX].tolist()
        assert kept == tok.convert_tokens_to_ids([a, tok.eos_token])  # loss only on the answer and <|eot_id|>
    assert b["pixel_values"].shape == (len(data), 1, 1, 3, 32, 32)
    with pytest.raises(ValueError, match="one-word-answer"):
        L.ShapesVQA("train", 2, tok, None, kinds=("relation",))


def test_shipped_llama_tiny_equals_course_llama():
    from transformers import AutoTokenizer

    path = hub.resolve("course/llama-tiny")
    hf = LlamaForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    mine = L.Llama.from_hf_config(hf.config).load_hf_state_dict(hf.state_dict()).eval()
    ids = tok(["<|begin_of_text|>is there a red circle in the image ?"], add_special_tokens=False,
              return_tensors="pt").input_ids
    want = hf.generate(ids, max_new_tokens=3, do_sample=False)
    got = L.generate_greedy(mine, ids, 3, eos_token_id=tok.eos_token_id)
    assert torch.equal(got, want)
    assert tok.decode(got[0, -2:]) in ("yes <|eot_id|>", "no <|eot_id|>")  # it learned the answer format
    assert hf.config.rope_parameters["rope_theta"] == 500000.0
    with torch.no_grad():
        assert torch.allclose(mine(ids), hf(ids).logits, atol=TOL)
        assert torch.allclose(mine.double()(ids), hf.double()(ids).logits, atol=1e-10)
    assert math.isclose(sum(p.numel() for p in hf.parameters()),
                        L.count_parameters(4, 64, 176, 4, 2, len(tok)))


def test_tiny_mllama_config_vision_sizes():
    from transformers import LlamaConfig

    tok = L.shapes_tokenizer(n_scenes=300)
    text = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=4,
                       num_attention_heads=4, num_key_value_heads=2)
    cfg = L.tiny_mllama_config(text, tok, every=1, patch_size=4, vision_width=32, vision_layers=3)
    assert cfg.text_config.cross_attention_layers == L.cross_attention_layer_indices(4, 1)
    assert cfg.text_config.num_hidden_layers == 4 + len(cfg.text_config.cross_attention_layers)
    assert (cfg.vision_config.hidden_size, cfg.vision_config.vision_output_dim) == (32, 64)
    assert cfg.vision_config.intermediate_layers_indices == [2]
    assert (cfg.vision_config.image_size // cfg.vision_config.patch_size) ** 2 == 64  # 64 image tokens (+ CLS)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        L.tiny_mllama_config(text, tok, patch_size=5)


def test_shipped_mllama_reads_the_image():
    from transformers import MllamaForConditionalGeneration, MllamaProcessor

    path = hub.resolve("course/mllama-shapes")
    model = MllamaForConditionalGeneration.from_pretrained(path).eval()
    proc = MllamaProcessor.from_pretrained(path)
    assert max(abs(g) for g in L.mllama_gates(model)["attn"]) > 0.05  # trained: gates left zero
    data = L.ShapesVQA("test", 60, proc.tokenizer, proc.image_processor, ("color",))
    acc_img, acc_txt = L.vqa_accuracy(model, data)["color"], L.vqa_accuracy(model, data, image=False)["color"]
    assert acc_img > acc_txt + 0.2  # the color of a named shape cannot be known from the text alone
