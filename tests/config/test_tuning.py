"""Tuning files (conf/tuning/<algo>_<model>_<hw>.yaml): picked automatically, planned, and beaten by the CLI.

Each file must compose and plan on its own machine, name itself in `tuning`, and stay out of the way of an
explicit command line (a group option or a key=value). The three documented examples are pinned number by
number; impossible combinations must be refused naming the role, the GPU memory and the remedies.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from rlhf.config.preflight import CONF_DIR
from rlhf.plan import PlanError, resolve_plan
from tests.config.helpers import tuning_files, tuning_triple, typed

# Data sets with real lengths for each algorithm family (the tiny defaults understate activations).
REAL_DATA = {"sft": "ultrachat", "dpo": "ultrafeedback", "grpo": "math_prompts", "ppo": "math_prompts"}


def _run(name: str, *extra: str):
    algo, model, hw = tuning_triple(name)
    return typed(f"algo={algo}", f"model={model}", f"hw={hw}", *extra)


def test_the_required_tuning_files_exist():
    assert {
        "ppo_llama3_8b_a100x16",
        "ppo_llama3_70b_a100x32",
        "dpo_llama3_8b_rtx4090x4",
        "grpo_qwen2_5_0_5b_h100x1",
        "grpo_qwen2_5_7b_h100x8",
        "sft_llama3_8b_a100x8",
    } <= set(tuning_files())


@pytest.mark.parametrize("name", tuning_files())
def test_tuning_file_is_picked_names_itself_and_plans(name):
    text = (CONF_DIR / "tuning" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_\n"), "a tuning file sets keys of several groups"
    # Hydra refuses `override` in an interpolated entry's subtree; the file must hold values only.
    assert "defaults" not in yaml.safe_load(text)
    run = _run(name)
    assert run.tuning == name, f"conf/tuning/{name}.yaml must set `tuning: {name}` (printed by the plan)"
    plan = resolve_plan(run)
    assert plan.tuning == name and f"tuning          conf/tuning/{name}.yaml" in plan.table()
    assert plan.device == "cuda" and plan.memory
    assert max(m.total_gib for m in plan.memory) <= run.hw.gpu_memory_gb


@pytest.mark.parametrize("name", tuning_files())
def test_every_trained_role_of_a_tuning_file_keeps_its_batch_identity(name):
    """batch = micro-batch x accumulation x data-parallel ranks, for the actor and for a critic on its own GPUs."""
    run = _run(name)
    plan = resolve_plan(run)
    trained = [r for r in plan.roles if r.trained]
    assert trained[0].role == "actor"
    assert {r.role for r in trained} == {"actor"} | ({"critic"} if plan.critic else set())
    for r in trained:
        assert r.train_batch_samples == run.algo.train_batch_samples == plan.train_batch_samples
        assert r.micro_batch_per_gpu * r.grad_accum * r.dp_ranks == r.train_batch_samples, r
    actor = plan.role("actor")
    assert (actor.micro_batch_per_gpu, actor.grad_accum, actor.dp_ranks) == (
        plan.micro_batch_per_gpu,
        plan.grad_accum,
        plan.world_size,
    )
    for r in plan.roles:
        if not r.trained and r.role != "rollout":
            assert r.micro_batch_per_gpu == plan.micro_batch_per_gpu and r.train_batch_samples == 0
    # The sequence length the estimate used: prompt + response on-policy, data.max_len offline.
    on = plan.family == "onpolicy"
    assert plan.seq_len == (run.data.prompt_max_len + run.rollout.max_new_tokens if on else run.data.max_len)


def test_ppo_llama3_8b_a100x16_critic_accumulates_over_its_own_four_gpus():
    plan = resolve_plan(typed("algo=ppo", "model=llama3_8b", "hw=a100x16"))
    actor, critic = plan.role("actor"), plan.role("critic")
    # 64 samples: actor 4 per GPU x 8 ranks x 2 accumulation; critic 4 per GPU x 4 ranks x 4 accumulation.
    assert (actor.micro_batch_per_gpu, actor.dp_ranks, actor.grad_accum) == (4, 8, 2)
    assert (critic.micro_batch_per_gpu, critic.dp_ranks, critic.grad_accum) == (4, 4, 4)
    # Prompts of 64 tokens (conf/data/prompts_tiny.yaml) + 1024 new tokens (the tuning file).
    assert plan.seq_len == 64 + 1024
    assert plan.rank_seed("critic", 3) == plan.seed + 7919 + 3 and plan.rank_seed("actor", 3) == plan.seed + 3
    assert "batch critic    64 samples/step = 4 per GPU x 4 ranks x 4 accumulation" in plan.table()


@pytest.mark.parametrize("name", tuning_files())
def test_tuning_file_fits_with_real_sequence_lengths(name):
    algo = tuning_triple(name)[0]
    plan = resolve_plan(_run(name, f"data={REAL_DATA[algo]}"))
    assert plan.tuning == name and max(m.total_gib for m in plan.memory) <= plan.gpu_memory_gb


def test_no_tuning_without_a_matching_file():
    run = typed("algo=ppo", "model=llama3_8b", "hw=a100x8")
    assert run.tuning is None
    assert (
        "tuning          none"
        in resolve_plan(typed("algo=dpo", "model=llama3_8b", "hw=a100x8", "algo.train_batch_samples=64")).table()
    )


# --- the documented examples ---------------------------------------------------------------------------------


def test_ppo_llama3_8b_a100x16_splits_the_gpus():
    plan = resolve_plan(typed("algo=ppo", "model=llama3_8b", "hw=a100x16"))
    # 16 GPUs = 4 rollout engines (TP 1) + 4 critic + 8 actor (reference on the actor's GPUs).
    roles = {r.role: (r.num_workers, r.gpus_per_worker, r.pool) for r in plan.roles}
    assert roles["rollout"] == (4, 1.0, "rollout")
    assert roles["critic"] == (4, 1.0, "critic")
    assert roles["actor"] == (8, 0.5, "actor") and roles["ref"] == (8, 0.5, "actor")
    # 64 samples = 4 per GPU x 8 ranks x 2 accumulation; 128 prompts x 1 sample = 2 updates per step.
    assert (plan.micro_batch_per_gpu, plan.world_size, plan.grad_accum, plan.zero_stage) == (4, 8, 2, 2)
    assert (plan.rollout_samples, plan.updates_per_step) == (128, 2)


def test_ppo_llama3_70b_a100x32_shares_every_gpu_with_offloaded_adam():
    run = typed("algo=ppo", "model=llama3_70b", "hw=a100x32")
    assert run.engine.offload_optimizer and not run.engine.offload_params
    plan = resolve_plan(run)
    # 32 = 1 per GPU x 32 ranks x 1 accumulation; 4 engines x TP 8 cover the 32 GPUs.
    assert (plan.micro_batch_per_gpu, plan.world_size, plan.grad_accum, plan.zero_stage) == (1, 32, 1, 3)
    assert plan.role("rollout").num_workers == 4 and run.rollout.tensor_parallel_size == 8
    assert {r.pool for r in plan.roles} == {"shared"}
    actor = next(m for m in plan.memory if m.role == "actor")
    # Adam states on the host: 16 bytes (12 Adam + 4 fp32 gradient copy) x 70.55e9 / 32 ranks / 2**30 = 32.9.
    assert actor.optimizer_gib == 0 and actor.host_gib == pytest.approx(16 * 70.55e9 / 32 / 2**30)


def test_dpo_llama3_8b_rtx4090x4_fits_24gb_cards():
    plan = resolve_plan(typed("algo=dpo", "model=llama3_8b", "hw=rtx4090x4"))
    # 64 pairs = 1 per GPU x 4 ranks x 16 accumulation; ZeRO-3 with CPU Adam.
    assert (plan.micro_batch_per_gpu, plan.world_size, plan.grad_accum, plan.zero_stage) == (1, 4, 16, 3)
    assert plan.role("ref").hosted_in == "actor"
    shared = next(m for m in plan.memory if m.role == "actor+ref")
    # Weights: two 8.03e9 x 2-byte models over 4 shards = 2 x 3.74 GiB.
    assert shared.weights_gib == pytest.approx(2 * 8.03e9 * 2 / 4 / 2**30)
    assert shared.total_gib < 23.6


# --- refusals ------------------------------------------------------------------------------------------------


def test_ppo_llama3_70b_on_rtx4090x4_is_refused_with_remedies():
    with pytest.raises(PlanError) as info:
        resolve_plan(typed("algo=ppo", "model=llama3_70b", "hw=rtx4090x4"))
    oom = next(p for p in info.value.problems if p.startswith("out of GPU memory"))
    assert "roles actor + ref + critic" in oom and "hw=rtx4090x4 has 23.6 GiB per GPU" in oom
    for remedy in ("engine=zero3:", "engine=zero3_offload:", "model.lora.rank=16", "load_in_4bit=true"):
        assert remedy in oom
    assert "(fits)" not in oom, "nothing makes a 70B PPO fit four 24 GB cards"


def test_sft_llama3_8b_zero0_on_rtx4090x4_is_refused_and_points_to_what_fits():
    with pytest.raises(PlanError) as info:
        resolve_plan(typed("model=llama3_8b", "hw=rtx4090x4", "algo=sft", "engine=zero0"))
    (oom,) = info.value.problems
    assert oom.startswith("out of GPU memory: role actor needs")
    assert "ZeRO-0 over 4 rank(s)" in oom and "23.6 GiB per GPU" in oom
    assert "model.lora.rank=16 engine=zero3: " in oom and "(fits)" in oom


# --- the command line beats the tuning file ------------------------------------------------------------------


def test_key_value_override_beats_tuning():
    run = typed("algo=sft", "model=llama3_8b", "hw=a100x8", "algo.micro_batch_per_gpu=4", "engine.zero_stage=3")
    assert (run.algo.micro_batch_per_gpu, run.engine.zero_stage, run.tuning) == (4, 3, "sft_llama3_8b_a100x8")
    # 128 samples = 4 x 8 ranks x 4 accumulation.
    assert resolve_plan(run).grad_accum == 4


def test_group_option_on_the_command_line_beats_tuning():
    tuned = typed("algo=dpo", "model=llama3_8b", "hw=rtx4090x4")
    assert tuned.engine.zero_stage == 3 and tuned.engine.offload_optimizer
    explicit = typed("algo=dpo", "model=llama3_8b", "hw=rtx4090x4", "engine=zero2")
    # conf/engine/zero2.yaml sets only zero_stage; the tuning file's other engine keys remain.
    assert explicit.engine.zero_stage == 2 and explicit.tuning == "dpo_llama3_8b_rtx4090x4"
    ppo = typed("algo=ppo", "model=llama3_8b", "hw=a100x16", "placement=colocated", "rollout=hf")
    assert (ppo.placement.mode, ppo.rollout.backend) == ("colocated", "hf")


def test_tuning_can_be_switched_off():
    run = typed("algo=ppo", "model=llama3_8b", "hw=a100x16", "~tuning")
    assert run.tuning is None and run.placement.mode == "colocated" and run.rollout.backend == "hf"


def test_defaults_without_tuning_equal_the_group_defaults():
    """engine/placement/rollout default to no option: their schema defaults must equal zero2, colocated, hf.

    The engine's fields default to unset (the planner chooses them); on CPU it chooses what engine=zero2 says.
    """
    base = typed()
    assert (base.engine.zero_stage, base.engine.offload_optimizer, base.engine.gradient_checkpointing) == (None,) * 3
    zero2 = typed("engine=zero2")
    assert base.placement == typed("placement=colocated").placement
    # conf/config.yaml's own response length for the tiny default task is the one difference.
    hf = typed("rollout=hf").rollout
    assert base.rollout == dataclasses.replace(hf, max_new_tokens=base.rollout.max_new_tokens)
    resolve_plan(base)
    resolve_plan(zero2)
    assert base.engine == zero2.engine and base.engine.zero_stage == 2
