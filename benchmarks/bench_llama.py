"""Llama 3 / Llama 3.2 Vision chapter (notebooks 04-05): parity and speed against transformers, and the
quality of the shipped checkpoints on held-out Shapes World test seeds."""
from __future__ import annotations

import time

import torch


def _timeit(fn, repeat: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


@torch.no_grad()
def run(fast: bool = True) -> dict:
    from transformers import AutoTokenizer, LlamaForCausalLM, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.configuration_mllama import MllamaTextConfig
    from transformers.models.mllama.modeling_mllama import MllamaCrossAttentionDecoderLayer
    from transformers.utils import logging as hf_logging

    from course_utils import hub, llama as L, mllama as M, shapes
    from course_utils.bridges.transformers_llama import llama_from_hf
    from course_utils.recipes import llama as RL, mllama as RM

    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    rows = []
    repeat = 5 if fast else 20

    # ---- course Llama vs LlamaForCausalLM (the shipped llama-tiny) --------------------------------------
    path = hub.resolve("course/llama-tiny")
    tok = AutoTokenizer.from_pretrained(path)
    hf = LlamaForCausalLM.from_pretrained(path).eval()
    ours = llama_from_hf(hf)
    ids = torch.randint(5, len(tok), (16, 32))
    ref_logits = hf(ids).logits
    diff = (ours(ids) - ref_logits).abs().max().item()
    diff64 = (ours.double()(ids) - hf.double()(ids).logits).abs().max().item()
    ours.float(), hf.float()
    t_ours, t_hf = _timeit(lambda: ours(ids), repeat), _timeit(lambda: hf(ids), repeat)
    rows.append({"what": "course Llama vs LlamaForCausalLM (llama-tiny), logits (16 x 32 tokens)",
                 "value": f"max |diff| {diff:.1e} in float32 ({diff / ref_logits.abs().max().item():.1e} of max |logit|), "
                          f"{diff64:.1e} in float64",
                 "course ms": round(1e3 * t_ours, 2), "transformers ms": round(1e3 * t_hf, 2)})
    prompt = tok(["<|begin_of_text|>a small"], add_special_tokens=False, return_tensors="pt").input_ids
    gen_hf = lambda: hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=20, do_sample=False,
                                 pad_token_id=tok.pad_token_id)
    want = gen_hf()
    gen_ours = lambda: L.generate_greedy(ours, prompt, 20, eos_token_id=tok.eos_token_id)
    got = gen_ours()
    t_g_ours, t_g_hf = _timeit(gen_ours, max(1, repeat // 2)), _timeit(gen_hf, max(1, repeat // 2))
    rows.append({"what": f"greedy generation, {want.shape[1] - prompt.shape[1]} tokens "
                         "(course: no KV cache; transformers: cache)",
                 "value": "identical tokens" if torch.equal(got, want) else "DIFFERENT tokens",
                 "course ms": round(1e3 * t_g_ours, 2), "transformers ms": round(1e3 * t_g_hf, 2)})
    test_texts = RL.lm_texts(shapes.scenes("test", 100 if fast else 500))
    loss = hf(**RL.lm_batch(tok, test_texts)).loss.item()
    rows.append({"what": f"llama-tiny held-out loss ({len(test_texts)} test texts)",
                 "value": f"{loss:.4f} (perplexity {torch.tensor(loss).exp().item():.2f})"})

    # ---- gated cross-attention layer vs MllamaCrossAttentionDecoderLayer ----------------------------------
    tc = MllamaTextConfig(vocab_size=61, hidden_size=256, intermediate_size=704, num_hidden_layers=3,
                          num_attention_heads=8, num_key_value_heads=2, cross_attention_layers=[1],
                          pad_token_id=0, bos_token_id=1, eos_token_id=2)
    tc._attn_implementation = "sdpa"
    ref = MllamaCrossAttentionDecoderLayer(tc, 1).eval()
    ref.cross_attn_attn_gate.fill_(0.7)
    ref.cross_attn_mlp_gate.fill_(-0.3)
    mine = M.GatedCrossAttentionLayer(256, 8, 2, 704).eval()
    mine.load_state_dict(ref.state_dict(), strict=True)
    x, img = torch.randn(8, 64, 256), torch.randn(8, 576, 256)
    mask = torch.zeros(8, 1, 64, 576)  # a (no-op) mask: transformers' SDPA path needs one (see notebook 05)
    call_ref = lambda: ref(x, cross_attention_states=img, cross_attention_mask=mask, attention_mask=None,
                           full_text_row_masked_out_mask=None)
    diff = (mine(x, img) - call_ref()).abs().max().item()
    rows.append({"what": "gated cross-attention layer vs MllamaCrossAttentionDecoderLayer (8 x 64 text, 576 image tokens, d=256)",
                 "value": f"max |diff| {diff:.1e}", "course ms": round(1e3 * _timeit(lambda: mine(x, img), repeat), 2),
                 "transformers ms": round(1e3 * _timeit(call_ref, repeat), 2)})

    # ---- the shipped tiny Llama 3.2 Vision on held-out Shapes World questions -----------------------------
    path = hub.resolve("course/mllama-shapes")
    model = MllamaForConditionalGeneration.from_pretrained(path).eval()
    proc = MllamaProcessor.from_pretrained(path)
    n = 300 if fast else 2000
    data = RM.vqa_data("test", n, proc, ("color", "existence", "count"))
    t0 = time.perf_counter()
    acc_img = RM.vqa_accuracy(model, data)
    t_eval = time.perf_counter() - t0
    acc_txt = RM.vqa_accuracy(model, data, image=False)
    for k in ("color", "existence", "count", "all"):
        rows.append({"what": f"mllama-shapes VQA accuracy, {k} ({n} test scenes)",
                     "value": f"{acc_img[k]:.3f} with image vs {acc_txt[k]:.3f} text only"})
    rows.append({"what": "mllama-shapes answers per second (batch 256, CPU)", "value": f"{len(data) / t_eval:.0f}"})
    return {"title": "Llama 3 and Llama 3.2 Vision (notebooks 04-05)", "rows": rows,
            "notes": "Parity: same weights copied into both; tolerance 1e-5. Accuracy: first answer token "
                     "(argmax) vs the one-word answer, on test seeds never trained on; 'text only' is the same "
                     "model without the image (its cross-attention layers are skipped, i.e. the frozen llama-tiny). "
                     "Timings on a shared 2-core CPU."}
