"""rlhf/memory.py: hand-derived per-GPU numbers and the orderings every estimate must respect."""

from __future__ import annotations

import dataclasses

import pytest

from rlhf.memory import (
    FRAMEWORK_OVERHEAD_GIB,
    GIB,
    REDUCE_BUCKET_ELEMENTS,
    ModelShape,
    inference_memory,
    kv_cache_bytes_per_token,
    rollout_memory,
    training_memory,
)

# Llama-3-8B (config.json of meta-llama/Meta-Llama-3-8B).
LLAMA3_8B = ModelShape(
    params_b=8.03,
    hidden_size=4096,
    num_layers=32,
    vocab_size=128256,
    num_kv_heads=8,
    num_heads=32,
    intermediate_size=14336,
)
BASE = dict(dp_size=8, zero_stage=2, micro_batch=2, seq_len=2048, gradient_checkpointing=True)


def _train(**kw):
    return training_memory("actor", LLAMA3_8B, **{**BASE, **kw})


def test_layer_numbers_of_llama3_8b():
    # kv_dim = 8 heads x 128 = 1024; one layer = 2*4096^2 + 2*4096*1024 + 3*4096*14336 = 218,103,808 params.
    assert LLAMA3_8B.kv_dim == 1024
    assert LLAMA3_8B.layer_params == 218_103_808
    # 22*4096 + 4*1024 + 8*14336 = 90112 + 4096 + 114688 = 208,896 bytes per token per layer.
    assert LLAMA3_8B.activation_bytes_per_token_layer() == 208_896


def test_zero2_states_by_hand():
    est = _train()
    p = 8.03e9
    # bf16 weights 2P unpartitioned; bf16 grads 2P/8; fp32 master + Adam moments 12P/8.
    assert est.weights_gib == pytest.approx(2 * p / GIB)
    assert est.grads_gib == pytest.approx(2 * p / 8 / GIB)
    assert est.optimizer_gib == pytest.approx(12 * p / 8 / GIB)
    # Reduce bucket: 5e8 bf16 elements = 1e9 bytes, on top of the framework overhead.
    assert est.other_gib == pytest.approx(FRAMEWORK_OVERHEAD_GIB + 2 * REDUCE_BUCKET_ELEMENTS / GIB)


def test_checkpointed_activations_by_hand():
    est = _train()
    tokens = 2 * 2048
    # 32 layer inputs of 2h bytes + one layer's 208,896 bytes + final norm/head input 10h, per token;
    # logits 4 bytes per vocabulary entry per token.
    acts = tokens * (32 * 2 * 4096 + 208_896 + 10 * 4096)
    logits = tokens * 128256 * 4
    assert est.activations_gib == pytest.approx((acts + logits) / GIB)


def test_zero3_uses_less_per_gpu_than_zero2_and_zero2_than_zero1():
    z1, z2, z3 = (_train(zero_stage=s).total_gib for s in (1, 2, 3))
    assert z3 < z2 < z1


def test_more_ranks_never_cost_more():
    for stage in (1, 2, 3):
        totals = [_train(zero_stage=stage, dp_size=n).total_gib for n in (2, 4, 8, 16)]
        assert totals == sorted(totals, reverse=True)


def test_checkpointing_lowers_activations_only():
    on, off = _train(gradient_checkpointing=True), _train(gradient_checkpointing=False)
    assert on.activations_gib < off.activations_gib
    assert (on.weights_gib, on.grads_gib, on.optimizer_gib) == (off.weights_gib, off.grads_gib, off.optimizer_gib)


def test_activations_scale_with_tokens():
    one = _train(micro_batch=1, gradient_checkpointing=False).activations_gib
    two = _train(micro_batch=2, gradient_checkpointing=False).activations_gib
    assert two == pytest.approx(2 * one)


def test_offload_moves_optimizer_to_host():
    on_gpu, offloaded = _train(zero_stage=3), _train(zero_stage=3, offload_optimizer=True)
    assert offloaded.optimizer_gib == 0 and on_gpu.optimizer_gib > 0
    # The host holds the Adam states and the fp32 gradient copy: 16P/8.
    assert offloaded.host_gib == pytest.approx(16 * 8.03e9 / 8 / GIB)
    assert offloaded.total_gib < on_gpu.total_gib
    params = _train(zero_stage=3, offload_optimizer=True, offload_params=True)
    assert params.weights_gib == 0 and params.host_gib > offloaded.host_gib


def test_param_offload_needs_zero3():
    assert _train(zero_stage=2, offload_params=True).weights_gib == _train(zero_stage=2).weights_gib


def test_lora_reduces_grads_and_optimizer_not_weights():
    full, lora = _train(), _train(lora_fraction=0.01)
    assert lora.grads_gib == pytest.approx(full.grads_gib * 0.01)
    assert lora.optimizer_gib == pytest.approx(full.optimizer_gib * 0.01)
    assert lora.weights_gib == pytest.approx(full.weights_gib)
    qlora = _train(lora_fraction=0.01, base_bytes_per_param=0.56)
    assert qlora.weights_gib < 0.3 * full.weights_gib


def test_fp32_training_doubles_weights_and_activations():
    bf16, fp32 = _train(zero_stage=0, dp_size=1), _train(zero_stage=0, dp_size=1, bytes_per_param=4)
    assert fp32.weights_gib == pytest.approx(2 * bf16.weights_gib)
    # fp32 Adam: 8 bytes of moments, no master copy (12 -> 8).
    assert fp32.optimizer_gib == pytest.approx(bf16.optimizer_gib * 8 / 12)


def test_critic_without_lm_head_has_no_logits():
    # 8 x 2048 tokens: activations (~3.9 GiB without logits) outweigh the step's fp32 gradient copy (3.7 GiB).
    actor, critic = _train(micro_batch=8), _train(micro_batch=8, with_lm_head=False)
    # 8 x 2048 tokens x 128256 x 4 bytes of logits.
    assert actor.activations_gib - critic.activations_gib == pytest.approx(8 * 2048 * 128256 * 4 / GIB)


def test_optimizer_step_peak_can_exceed_activations():
    # One short sequence on one rank: the step's fp32 gradient copy (4P) outweighs the activations.
    est = _train(dp_size=1, micro_batch=1, seq_len=16)
    assert est.activations_gib == pytest.approx(4 * 8.03e9 / GIB)


def test_inference_shards_weights():
    one = inference_memory("ref", LLAMA3_8B, shards=1, micro_batch=1, seq_len=1024)
    four = inference_memory("ref", LLAMA3_8B, shards=4, micro_batch=1, seq_len=1024)
    assert four.weights_gib == pytest.approx(one.weights_gib / 4)
    assert one.grads_gib == one.optimizer_gib == 0


def test_kv_cache_and_rollout_capacity():
    # 2 (K and V) x 32 layers x 8 kv heads x 128 dims x 2 bytes = 131,072 bytes per token.
    assert kv_cache_bytes_per_token(LLAMA3_8B) == 131_072
    est, capacity = rollout_memory(
        LLAMA3_8B, gpu_memory_gb=80, gpu_memory_utilization=0.5, tensor_parallel_size=1, concurrent_tokens=0
    )
    # 40 GiB reserved - 16.06e9 bytes of weights - 1 GiB workspace, over 131,072 bytes per token.
    kv = 40 * GIB - 8.03e9 * 2 - GIB
    assert capacity == pytest.approx(kv / 131_072)
    _, tp2 = rollout_memory(
        LLAMA3_8B, gpu_memory_gb=80, gpu_memory_utilization=0.5, tensor_parallel_size=2, concurrent_tokens=0
    )
    assert tp2 > 2 * capacity


def test_moe_counts_every_expert_in_weights_but_only_routed_ones_in_activations():
    dense = dataclasses.replace(LLAMA3_8B, num_experts=1, experts_per_token=1)
    moe = dataclasses.replace(LLAMA3_8B, num_experts=8, experts_per_token=2)
    # MLP share of a layer: 3*h*I per expert.
    assert moe.layer_params - dense.layer_params == 7 * 3 * 4096 * 14336
    assert moe.activation_bytes_per_token_layer() - dense.activation_bytes_per_token_layer() == 8 * 14336


def test_fused_head_holds_one_chunk_of_logits_by_hand():
    from rlhf.memory import fused_head_bytes

    whole = _train(micro_batch=8)
    fused = _train(micro_batch=8, head_rows=500)
    tokens, v = 8 * 2048, LLAMA3_8B.vocab_size
    # Whole micro-batch: bf16 logits and their gradient (4 bytes per entry). Fused: 500 rows of bf16 logits, three
    # fp32 working copies and the bf16 gradient (2 + 12 + 2 bytes per entry).
    assert fused_head_bytes(500, v, 2, backward=True) == 500 * v * 16
    assert (whole.activations_gib - fused.activations_gib) * GIB == pytest.approx(tokens * v * 4 - 500 * v * 16)
    # A chunk larger than the micro-batch holds the micro-batch's rows only.
    assert (_train(micro_batch=8, head_rows=10**9).activations_gib - whole.activations_gib) * GIB == pytest.approx(
        tokens * v * 12
    )
    # Frozen passes keep no gradient: 3 bytes per entry for the whole logits, 2 + 12 for a chunk.
    inf = dict(shards=1, micro_batch=2, seq_len=2048)
    assert (
        inference_memory("ref", LLAMA3_8B, **inf).activations_gib
        - inference_memory("ref", LLAMA3_8B, **inf, head_rows=500).activations_gib
    ) * GIB == pytest.approx(2 * 2048 * v * 3 - 500 * v * 14)
