"""Llama 3's 4-D parallelism (notebook 04, section 9) on ``torch.distributed``: what a DP and a TP rank
compute and send, and the arithmetic of the lecture's parallelism table.

Every function that talks to other ranks uses an initialised default process group (gloo on the CPU,
NCCL on GPUs); ``course_utils.distributed.launch`` starts one from a notebook cell. Names follow
Megatron-LM (Shoeybi et al., 2019): a *column-parallel* linear splits its output features across
ranks (no communication), a *row-parallel* one splits its input features and ends in one all-reduce.

- DP: ``shard_batch`` (each rank its slice of the batch) and ``all_reduce_gradients`` (the average of
  the ranks' gradients = the gradient of the whole batch, for a mean loss over equal shards).
- TP: ``split_swiglu`` / ``tp_swiglu`` (gate and up column-parallel, down row-parallel) and
  ``split_attention`` / ``tp_attention`` (q, k, v column-parallel by heads, o row-parallel);
  ``tp_bytes_per_token`` the all-reduce traffic per token and rank.
- PP and CP: ``bubble_fraction`` of a 1F1B schedule, ``tokens_per_batch`` of a table row.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from .llama import apply_rope, attention, causal_mask, repeat_kv, rope_cos_sin


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) with world_size >= 1, got rank={rank}, "
                         f"world_size={world_size}")


def _split(n: int, world_size: int, what: str) -> int:
    if world_size < 1 or n % world_size:
        raise ValueError(f"{what} ({n}) is not divisible by the parallel degree ({world_size}): "
                         f"choose a degree that divides it")
    return n // world_size


# --------------------------------------------------------------------------------------------
# Data parallelism
# --------------------------------------------------------------------------------------------
def shard_batch(batch, rank: int, world_size: int):
    """Rank ``rank``'s contiguous slice of a batch (a tensor or a dict of tensors, batch first).

    DP needs equal shards: with a mean loss, the average of the shard gradients is the gradient of
    the whole batch only if every shard has ``B / world_size`` examples."""
    _check_rank(rank, world_size)
    tensors = batch if isinstance(batch, dict) else {"_": batch}
    sizes = {t.shape[0] for t in tensors.values()}
    if len(sizes) != 1:
        raise ValueError(f"every tensor of the batch needs the same first dimension, got {sorted(sizes)}")
    per = _split(sizes.pop(), world_size, "the batch size")
    out = {k: t[rank * per:(rank + 1) * per] for k, t in tensors.items()}
    return out if isinstance(batch, dict) else out["_"]


def all_reduce_gradients(model: nn.Module) -> None:
    """Average every gradient over the ranks (what DDP's buckets do, one tensor at a time).

    g = (1/P) sum_r g_r  -- for a mean loss on equal shards this is the full-batch gradient."""
    world = dist.get_world_size()
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= world


# --------------------------------------------------------------------------------------------
# Tensor parallelism (Megatron-style)
# --------------------------------------------------------------------------------------------
def split_swiglu(gate_w: torch.Tensor, up_w: torch.Tensor, down_w: torch.Tensor, rank: int, world_size: int):
    """Rank ``rank``'s shard of a SwiGLU: rows of ``W_gate``/``W_up`` (F, D) and columns of ``W_down`` (D, F).

    Column-parallel gate/up: rank r computes the hidden units [r F/P, (r+1) F/P) -- SiLU and the
    product are element-wise, so they need nothing from other ranks. Row-parallel down: each rank
    multiplies its slice of the hidden units by its columns of ``W_down``; the partial outputs add up."""
    _check_rank(rank, world_size)
    per = _split(gate_w.shape[0], world_size, "the FFN hidden size")
    rows = slice(rank * per, (rank + 1) * per)
    return {"gate": gate_w[rows], "up": up_w[rows], "down": down_w[:, rows]}


def tp_swiglu(x: torch.Tensor, shard: dict) -> torch.Tensor:
    """The SwiGLU output from one rank's shard: (..., D) -> (..., D), one all-reduce (sum)."""
    # h_r = SiLU(x W_gate,r^T) * (x W_up,r^T)      (..., F/P), no communication
    h = F.silu(x @ shard["gate"].T) * (x @ shard["up"].T)
    # y = sum_r h_r W_down,r^T                      (..., D), all-reduce
    y = h @ shard["down"].T
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def split_attention(q_w, k_w, v_w, o_w, n_heads: int, n_kv_heads: int, rank: int, world_size: int):
    """Rank ``rank``'s heads of a GQA layer: q/k/v rows (column-parallel by heads), o columns (row-parallel).

    Each rank keeps ``n_heads / P`` query heads and the ``n_kv_heads / P`` key/value heads they read,
    so both head counts must be divisible by the TP degree (Llama 3: 8 KV heads, TP = 8 -> one each)."""
    _check_rank(rank, world_size)
    hq = _split(n_heads, world_size, "the number of query heads")
    hkv = _split(n_kv_heads, world_size, "the number of key/value heads")
    d = q_w.shape[0] // n_heads
    q_rows = slice(rank * hq * d, (rank + 1) * hq * d)
    kv_rows = slice(rank * hkv * d, (rank + 1) * hkv * d)
    return {"q": q_w[q_rows], "k": k_w[kv_rows], "v": v_w[kv_rows], "o": o_w[:, q_rows],
            "n_heads": hq, "n_kv_heads": hkv, "head_dim": d}


def tp_attention(x: torch.Tensor, shard: dict, theta: float) -> torch.Tensor:
    """Causal GQA with RoPE from one rank's heads: (B, T, D) -> (B, T, D), one all-reduce (sum)."""
    b, t, _ = x.shape
    hq, hkv, d = shard["n_heads"], shard["n_kv_heads"], shard["head_dim"]
    # this rank's heads: (B, H/P, T, d) and (B, H_kv/P, T, d)
    q = (x @ shard["q"].T).view(b, t, hq, d).transpose(1, 2)
    k = (x @ shard["k"].T).view(b, t, hkv, d).transpose(1, 2)
    v = (x @ shard["v"].T).view(b, t, hkv, d).transpose(1, 2)
    cos, sin = (c.to(x.dtype) for c in rope_cos_sin(torch.arange(t, device=x.device), d, theta))
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = repeat_kv(k, hq // hkv), repeat_kv(v, hq // hkv)
    heads = attention(q, k, v, causal_mask(t, x.dtype, x.device))         # (B, H/P, T, d)
    # y = sum_r concat(heads_r) W_o,r^T             (B, T, D), all-reduce
    y = heads.transpose(1, 2).reshape(b, t, hq * d) @ shard["o"].T
    dist.all_reduce(y, op=dist.ReduceOp.SUM)
    return y


def tp_bytes_per_token(dim: int, n_layers: int, tp: int, bytes_per_value: int = 2, backward: bool = True) -> float:
    """Bytes one rank sends per token for TP's all-reduces (ring algorithm).

    Per layer the forward pass all-reduces two activations of ``dim`` values (after attention and
    after the FFN); the backward pass two more (the input gradients). A ring all-reduce of ``n``
    values sends ``2 (P-1)/P * n`` of them from each rank."""
    if tp < 1:
        raise ValueError(f"the TP degree must be >= 1, got {tp}")
    per_layer = (4 if backward else 2) * dim
    return n_layers * per_layer * 2 * (tp - 1) / tp * bytes_per_value


# --------------------------------------------------------------------------------------------
# Pipeline and context parallelism: arithmetic
# --------------------------------------------------------------------------------------------
def bubble_fraction(pp: int, n_microbatches: int) -> float:
    """Idle fraction of a 1F1B (or GPipe) schedule: ``(p - 1) / (m + p - 1)`` with p stages, m micro-batches."""
    if pp < 1 or n_microbatches < 1:
        raise ValueError(f"need pp >= 1 and n_microbatches >= 1, got pp={pp}, n_microbatches={n_microbatches}")
    return (pp - 1) / (n_microbatches + pp - 1)


def tokens_per_batch(seq_len: int, batch_per_dp: int, dp: int) -> int:
    """Tokens in one global batch: sequence length x sequences per DP rank x DP ranks."""
    return seq_len * batch_per_dp * dp
