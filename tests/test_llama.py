"""course_utils.llama (Llama 3 pieces, Llama 3.1's RoPE scaling, tied head) and its transformers bridge,
against transformers' LlamaForCausalLM; notebook 04's real-model check on tiny hub-shaped models."""
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.masking_utils import create_causal_mask
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm, LlamaRotaryEmbedding

from course_utils import hub, llama as L
from course_utils.bridges import transformers_llama as B
from course_utils.recipes import llama as RL
from course_utils.world.text import shapes_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "hub_configs"

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
    """The reference applies its own causality: SDPA's is_causal path, and eager with transformers' own mask."""
    x = torch.randn(2, 9, 64)
    mine = L.GroupedQueryAttention(64, 8, 2).eval()
    for impl in ("sdpa", "eager"):
        cfg = _cfg()
        cfg._attn_implementation = impl
        ref = LlamaAttention(cfg, layer_idx=0).eval()
        mine.load_state_dict(ref.state_dict(), strict=True)
        pos = torch.arange(9)[None]
        pe = LlamaRotaryEmbedding(cfg)(x, pos)
        mask = None if impl == "sdpa" else create_causal_mask(cfg, x, None, None, position_ids=pos,
                                                                 allow_is_causal_skip=False)
        with torch.no_grad():
            out_ref, _ = ref(x, position_embeddings=pe, attention_mask=mask)
            mine.fused = True
            assert torch.allclose(mine(x), out_ref, atol=TOL), impl
            mine.fused = False  # the written-out softmax(q k^T / sqrt(d) + M) v
            assert torch.allclose(mine(x), out_ref, atol=TOL), impl
    # and causality is real: the first output does not change when later tokens do
    with torch.no_grad():
        y = x.clone()
        y[:, 5:] = torch.randn(2, 4, 64)
        assert torch.allclose(mine(x)[:, :5], mine(y)[:, :5], atol=TOL)
        assert not torch.allclose(mine(x)[:, 5:], mine(y)[:, 5:], atol=1e-3)
    assert L.repeat_kv(torch.randn(1, 2, 3, 4), 4).shape == (1, 8, 3, 4)


def test_tiny_llama_logits_and_greedy_generation_equal_transformers():
    cfg = _cfg()
    hf = LlamaForCausalLM(cfg).eval()
    _randomize_norms(hf)
    mine = B.load_hf_state_dict(B.llama_from_hf_config(cfg), hf.state_dict()).eval()
    ids = torch.randint(0, 61, (3, 13))
    with torch.no_grad():
        assert torch.allclose(mine(ids), hf(ids).logits, atol=TOL)
    # an explicit attention mask: otherwise generate() masks every prompt token equal to pad_token_id
    want = hf.generate(ids[:1], attention_mask=torch.ones_like(ids[:1]), max_new_tokens=12, do_sample=False,
                       pad_token_id=0)
    assert torch.equal(L.generate_greedy(mine, ids[:1], 12), want)


def test_llama_rejects_bad_input():
    for rope_type in ("yarn", "linear", "dynamic"):
        with pytest.raises(ValueError, match=r"supported: \['default', 'llama3'\]"):
            B.llama_from_hf_config(_cfg(rope_parameters={"rope_type": rope_type, "rope_theta": 1e4, "factor": 2.0}))
    with pytest.raises(ValueError, match="missing"):
        B.rope_settings(SimpleNamespace(rope_parameters={"rope_type": "llama3", "rope_theta": 1e4, "factor": 8.0}))
    with pytest.raises(ValueError, match=r"\(batch, seq_len\)"):
        L.Llama(11, 16, 1, 2, 1, 32)(torch.zeros(5, dtype=torch.long))
    with pytest.raises(RuntimeError):  # a state dict of another shape fails loudly
        B.load_hf_state_dict(L.Llama(11, 16, 1, 2, 1, 32), LlamaForCausalLM(_cfg()).state_dict())
    with pytest.raises(ValueError, match="low_freq_factor < high_freq_factor"):
        L.rope_frequencies(16, scaling=dict(factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0,
                                            original_max_position_embeddings=64))




# ---- Llama 3.1's RoPE scaling, the tied head, the bridge ------------------------------------------------
def _hub_config(name: str, **overrides) -> LlamaConfig:
    """A tiny LlamaConfig with the structure of a hub model (tests/fixtures/hub_configs/<org>--<name>.json)."""
    d = json.loads((FIXTURES / f"{name}.json").read_text())
    assert d["_source"]
    d = {k: v for k, v in d.items() if not k.startswith("_")}
    d.update(overrides)
    return LlamaConfig(**d)


@pytest.mark.parametrize("published", [
    dict(head_dim=64, factor=32.0),   # Llama 3.2 1B
    dict(head_dim=128, factor=8.0),   # Llama 3.1 8B
])
def test_llama3_rope_frequencies_equal_transformers_at_published_sizes(published):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hd, factor = published["head_dim"], published["factor"]
    scaling = dict(factor=factor, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    cfg = LlamaConfig(hidden_size=32 * hd, num_attention_heads=32, num_key_value_heads=8, head_dim=hd,
                      max_position_embeddings=131072,
                      rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **scaling})
    want, _ = ROPE_INIT_FUNCTIONS["llama3"](cfg, "cpu")
    plain = L.rope_frequencies(hd)
    got = L.rope_frequencies(hd, scaling=scaling)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)
    # the three regimes (wavelength 2 pi / theta_k against 8192 / 4 and 8192 / 1)
    wl = 2 * math.pi / plain
    high, low = wl < 8192 / 4, wl > 8192 / 1
    mid = ~high & ~low
    assert high.any() and low.any() and mid.any()
    assert torch.equal(got[high], plain[high])                 # local order: unchanged
    assert torch.equal(got[low], plain[low] / factor)          # longer than the context: divided by factor
    ratio = got[mid] / plain[mid]                              # in between: from 1 down to 1 / factor
    assert ((ratio < 1) & (ratio > 1 / factor)).all() and (ratio.diff() < 0).all()
    assert (got.diff() < 0).all()                              # still a decreasing spectrum


def test_llama3_rope_cos_sin_equal_transformers_past_the_threshold():
    cfg = _hub_config("meta-llama--Meta-Llama-3.1-8B")
    pos = torch.arange(300)  # beyond original_max / high_freq_factor = 16 and original_max = 64
    rot = LlamaRotaryEmbedding(cfg)
    ref_cos, ref_sin = rot(torch.zeros(1, 300, cfg.hidden_size), pos[None])
    _, scaling = B.rope_settings(cfg)
    cos, sin = L.rope_cos_sin(pos, cfg.head_dim, 500000.0, scaling)
    assert torch.allclose(cos, ref_cos[0], atol=TOL) and torch.allclose(sin, ref_sin[0], atol=TOL)
    plain_cos, _ = L.rope_cos_sin(pos, cfg.head_dim, 500000.0)
    assert (plain_cos - cos).abs().max() > 0.5                 # the scaling moves the low-frequency angles


def test_tied_head_shares_the_embedding_matrix():
    tied = L.Llama(61, 64, 2, 8, 2, 96, tie_word_embeddings=True)
    assert tied.lm_head.weight is tied.embed_tokens.weight
    assert sum(p.numel() for p in tied.parameters()) == L.count_parameters(2, 64, 96, 8, 2, 61, tied_embeddings=True)
    untied = L.Llama(61, 64, 2, 8, 2, 96)
    assert sum(p.numel() for p in untied.parameters()) == L.count_parameters(2, 64, 96, 8, 2, 61)


@pytest.mark.parametrize("name,tied,factor", [("meta-llama--Llama-3.2-1B", True, 32.0),
                                              ("meta-llama--Meta-Llama-3.1-8B", False, 8.0)])
def test_hub_parity_on_tiny_hub_shaped_models(tmp_path, name, tied, factor):
    """Notebook 04's real-model function, offline, on a random LlamaForCausalLM with the hub model's structure."""
    cfg = _hub_config(name)
    assert cfg.rope_parameters["rope_type"] == "llama3" and cfg.rope_parameters["factor"] == factor
    assert cfg.tie_word_embeddings == tied
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()   # initializer_range 0.3: positions matter in the logits
    _randomize_norms(hf)
    hf.save_pretrained(tmp_path)
    shapes_tokenizer(n_scenes=300).save_pretrained(tmp_path)
    long_len = 256  # > original_max / high_freq_factor = 16: the scaled pairs turn by visibly different angles
    res = RL.hub_parity(str(tmp_path), long_len=long_len, max_new_tokens=6)
    assert res["long_len"] == long_len and not res["course_model"]
    assert res["rel_diff"] < 1e-5
    assert all(same for _, _, same in res["generations"]) and len(res["generations"]) == 2
    assert res["n_params"] == res["n_formula"]
    ours = res["ours"]
    assert (ours.lm_head.weight is ours.embed_tokens.weight) == tied
    assert ours.layers[0].self_attn.rope_scaling["factor"] == factor
    # the same weights with plain RoPE give clearly different logits: the parity above tests the scaling
    plain = LlamaForCausalLM(_hub_config(name, rope_scaling=None, rope_parameters={"rope_type": "default",
                                                                                    "rope_theta": 500000.0})).eval()
    plain.load_state_dict(res["model"].state_dict())
    ids = torch.randint(0, cfg.vocab_size, (1, long_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scaled_logits, plain_logits = res["model"](ids).logits, plain(ids).logits
    rel = ((scaled_logits - plain_logits).abs().max() / scaled_logits.abs().max()).item()
    assert rel > 0.3, rel
    with torch.no_grad():  # and only at positions where the low frequencies have turned
        assert (scaled_logits - plain_logits)[0, 0].abs().max() < 1e-4


def test_hub_parity_needs_a_tokenizer_with_a_loaded_model():
    with pytest.raises(ValueError, match="tokenizer"):
        RL.hub_parity(LlamaForCausalLM(_cfg()))


# ---- device and dtype ---------------------------------------------------------------------------------
@pytest.mark.parametrize("device,dtype", [("meta", torch.float32), ("cpu", torch.bfloat16)])
def test_llama_runs_on_meta_and_in_bfloat16(device, dtype):
    scaling = dict(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)
    torch.manual_seed(0)
    with torch.device(device):
        model = L.Llama(61, 64, 2, 8, 2, 96, tie_word_embeddings=True, rope_scaling=scaling).to(dtype).eval()
        gqa = L.GroupedQueryAttention(64, 8, 2).to(dtype)
        ids = torch.randint(0, 61, (2, 40))
        x = torch.randn(2, 40, 64, dtype=dtype)
    logits = model(ids)
    assert logits.shape == (2, 40, 61) and logits.device.type == device and logits.dtype == dtype
    assert gqa(x).shape == x.shape and gqa(x).dtype == dtype and gqa(x).device.type == device
    assert L.apply_rope_complex(x.view(2, 40, 8, 8).transpose(1, 2), torch.arange(40, device=device)).device.type == device
    out = L.generate_greedy(model, ids[:, :5], 2)
    assert out.shape == (2, 7) and out.device.type == device
    if device == "cpu":  # bfloat16 agrees with float32 up to bf16 rounding
        ref = model.float()(ids)
        assert ((logits.float() - ref).abs().max() / ref.abs().max()) < 0.05


def test_shipped_llama_tiny_equals_course_llama():
    from transformers import AutoTokenizer

    path = hub.resolve("course/llama-tiny")
    hf = LlamaForCausalLM.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    mine = B.llama_from_hf(hf)
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


def test_hub_parity_offline_is_the_course_model():
    """What notebook 04's real-model cell runs offline: the shipped course/llama-tiny."""
    res = RL.hub_parity(hub.resolve("meta-llama/Llama-3.2-1B"))
    assert res["course_model"] and res["long_len"] == 128
    assert res["rel_diff"] < 1e-5 and res["n_params"] == res["n_formula"]
    assert [p for p, _, same in res["generations"] if same] == list(RL.COURSE_PROMPTS)


def test_lm_batch_labels_ignore_padding():
    tok = shapes_tokenizer(n_scenes=300)
    b = RL.lm_batch(tok, ["a red circle .", "is there a square ? no"])
    assert b["input_ids"][0, 0] == tok.bos_token_id and (b["labels"] == L.IGNORE_INDEX).sum() == 2
    assert tok.eos_token_id in b["input_ids"][0].tolist()

