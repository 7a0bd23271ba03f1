"""model.ring_attn_size in the planner: data-parallel ranks are the trained model's processes / ring size, the
batch identity holds over them, activations shrink with the ring, and impossible settings are refused by key."""

from __future__ import annotations

import functools

import pytest
from omegaconf import OmegaConf

from rlhf.config.preflight import compose_config
from rlhf.plan import PlanError, resolve_plan

SFT_4GPU = ("algo=sft", "model=llama3_8b", "hw=a100x4", "~tuning", "data.packing=true")


@functools.cache
def _plan(*overrides: str):
    return resolve_plan(OmegaConf.to_object(compose_config(list(overrides))))


def _refusal(*overrides: str) -> str:
    with pytest.raises(PlanError) as e:
        _plan(*overrides)
    return str(e.value)


def test_ring_of_two_on_four_gpus_gives_two_data_parallel_ranks_and_the_batch_identity():
    plan = _plan(*SFT_4GPU, "model.ring_attn_size=2", "algo.train_batch_samples=16", "algo.micro_batch_per_gpu=2")
    actor = plan.role("actor")
    assert (actor.num_workers, actor.dp_ranks, actor.ring_attn_size, actor.processes) == (4, 2, 2, 4)
    assert plan.world_size == 2
    # batch = micro-batch x accumulation x data-parallel ranks: 16 = 2 x 4 x 2 (not 2 x 2 x 4 processes).
    assert (actor.micro_batch_per_gpu, actor.grad_accum) == (2, 4)
    assert actor.train_batch_samples == actor.micro_batch_per_gpu * actor.grad_accum * actor.dp_ranks
    assert any("ring attention" in n for n in plan.notes)


def test_ring_divides_the_activations_of_a_row():
    base = (*SFT_4GPU, "algo.train_batch_samples=16", "algo.micro_batch_per_gpu=1", "engine=zero3")
    one = next(m for m in _plan(*base).memory if m.role == "actor")
    four = next(m for m in _plan(*base, "model.ring_attn_size=4").memory if m.role == "actor")
    assert four.activations_gib < one.activations_gib / 3
    assert four.weights_gib == pytest.approx(one.weights_gib)  # ZeRO-3 still shards over all 4 processes


@pytest.mark.parametrize(
    "override,fragment",
    [
        ("model.ring_attn_size=0", "model.ring_attn_size=0 must be >= 1"),
        ("model.ring_attn_size=3", "model.ring_attn_size=3 must divide the 4 rank(s)"),
        ("model.ring_head_stride=3", "model.ring_head_stride=3 must divide the model's 8 key/value heads"),
        ("model.ring_head_stride=0", "model.ring_head_stride=0 must be >= 1"),
    ],
)
def test_invalid_sizes_are_refused_naming_the_key(override, fragment):
    extra = ("model.ring_attn_size=2",) if "stride" in override else ()
    assert fragment in _refusal(*SFT_4GPU, "algo.train_batch_samples=16", *extra, override)


def test_combinations_without_a_split_path_are_refused_with_the_fix():
    msg = _refusal("algo=sft", "model=llama3_8b", "hw=a100x4", "~tuning", "model.ring_attn_size=2")
    assert "set data.packing=true" in msg
    msg = _refusal("algo=kd", "model=llama3_8b", "hw=a100x4", "~tuning", "data.packing=true", "model.ring_attn_size=2")
    assert "model.ring_attn_size=2 is not supported with algo=kd" in msg
    msg = _refusal("algo=grpo", "model=qwen2_5_7b", "hw=h200x8", "model.ring_attn_size=2")
    assert "set algo.pack_sequences=true" in msg
    msg = _refusal(
        "algo=sft",
        "model=tiny",
        "hw=cpu",
        "hw.cpu_workers=2",
        "data.packing=true",
        "model.ring_attn_size=2",
        "model.moe_aux_loss_coef=0.02",
    )
    assert "model.moe_aux_loss_coef" in msg


def test_reward_models_split_padded_rows_and_rl_splits_packed_ones():
    rm = _plan("algo=rm", "model=tiny", "hw=cpu", "hw.cpu_workers=2", "model.ring_attn_size=2")
    assert rm.role("actor").dp_ranks == 1 and rm.role("actor").ring_attn_size == 2
    rl = _plan(
        "algo=grpo", "model=tiny", "hw=cpu", "hw.cpu_workers=4", "model.ring_attn_size=2", "algo.pack_sequences=true"
    )
    assert rl.role("actor").dp_ranks == 2 and rl.world_size == 2
