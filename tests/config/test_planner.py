"""The planner on every algorithm x model preset x hardware profile, on hand-computed cases, on the setups of
the OpenRLHF support matrix, and on a model folder with no architecture numbers given.

Configurations are composed once per option and combined with dataclasses.replace (groups do not interpolate
each other); each combination gets deep copies, because resolve_plan fills the config it is given.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json

import pytest

from rlhf.config.model import ModelConfig
from rlhf.memory import GIB
from rlhf.plan import PlanError, resolve_plan
from tests.config.helpers import options, typed

# Phrases naming the constraint a refusal is bound by (the plan's messages start with them).
BINDING = ("out of GPU memory", "offloaded states need", "is not divisible", "does not split")


@functools.cache
def _nodes():
    algos = {a: typed(f"algo={a}") for a in options("algo")}
    models = {m: typed(f"model={m}").model for m in options("model")}
    hws = {h: typed(f"hw={h}").hw for h in options("hw")}
    return algos, models, hws


def _combo(algo: str, model: str, hw: str):
    algos, models, hws = _nodes()
    return dataclasses.replace(
        copy.deepcopy(algos[algo]), model=copy.deepcopy(models[model]), hw=copy.deepcopy(hws[hw])
    )


def _check_plan(run, plan) -> None:
    for r in plan.roles:
        if r.trained:
            assert r.micro_batch_per_gpu * r.grad_accum * r.dp_ranks == r.train_batch_samples, r
    assert plan.micro_batch_per_gpu * plan.grad_accum * plan.world_size == plan.train_batch_samples
    if plan.device == "cuda":
        assert max(m.total_gib for m in plan.memory) <= run.hw.gpu_memory_gb
        per_node = min(plan.world_size, run.hw.gpus_per_node)
        assert sum(m.host_gib for m in plan.memory if m.role in ("actor", "critic")) * per_node <= run.hw.cpu_memory_gb
    # The planner left nothing unset for the workers.
    assert None not in (
        run.algo.lr,
        run.algo.micro_batch_per_gpu,
        run.engine.zero_stage,
        run.engine.offload_optimizer,
        run.engine.gradient_checkpointing,
        run.rollout.gpu_memory_utilization,
    )


# Plans and refusals over the files on disk (18 algorithms x 11 model presets x 19 hw profiles = 3762 on the
# day this was written). A new option file, or a planner change, moves these numbers: check the new ones.
# prm, kd, csft, rejection_sampling and iterative_dpo added 845 plans and 200 refusals (the SFT-sized ones
# refuse like sft; kd and iterative_dpo hold a second, frozen model like dpo). gspo (19 algorithms, 3971
# combinations) added 169 plans and 40 refusals, as grpo. hw=h200x2 (20 profiles, 4180 combinations) added
# 152 plans and 57 refusals: 70B-class and Mixtral full training do not fit two GPUs.
EXPECTED = {"planned": 3341, "refused": 839}


def test_every_algo_model_and_hw_plans_or_is_refused_naming_the_constraint():
    algos, models, hws = _nodes()
    planned, refused, reasons = 0, 0, set()
    for a in algos:
        for m in models:
            for h in hws:
                run = _combo(a, m, h)
                try:
                    plan = resolve_plan(run)
                except PlanError as e:
                    refused += 1
                    assert e.problems and all(p.startswith(BINDING) for p in e.problems), (a, m, h, e.problems)
                    reasons |= {p.split(":")[0] for p in e.problems}
                    # The proof: the estimate against the budget, and what the planner tried.
                    assert any(
                        f"has {run.hw.gpu_memory_gb:g} GiB per GPU" in p or "host memory" in p for p in e.problems
                    )
                    continue
                planned += 1
                _check_plan(run, plan)
                if m.startswith("tiny") or h == "cpu":
                    assert plan.chosen, "tiny and CPU runs too take their batch from the preset"
    assert planned + refused == len(options("algo")) * len(options("model")) * len(options("hw"))
    assert {"planned": planned, "refused": refused} == EXPECTED
    assert reasons == {"out of GPU memory"}


def test_tiny_models_and_cpu_plan_everywhere():
    for a in options("algo"):
        for h in options("hw"):
            resolve_plan(_combo(a, "tiny_moe", h))
        resolve_plan(_combo(a, "llama3_70b", "cpu"))


# --- hand-computed choices -----------------------------------------------------------------------------------


def _plan(*overrides: str):
    run = typed(*overrides)
    return run, resolve_plan(run)


def test_sft_llama3_8b_a100x8_takes_zero2_and_the_largest_micro_batch():
    run, plan = _plan("algo=sft", "model=llama3_8b", "hw=a100x8", "~tuning")
    # Batch 128 (OpenRLHF train_sft_llama.sh), 8 ranks: micro-batches up to 16 divide 128 / 8 = 16.
    # ZeRO-2 without checkpointing (micro 16 is the largest there is, so it is not too small to skip the
    # recompute), micro 16 x 256 tokens (sft_tiny max_len) = 4096 tokens per GPU:
    #   weights 2 x 8.03e9 B = 14.96 GiB; grads 2P/8 = 1.87; Adam 12P/8 = 11.22; buckets 1e9 B = 0.93 + 2.5;
    #   activations 4096 x (32 x 208896 + 10 x 4096) = 4096 x 6725632 B = 25.66 GiB
    #   + the fused head's chunk of 2**26 // 128256 = 523 rows x 128256 x 16 B (bf16 logits and gradient, three
    #   fp32 copies) = 1.0 GiB; total 14.96 + 1.87 + 11.22 + 26.66 + 3.43 = 58.1 GiB < 79.2.
    assert (plan.zero_stage, run.engine.offload_optimizer, run.engine.gradient_checkpointing) == (2, False, False)
    assert "engine: zero2 without checkpointing (the fastest setting that fits)" in plan.chosen
    assert (plan.train_batch_samples, plan.micro_batch_per_gpu, plan.grad_accum) == (128, 16, 1)
    actor = next(m for m in plan.memory if m.role == "actor")
    assert actor.total_gib == pytest.approx(
        14.96 + 1.87 + 11.22 + (4096 * 6725632 + 523 * 128256 * 16) / GIB + 2.5 + 1e9 / GIB, abs=0.02
    )


def test_long_sequences_keep_checkpointing_rather_than_a_tiny_micro_batch():
    run, plan = _plan("algo=sft", "model=llama3_8b", "hw=a100x8", "~tuning", "data.max_len=4096")
    # Without checkpointing, micro 2 x 4096 tokens (8192, the smallest worth skipping the recompute) needs
    # 8192 x 6725632 B = 51.3 GiB of activations + the fused head's chunk, 523 rows x 128256 x 16 B = 1.0 GiB,
    # on top of the 31.5 GiB of states: 83.8 > 79.2. Micro 1 would be too small, so the checkpointed ZeRO-2
    # comes next: micro 16 x 4096 = 65536 tokens x 512000 B = 31.25 GiB + 1.0 + 31.5 = 63.7 fits (with the whole
    # micro-batch's logits, 65536 x 128256 x 4 B = 31.3 GiB more, it would not: micro 8 was the answer then).
    assert (plan.zero_stage, run.engine.gradient_checkpointing, plan.micro_batch_per_gpu) == (2, True, 16)
    engine = next(c for c in plan.chosen if c.startswith("engine:"))
    assert engine.startswith("engine: zero2 (zero2 without checkpointing: ")
    assert "too small to skip the recompute" in engine, engine


def test_an_explicit_checkpointing_choice_is_kept():
    run, plan = _plan("algo=sft", "model=llama3_8b", "hw=a100x8", "~tuning", "engine.gradient_checkpointing=true")
    assert run.engine.gradient_checkpointing is True and plan.micro_batch_per_gpu == 16
    # OpenRLHF train_sft_llama.sh: 5e-6 for 7B-8B.
    assert run.algo.lr == 5e-6 and "engine: zero2 (the fastest setting that fits)" in plan.table()


def test_dpo_llama3_70b_a100x16_moves_adam_to_the_host_because_zero3_alone_does_not_fit():
    run, plan = _plan("algo=dpo", "model=llama3_70b", "hw=a100x16")
    # ZeRO-3 over 16 ranks, before activations and buffers: Adam 12 x 70.55e9 / 16 = 49.28 GiB, fp32 gradient
    # partition 4P/16 = 16.43, policy and reference weight shards 2P/16 = 8.21 each: 82.1 GiB > 79.2.
    assert 12 * 70.55e9 / 16 / GIB + 4 * 70.55e9 / 16 / GIB + 2 * (2 * 70.55e9 / 16 / GIB) > 79.2
    assert (plan.zero_stage, run.engine.offload_optimizer, run.engine.offload_params) == (3, True, False)
    engine = next(c for c in plan.chosen if c.startswith("engine: "))
    assert engine.startswith("engine: zero3 + CPU Adam (zero2 without checkpointing: actor+ref needs"), engine
    assert "; zero2: actor+ref needs" in engine and "; zero3: actor+ref needs" in engine, engine
    # CPU Adam: 16 bytes a parameter on the host, 70.55e9 x 16 / 16 ranks = 65.7 GiB per GPU, 526 GiB a node.
    actor = next(m for m in plan.memory if m.role == "actor")
    assert actor.host_gib == pytest.approx(16 * 70.55e9 / 16 / GIB)
    assert plan.train_batch_samples == 256 and run.algo.lr == 5e-7  # OpenRLHF train_dpo_llama.sh


def test_dpo_llama3_70b_on_one_a100_node_is_refused_for_host_memory():
    with pytest.raises(PlanError) as info:
        resolve_plan(typed("algo=dpo", "model=llama3_70b", "hw=a100x8"))
    (problem,) = info.value.problems
    # CPU Adam over 8 ranks holds 16 x 70.55e9 B = 1051 GiB on the node's 1024 GiB.
    assert "the planner tried" in problem and "zero3 + CPU Adam: its offloaded states need 1051 GiB" in problem
    assert "hw.cpu_memory_gb=1024" in problem


def test_vllm_tensor_parallel_size_is_the_smallest_that_leaves_room():
    # Llama-3-70B's bf16 weights: 2 x 70.55e9 B = 131.4 GiB. Colocated, a shard may take a third of 79.2 GiB
    # (26.4): TP 4 gives 32.9, TP 8 gives 16.4 -> 8. On their own GPUs half (39.6): TP 4.
    run, plan = _plan("algo=grpo", "model=llama3_70b", "hw=a100x16", "rollout.backend=vllm")
    assert (run.rollout.tensor_parallel_size, run.rollout.num_engines) == (8, 2)
    run, _ = _plan(
        "algo=grpo",
        "model=llama3_70b",
        "hw=a100x16",
        "rollout.backend=vllm",
        "placement=separate",
        "placement.rollout_gpus=null",
    )
    assert run.rollout.tensor_parallel_size == 4


def test_separate_placement_splits_the_gpus():
    run, plan = _plan(
        "algo=ppo",
        "model=llama3_8b",
        "hw=a100x16",
        "~tuning",
        "rollout.backend=vllm",
        "placement=separate",
        "placement.rollout_gpus=null",
    )
    # Rollout: a quarter of 16 GPUs, TP 1 (15 GiB of weights <= half a GPU) -> 4 engines.
    # Critic: 18 bytes x 8.03e9 = 134.6 GiB of ZeRO-3 states; per GPU budget 0.9 x 79.2 - 2.5 - 2 = 66.8 GiB:
    # 2 GPUs give 67.3 (too much), 4 give 33.6 -> 4. Actor: 16 - 4 - 4 = 8.
    assert plan.role("rollout").num_workers == 4 and run.rollout.tensor_parallel_size == 1
    assert (plan.role("critic").num_workers, plan.role("actor").num_workers) == (4, 8)
    assert run.rollout.gpu_memory_utilization == 0.85
    critic = plan.role("critic")
    assert critic.micro_batch_per_gpu * critic.grad_accum * 4 == plan.train_batch_samples == 128


def test_micro_batch_is_lowered_to_divide_and_the_batch_raised_to_the_ranks():
    # 24 samples over 8 ranks: micro-batches m with 24 % (8m) == 0 are 1 and 3 -> 3.
    _, plan = _plan("algo=sft", "model=qwen2_5_0_5b", "hw=a100x8", "algo.train_batch_samples=24")
    assert (plan.micro_batch_per_gpu, plan.grad_accum) == (3, 1)
    # The tiny preset's 16 samples cannot feed 32 ranks: raised to 32, one per rank.
    _, plan = _plan("algo=sft", "model=tiny", "hw=a100x32")
    assert (plan.train_batch_samples, plan.micro_batch_per_gpu, plan.grad_accum) == (32, 1, 1)
    assert any("raised from 16 to a multiple of the 32 ranks" in c for c in plan.chosen)


def test_a_batch_over_three_ranks_is_raised_to_a_share_with_a_useful_micro_batch():
    from rlhf.plan import _per_rank_batch

    # 128 over 3 ranks: 43 each is prime (micro-batch 1 and 43 accumulation steps); 44 = 4 x 11 takes 11.
    assert _per_rank_batch(128, 3, 16) == 44
    assert _per_rank_batch(128, 4, 16) == 32 and _per_rank_batch(16, 32, 16) == 1
    assert _per_rank_batch(7, 1, 16) == 7  # one rank takes the batch whole, micro-batch 7
    _, plan = _plan("algo=grpo", "model=qwen2_5_1_5b", "hw=l40sx4", "rollout=vllm", "placement=separate")
    assert plan.role("actor").num_workers == 3
    assert (plan.train_batch_samples, plan.micro_batch_per_gpu, plan.grad_accum) == (132, 11, 4)
    # A given micro-batch: the batch is raised to whole micro-batches on every rank (48 per rank), not 44.
    assert _per_rank_batch(128, 3, 16, micro=16) == 48
    _, plan = _plan("algo=sft", "model=qwen2_5_0_5b", "hw=cpu", "hw.cpu_workers=3", "algo.micro_batch_per_gpu=16")
    assert (plan.train_batch_samples, plan.micro_batch_per_gpu) == (144, 16)


def test_explicit_values_are_kept_and_checked():
    run, plan = _plan(
        "algo=sft",
        "model=llama3_8b",
        "hw=a100x8",
        "~tuning",
        "engine=zero3",
        "algo.micro_batch_per_gpu=2",
        "algo.lr=1e-5",
        "engine.gradient_checkpointing=false",
    )
    assert (plan.zero_stage, plan.micro_batch_per_gpu, run.algo.lr, run.engine.gradient_checkpointing) == (
        3,
        2,
        1e-5,
        False,
    )
    assert not any(c.startswith(("algo.micro", "algo.lr")) for c in plan.chosen)
    # engine=zero3 fixes the stage; the planner only chose to keep the optimizer on the GPUs.
    assert "engine: zero3 without checkpointing (the fastest setting that fits)" in plan.chosen
    with pytest.raises(PlanError, match="out of GPU memory: role actor needs"):
        resolve_plan(
            typed("algo=sft", "model=llama3_70b", "hw=a100x8", "engine=zero2", "engine.offload_optimizer=false")
        )


# --- the setups of the OpenRLHF support matrix ---------------------------------------------------------------


def test_ppo_7b_on_four_rtx4090_needs_zero3_cpu_adam_and_227_gib_of_host_memory():
    base = ("algo=ppo", "model=qwen2_5_7b", "hw=rtx4090x4", "data=math_prompts", "rollout=vllm")
    with pytest.raises(PlanError) as info:
        resolve_plan(typed(*base))
    (problem,) = info.value.problems
    # CPU Adam for a 7.62B actor and a 7.62B critic: 2 x 16 x 7.62e9 B / 4 ranks = 56.8 GiB per GPU, 227 a node.
    assert (
        "zero3 + CPU Adam: its offloaded states need 227 GiB of host memory per node, hw.cpu_memory_gb=128" in problem
    )
    run, plan = _plan(*base, "hw.cpu_memory_gb=256")
    assert (plan.zero_stage, run.engine.offload_optimizer, run.engine.offload_params) == (3, True, False)
    assert plan.seq_len == 1024 + 1024
    # OpenRLHF's way: a smaller critic (Qwen2.5-0.5B shares the tokenizer) fits the 128 GB workstation.
    run, plan = _plan(*base, "critic.name_or_path=qwen2_5_0_5b")
    assert plan.role("critic").name_or_path == "Qwen/Qwen2.5-0.5B-Instruct" and plan.role("actor").name_or_path is None
    critic = next(m for m in plan.memory if m.role == "critic")
    assert critic.host_gib == pytest.approx(16 * 0.494e9 / 4 / GIB)


def test_70b_full_parameter_training_on_sixteen_a100():
    run, plan = _plan(
        "algo=ppo",
        "model=llama3_70b",
        "hw=a100x16",
        "critic.name_or_path=llama3_8b",
        "data=math_prompts",
        "rollout=vllm",
    )
    assert plan.role("critic").name_or_path == "meta-llama/Meta-Llama-3-8B"
    critic = next(m for m in plan.memory if m.role == "critic")
    actor = next(m for m in plan.memory if m.role == "actor")
    # ZeRO-3 weight shards over 16 ranks: 2 x 8.03e9 / 16 for the 8B critic, 2 x 70.55e9 / 16 for the actor.
    assert critic.weights_gib == pytest.approx(2 * 8.03e9 / 16 / GIB)
    assert actor.weights_gib == pytest.approx(2 * 70.55e9 / 16 / GIB)
    assert (plan.zero_stage, run.engine.offload_optimizer) == (3, True)
    _, dpo = _plan("algo=dpo", "model=llama3_70b", "hw=a100x16", "data=ultrafeedback")
    assert dpo.zero_stage == 3 and dpo.seq_len == 2048


def test_34b_dpo_on_eight_a100():
    run, plan = _plan("algo=dpo", "model=codellama_34b", "hw=a100x8", "data=ultrafeedback")
    assert (plan.zero_stage, run.engine.offload_optimizer, plan.world_size) == (3, True, 8)
    # Host: 16 x 33.74e9 B = 503 GiB on the node's 1024.
    actor = next(m for m in plan.memory if m.role == "actor")
    assert actor.host_gib * 8 == pytest.approx(16 * 33.74e9 / GIB)


def test_plan_json_carries_the_choices():
    _, plan = _plan("algo=grpo", "model=qwen2_5_7b", "hw=h200x8")
    d = json.loads(plan.to_json())
    assert d["chosen"] and d["seq_len"] == plan.seq_len and d["roles"][0]["micro_batch_per_gpu"] >= 1


# --- a model folder with no architecture numbers --------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A random-init Qwen2-style model saved with save_pretrained: config.json + model.safetensors."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path = tmp_path_factory.mktemp("qwen_small")
    config = Qwen2Config(
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=500,
        max_position_embeddings=512,
        tie_word_embeddings=False,
    )
    model = Qwen2ForCausalLM(config)
    model.save_pretrained(path)
    return path, sum(p.numel() for p in model.parameters())


def test_a_model_folder_plans_with_no_architecture_keys(tiny_folder):
    path, count = tiny_folder
    run = typed("algo=sft", "hw=h100x1")
    run = dataclasses.replace(run, model=ModelConfig(name_or_path=str(path)))
    plan = resolve_plan(run)
    m = run.model
    assert (m.hidden_size, m.num_layers, m.num_heads, m.num_kv_heads, m.intermediate_size, m.vocab_size) == (
        64,
        3,
        4,
        2,
        160,
        500,
    )
    assert (m.model_type, m.tie_word_embeddings, m.num_experts, m.max_position_embeddings) == ("qwen2", False, 1, 512)
    # The parameter count is the real one (biases and norms included), summed from the safetensors header.
    assert m.params_b * 1e9 == pytest.approx(count, abs=0.5)
    assert any(c.startswith("model: params_b, hidden_size") and str(path) in c for c in plan.chosen)


def test_name_or_path_alone_replaces_the_presets_numbers(tiny_folder):
    path, count = tiny_folder
    run, plan = _plan("algo=sft", "hw=h100x1", f"model.name_or_path={path}")
    # The default preset is the tiny Llama (hidden 128); the folder's numbers and no tiny train_defaults win.
    assert (run.model.hidden_size, run.model.model_type) == (64, "qwen2") and not run.model.train_defaults
    assert run.model.params_b * 1e9 == pytest.approx(count, abs=0.5)
    assert run.algo.lr == 2e-5  # rlhf/scale.py's SFT rate below 3B, not the tiny preset's 2e-4
    # A number given on the command line still wins.
    run, _ = _plan("algo=sft", "hw=h100x1", f"model.name_or_path={path}", "model.max_position_embeddings=4096")
    assert run.model.max_position_embeddings == 4096


def test_a_hub_id_that_another_preset_loads_takes_that_presets_numbers():
    # The default preset is the tiny one; conf/model/llama3_8b.yaml loads this hub id, so its numbers win, and
    # the tiny preset's small-model learning rate and batch go with the tiny numbers.
    run, plan = _plan("algo=sft", "hw=a100x8", "model.name_or_path=meta-llama/Meta-Llama-3-8B")
    m = run.model
    assert (m.hidden_size, m.num_layers, m.vocab_size, m.params_b) == (4096, 32, 128256, 8.03)
    assert not m.train_defaults and run.algo.lr == 5e-6 and plan.train_batch_samples == 128
    actor = next(r for r in plan.memory if r.role == "actor")
    assert actor.weights_gib == pytest.approx(2 * 8.03e9 / GIB, rel=1e-3)
    assert any(
        "from conf/model/llama3_8b.yaml" in c and "not the numbers of conf/model/tiny.yaml" in c for c in plan.chosen
    )
    # The same as the preset by its own name (without its hand-written tuning file).
    run2, plan2 = _plan("algo=sft", "hw=a100x8", "model=llama3_8b", "~tuning")
    assert (plan2.train_batch_samples, plan2.micro_batch_per_gpu, run2.algo.lr) == (128, plan.micro_batch_per_gpu, 5e-6)


def test_critic_from_a_folder(tiny_folder):
    path, count = tiny_folder
    _, plan = _plan("algo=ppo", "model=qwen2_5_0_5b", "hw=h100x1", f"critic.name_or_path={path}")
    assert plan.role("critic").name_or_path == str(path)
    critic = next(m for m in plan.memory if m.role == "critic")
    assert critic.weights_gib == pytest.approx(count * 2 / GIB)


def test_a_missing_local_path_is_not_found_with_the_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(PlanError) as info:
        resolve_plan(typed("algo=sft", "model.name_or_path=./mymodel"))
    (problem,) = info.value.problems
    assert f"model.name_or_path=./mymodel: not found: {tmp_path}/mymodel does not exist" in problem
    assert f"working directory, {tmp_path}" in problem and "offline" not in problem
    with pytest.raises(PlanError, match="critic.name_or_path=/x/y: not found"):
        resolve_plan(typed("algo=ppo", "critic.name_or_path=/x/y"))


def test_gpu_rl_passes_bin_rows_by_the_planned_token_budget():
    run, plan = _plan(
        "algo=grpo",
        "model=qwen2_5_0_5b",
        "hw=h100x1",
        "~tuning",
        "rollout=vllm",
        "algo.prompts_per_step=64",
        "algo.samples_per_prompt=8",
        "algo.train_batch_samples=512",
        "rollout.max_new_tokens=512",
        "data.prompt_max_len=160",
    )
    # Micro 16 x (160 + 512) tokens: the memory plan's micro-batch, now a token budget for rows of any length.
    assert plan.micro_batch_per_gpu == 16
    assert run.algo.max_tokens_per_micro == 16 * 672
    assert any(c.startswith("algo.max_tokens_per_micro=10752 (16 rows x 672 tokens") for c in plan.chosen)
    # An explicit budget, a CPU run and an offline algorithm keep theirs (or none).
    run, _ = _plan("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "~tuning", "algo.max_tokens_per_micro=4096")
    assert run.algo.max_tokens_per_micro == 4096
    run, _ = _plan("algo=grpo")
    assert run.algo.max_tokens_per_micro is None
    run, _ = _plan("algo=dpo", "model=qwen2_5_0_5b", "hw=h100x1", "~tuning")
    assert getattr(run.algo, "max_tokens_per_micro", None) is None


def test_rollout_compile_reaches_the_engine_options():
    from rlhf.rollout.vllm import engine_options

    for given, want in (((), True), (("rollout.compile=false",), False)):
        run, plan = _plan("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "~tuning", "rollout=vllm", *given)
        opts = engine_options(plan, run.rollout, seed=0, tensor_parallel_size=1, enable_sleep=True)
        assert opts["compile"] is want and opts["enforce_eager"] is False


def test_lora_takes_ten_times_the_full_fine_tuning_rate_unless_given():
    full, _ = _plan("algo=sft", "model=qwen2_5_0_5b", "hw=h100x1")
    lora, plan = _plan("algo=sft", "model=qwen2_5_0_5b", "hw=h100x1", "model.lora.rank=8")
    assert lora.algo.lr == pytest.approx(10 * full.algo.lr) and any("x10 for LoRA" in c for c in plan.chosen)
    grpo, _ = _plan("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "model.lora.rank=8", "~tuning")
    assert grpo.algo.lr == pytest.approx(1e-5)  # 10 x OpenRLHF's 1e-6 for PPO-family actors below 3B
    given, _ = _plan("algo=sft", "model=qwen2_5_0_5b", "hw=h100x1", "model.lora.rank=8", "algo.lr=3e-5")
    assert given.algo.lr == 3e-5


def test_a_given_rollout_size_lowers_the_planners_batch_to_split_it():
    # 2 prompts x 4 samples = 8 rollout samples: the rule's 128 could never be filled; 8 splits them.
    run, plan = _plan("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "~tuning", "algo.prompts_per_step=2")
    assert plan.train_batch_samples == 8 and any("lowered to the largest batch" in c for c in plan.chosen)
    # 24 prompts x 4 = 96 over 2 ranks: the largest even divisor of 96 up to 128 is 96.
    _, plan = _plan("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x2", "~tuning", "algo.prompts_per_step=24")
    assert plan.train_batch_samples == 96
    # A batch given with the rollout size is kept, and checked.
    with pytest.raises(PlanError, match="not divisible by algo.train_batch_samples=128"):
        _plan("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "algo.prompts_per_step=2", "algo.train_batch_samples=128")
