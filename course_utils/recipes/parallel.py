"""DP and TP on the course's tiny Llama, in real processes (notebook 04, section 9; ``tests/test_parallel.py``).

The workers run in spawned processes started by ``course_utils.distributed.launch`` (gloo, CPU); the
``*_demo`` functions run them, compute the one-process reference in the calling process, and return the
largest differences -- what the notebook asserts.

The model is ``course/llama-tiny`` as the course's own ``Llama`` (equal to ``LlamaForCausalLM``): a rank
then imports torch and safetensors only and starts in seconds.

- ``parallel_demo(dp_modes, tp)``: one process group for every demo (starting ranks costs seconds):
  DP in ``"manual"`` (shard + ``all_reduce_gradients``), ``"ddp"`` (``DistributedDataParallel``) and
  ``"fsdp"`` (``torch.distributed.fsdp.fully_shard``, FSDP2) modes -- each rank takes its share of a batch
  of Shapes World text; gradients vs one process on the whole batch, and the weights of the ranks after
  one AdamW step -- and TP: layer 0 of ``course/llama-tiny`` split Megatron-style (SwiGLU and GQA
  attention) vs the unsplit layer, and the values each rank all-reduces per token.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from .. import distributed, hub, parallel
from ..io import read_config

DP_MODES = ("manual", "ddp", "fsdp")


def _tiny_llama():
    """``course/llama-tiny`` as the course's own ``Llama`` (equal to ``LlamaForCausalLM``, tests/test_llama.py)
    and its config: torch and safetensors only, so a rank starts in seconds (no transformers import)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from ..bridges.transformers_llama import llama_from_hf_config, load_hf_state_dict

    path = Path(hub.resolve("course/llama-tiny"))
    config = SimpleNamespace(**read_config(path))
    return load_hf_state_dict(llama_from_hf_config(config), load_file(path / "model.safetensors")), config


def text_batch(batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """``(batch_size, seq_len)`` token ids: Shapes World captions and QA joined into one stream and cut into
    equal windows, as pretraining packs documents (every position counts, so equal shards carry equal weight)."""
    from tokenizers import Tokenizer

    from ..world import shapes
    from .llama import lm_texts

    path = Path(hub.resolve("course/llama-tiny"))
    tok, config = Tokenizer.from_file(str(path / "tokenizer.json")), read_config(path)
    stream: list[int] = []
    n = 0
    while len(stream) < batch_size * seq_len:
        for text in lm_texts(shapes.scenes("train", 20, start=seed * 1000 + n)):
            stream += [config["bos_token_id"]] + tok.encode(text, add_special_tokens=False).ids + [config["eos_token_id"]]
        n += 20
    return torch.tensor(stream[:batch_size * seq_len]).view(batch_size, seq_len)


def _flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().reshape(-1) for p in model.parameters()])


def _flat_params(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _step(model, ids: torch.Tensor):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    logits = model(ids)                                                   # (B/P, T, V)
    # L = mean over this rank's positions of -log p(x_{t+1} | x_<=t)
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    return opt, loss.item()


def dp_worker(rank: int, world_size: int, mode: str, ids: torch.Tensor) -> dict:
    """One DP rank: its shard of ``ids``, forward/backward, gradient averaging, one AdamW step."""
    model, _ = _tiny_llama()
    shard = parallel.shard_batch(ids, rank, world_size)
    if mode == "manual":
        opt, loss = _step(model, shard)
        parallel.all_reduce_gradients(model)            # g = (1/P) sum_r g_r
        grads = _flat_grads(model)
    elif mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ddp = DistributedDataParallel(model)            # all-reduces gradient buckets during backward
        opt, loss = _step(ddp, shard)
        grads = _flat_grads(model)
    elif mode == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for layer in model.layers:
            fully_shard(layer)                          # each rank keeps 1/P of every parameter
        fully_shard(model)
        opt, loss = _step(model, shard)
        grads = None                                    # sharded: compare the gathered weights instead
    else:
        raise ValueError(f"mode must be one of {DP_MODES}, got {mode!r}")
    opt.step()
    if mode == "fsdp":
        from torch.distributed.tensor import DTensor

        params = torch.cat([(p.full_tensor() if isinstance(p, DTensor) else p).detach().reshape(-1)
                            for p in model.parameters()])
        local = sum(p.to_local().numel() if isinstance(p, DTensor) else p.numel() for p in model.parameters())
    else:
        params, local = _flat_params(model), sum(p.numel() for p in model.parameters())
    return {"loss": loss, "grads": grads, "params": params, "shard_rows": shard.shape[0], "local_numel": local}


def tp_worker(rank: int, world_size: int, x: torch.Tensor) -> dict:
    """One TP rank: its shard of layer 0's SwiGLU and attention, applied to the full input ``x``."""
    model, c = _tiny_llama()
    layer = model.layers[0]
    mlp, att = layer.mlp, layer.self_attn
    with torch.no_grad():
        ffn = parallel.split_swiglu(mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight, rank, world_size)
        y_ffn = parallel.tp_swiglu(x, ffn)
        heads = parallel.split_attention(att.q_proj.weight, att.k_proj.weight, att.v_proj.weight, att.o_proj.weight,
                                         c.num_attention_heads, c.num_key_value_heads, rank, world_size)
        y_att = parallel.tp_attention(x, heads, c.rope_parameters["rope_theta"])
    shard_numel = sum(v.numel() for v in ffn.values()) + sum(heads[k].numel() for k in "qkvo")
    # values this rank hands to all-reduce per token: one D-vector after the FFN, one after attention
    return {"ffn": y_ffn, "attention": y_att, "shard_numel": shard_numel,
            "allreduce_values_per_token": (y_ffn.numel() + y_att.numel()) // (x.shape[0] * x.shape[1])}


def demo_worker(rank: int, world_size: int, dp_modes, ids, x) -> dict:
    """Every demo in one process group: DP in each of ``dp_modes`` on ``ids``, then TP on ``x`` (if given)."""
    out = {"dp": {mode: dp_worker(rank, world_size, mode, ids) for mode in dp_modes}}
    if x is not None:
        out["tp"] = tp_worker(rank, world_size, x)
    return out


def _check_degrees(world_size: int, batch_size: int, dp_modes, tp: bool, config) -> None:
    bad = [m for m in dp_modes if m not in DP_MODES]
    if bad:
        raise ValueError(f"mode must be one of {DP_MODES}, got {bad[0]!r}")
    if dp_modes and batch_size % world_size:
        raise ValueError(f"batch_size ({batch_size}) is not divisible by world_size ({world_size}): each DP rank "
                         "needs the same number of sequences")
    if tp:
        for n, what in ((config.intermediate_size, "the FFN hidden size"),
                        (config.num_attention_heads, "the number of query heads"),
                        (config.num_key_value_heads, "the number of key/value heads")):
            if n % world_size:
                raise ValueError(f"{what} ({n}) is not divisible by the TP degree ({world_size}): choose a degree "
                                 "that divides it")


def parallel_demo(world_size: int = 2, dp_modes=DP_MODES, tp: bool = True, batch_size: int = 8, seq_len: int = 32,
                  tp_tokens: tuple[int, int] = (2, 9), timeout: float = 60.0) -> dict:
    """DP (each of ``dp_modes``) and TP on ``world_size`` processes vs one process; bad degrees are a
    ``ValueError`` before any process starts.

    ``result["dp"][mode]``: ``grad_diff`` (max |g_DP - g_full|; None for FSDP, whose gradients stay
    sharded), ``param_diff`` (max |w_rank - w_full| after one AdamW step), ``rank_param_diff`` (between
    ranks), the losses per rank, the full-batch loss, the parameters each rank holds.
    ``result["tp"]``: ``ffn_diff`` and ``attention_diff`` (max |TP - unsplit| on layer 0), the
    parameters per rank and the values each rank all-reduces per token (2 D in the forward pass)."""
    model, config = _tiny_llama()
    dp_modes = tuple(dp_modes)
    _check_degrees(world_size, batch_size, dp_modes, tp, config)
    ids = text_batch(batch_size, seq_len)
    torch.manual_seed(0)
    x = torch.randn(*tp_tokens, config.hidden_size) if tp else None
    ranks = distributed.launch(demo_worker, world_size, args=(dp_modes, ids, x), timeout=timeout)
    result: dict = {"world_size": world_size, "dp": {}}
    for mode in dp_modes:
        ref, _ = _tiny_llama()
        opt, full_loss = _step(ref, ids)
        full_grads = _flat_grads(ref)
        opt.step()
        full_params = _flat_params(ref)
        rs = [r["dp"][mode] for r in ranks]
        result["dp"][mode] = {
            "batch_size": batch_size, "seq_len": seq_len,
            "losses": [r["loss"] for r in rs], "full_loss": full_loss,
            "grad_diff": None if mode == "fsdp" else max((r["grads"] - full_grads).abs().max().item() for r in rs),
            "param_diff": max((r["params"] - full_params).abs().max().item() for r in rs),
            "rank_param_diff": max((r["params"] - rs[0]["params"]).abs().max().item() for r in rs),
            "n_params": full_params.numel(), "local_numel": [r["local_numel"] for r in rs],
        }
    if tp:
        c, layer = config, model.layers[0]
        with torch.no_grad():
            y_ffn, y_att = layer.mlp(x), layer.self_attn(x)
        rs = [r["tp"] for r in ranks]
        result["tp"] = {
            "ffn_diff": max((r["ffn"] - y_ffn).abs().max().item() for r in rs),
            "attention_diff": max((r["attention"] - y_att).abs().max().item() for r in rs),
            "layer_numel": sum(p.numel() for p in layer.mlp.parameters())
                           + sum(p.numel() for p in layer.self_attn.parameters()),
            "shard_numel": [r["shard_numel"] for r in rs],
            "allreduce_values_per_token": rs[0]["allreduce_values_per_token"], "hidden_size": c.hidden_size,
        }
    return result
