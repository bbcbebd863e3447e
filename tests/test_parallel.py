"""Llama 3's parallelism on torch.distributed (notebook 04, section 9): DP and TP equalities in 2 real
processes (gloo), the arithmetic of the lecture's table, and the errors a student can run into."""
import math

import pytest
import torch

from course_utils import distributed, parallel
from course_utils.recipes import parallel as RP


# ---------------------------------------------------------------- in-process: arithmetic and shards
def test_shard_batch_covers_the_batch_in_order():
    x = torch.arange(24).view(6, 4)
    shards = [parallel.shard_batch(x, r, 3) for r in range(3)]
    assert torch.equal(torch.cat(shards), x) and all(s.shape == (2, 4) for s in shards)
    d = parallel.shard_batch({"input_ids": x, "labels": x + 1}, 1, 2)
    assert torch.equal(d["labels"], x[3:] + 1)


@pytest.mark.parametrize("call, match", [
    (lambda: parallel.shard_batch(torch.zeros(5, 3), 0, 2), "batch size \\(5\\) is not divisible"),
    (lambda: parallel.shard_batch(torch.zeros(4, 3), 2, 2), "rank must be in"),
    (lambda: parallel.shard_batch({"a": torch.zeros(4), "b": torch.zeros(2)}, 0, 2), "same first dimension"),
    (lambda: parallel.split_attention(*(torch.zeros(64, 64),) * 4, 4, 2, 0, 4), "key/value heads \\(2\\)"),
    (lambda: parallel.split_attention(*(torch.zeros(64, 64),) * 4, 6, 2, 0, 4), "query heads \\(6\\)"),
    (lambda: parallel.split_swiglu(torch.zeros(10, 4), torch.zeros(10, 4), torch.zeros(4, 10), 0, 4), "FFN hidden"),
    (lambda: parallel.bubble_fraction(0, 4), "pp >= 1"),
])
def test_bad_degrees_are_clear_value_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_swiglu_shards_add_up_to_the_layer_in_one_process():
    """The algebra behind TP without processes: the sum of the row-parallel partial outputs is the FFN."""
    torch.manual_seed(0)
    g, u, d, x = torch.randn(12, 8), torch.randn(12, 8), torch.randn(8, 12), torch.randn(3, 8)
    full = (torch.nn.functional.silu(x @ g.T) * (x @ u.T)) @ d.T
    parts = []
    for r in range(3):
        s = parallel.split_swiglu(g, u, d, r, 3)
        parts.append((torch.nn.functional.silu(x @ s["gate"].T) * (x @ s["up"].T)) @ s["down"].T)
    assert torch.allclose(sum(parts), full, atol=1e-5)
    assert not torch.allclose(parts[0], full, atol=1e-2)          # one rank alone is not the layer


def test_bubble_fraction_and_the_tables_tokens():
    assert parallel.bubble_fraction(1, 8) == 0.0
    assert parallel.bubble_fraction(4, 4) == pytest.approx(3 / 7)
    assert parallel.bubble_fraction(16, 16) == pytest.approx(15 / 31)
    assert parallel.tokens_per_batch(8192, 32, 64) == 16 * 2**20
    assert parallel.tokens_per_batch(8192, 16, 128) == 16 * 2**20
    assert parallel.tokens_per_batch(131_072, 16, 4) == 8 * 2**20     # the printed row 3 does not close


def test_tp_bytes_per_token_closed_form():
    # 405B: 126 layers, d = 16,384, bf16, TP = 8: 4 all-reduces of d per layer, ring factor 2 (P-1)/P
    b = parallel.tp_bytes_per_token(16_384, 126, 8)
    assert b == 126 * 4 * 16_384 * 2 * 7 / 8 * 2
    assert parallel.tp_bytes_per_token(16_384, 126, 1) == 0.0
    assert parallel.tp_bytes_per_token(64, 1, 2, bytes_per_value=4, backward=False) == 2 * 64 * 4


# ---------------------------------------------------------------- real process groups (2 ranks, gloo)
@pytest.fixture(scope="module")
def demo():
    """One process group of 2 ranks for every DP mode and TP (what notebook 04 runs)."""
    return RP.parallel_demo(world_size=2)


@pytest.mark.parametrize("mode", ["manual", "ddp"])
def test_data_parallel_equals_one_process(demo, mode):
    r = demo["dp"][mode]
    assert r["grad_diff"] < 1e-6, r["grad_diff"]
    assert r["rank_param_diff"] == 0.0 and r["param_diff"] < 1e-6
    assert r["losses"][0] != r["losses"][1]                    # the ranks really saw different data
    assert math.isclose(sum(r["losses"]) / 2, r["full_loss"], rel_tol=1e-5)


def test_fsdp_shards_the_weights_and_equals_one_process(demo):
    r = demo["dp"]["fsdp"]
    assert r["param_diff"] < 1e-6 and r["rank_param_diff"] == 0.0
    assert max(r["local_numel"]) < 0.6 * r["n_params"]          # each rank holds about half
    assert demo["dp"]["manual"]["local_numel"][0] == r["n_params"]


def test_tensor_parallel_layer_equals_the_unsplit_layer(demo):
    r = demo["tp"]
    assert r["ffn_diff"] < 1e-6 and r["attention_diff"] < 1e-6
    assert r["shard_numel"] == [r["layer_numel"] // 2] * 2
    assert r["allreduce_values_per_token"] == 2 * r["hidden_size"]


def test_demo_rejects_bad_degrees_before_starting_processes():
    with pytest.raises(ValueError, match="batch_size \\(6\\) is not divisible by world_size \\(4\\)"):
        RP.parallel_demo(world_size=4, batch_size=6, tp=False)
    with pytest.raises(ValueError, match="not divisible by the TP degree \\(3\\)"):
        RP.parallel_demo(world_size=3, dp_modes=(), batch_size=6)
    with pytest.raises(ValueError, match="mode must be one of"):
        RP.parallel_demo(dp_modes=("zero",))


def _hang(rank, world_size):
    import torch.distributed as dist

    if rank == 0:
        dist.barrier()          # rank 1 never joins: rank 0 waits until the group's timeout
    return rank


def _boom(rank, world_size):
    if rank == 1:
        raise ArithmeticError("planted")
    return rank


def test_launch_reports_a_hung_rank_and_a_failing_rank():
    with pytest.raises(RuntimeError, match="rank 0 failed"):
        distributed.launch(_hang, 2, timeout=3)
    with pytest.raises(RuntimeError, match="ArithmeticError: planted"):
        distributed.launch(_boom, 2, timeout=10)
    assert distributed.launch(_boom, 1) == [0]


def test_launch_rejects_a_function_it_cannot_import():
    def local(rank, world_size):
        return rank

    with pytest.raises(ValueError, match="cannot import it"):
        distributed.launch(local, 2)
    with pytest.raises(ValueError, match="world_size must be a positive integer"):
        distributed.launch(_boom, 0)
