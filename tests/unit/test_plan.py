"""rlhf/plan.py on real model presets: plan-level orderings, role pools, and the architecture numbers it uses.

Configurations are composed once and varied with dataclasses.replace (the groups do not interpolate each
other), so the file runs in about a second.
"""

from __future__ import annotations

import dataclasses
import functools

import pytest
from omegaconf import OmegaConf

from rlhf.config.preflight import compose_config
from rlhf.plan import PlanError, resolve_plan

# The published config.json numbers: hidden, layers, heads, kv heads, intermediate, vocab, experts, tied.
HF_CONFIGS = {
    "qwen2_5_0_5b": (896, 24, 14, 2, 4864, 151936, 1, True),
    "qwen2_5_1_5b": (1536, 28, 12, 2, 8960, 151936, 1, True),
    "qwen2_5_7b": (3584, 28, 28, 4, 18944, 152064, 1, False),
    "llama3_8b": (4096, 32, 32, 8, 14336, 128256, 1, False),
    "llama3_8b_instruct": (4096, 32, 32, 8, 14336, 128256, 1, False),
    "llama3_70b": (8192, 80, 64, 8, 28672, 128256, 1, False),
    "mixtral_8x7b": (4096, 32, 32, 8, 14336, 32000, 8, False),
}


@functools.cache
def _composed(*overrides: str):
    return compose_config(list(overrides))


def typed(*overrides: str):
    return OmegaConf.to_object(_composed(*overrides))


def _with(run, **groups):
    """Replace fields of nested nodes: _with(run, engine=dict(zero_stage=3), algo=dict(micro_batch_per_gpu=1))."""
    changes = {k: dataclasses.replace(getattr(run, k), **v) for k, v in groups.items()}
    return dataclasses.replace(run, **changes)


def _params(m) -> float:
    head_dim = m.hidden_size // m.num_heads
    attn = 2 * m.hidden_size * m.hidden_size + 2 * m.hidden_size * m.num_kv_heads * head_dim
    mlp = 3 * m.hidden_size * m.intermediate_size * m.num_experts
    return m.num_layers * (attn + mlp) + m.vocab_size * m.hidden_size * (1 if m.tie_word_embeddings else 2)


@pytest.mark.parametrize("option", sorted(HF_CONFIGS))
def test_model_presets_hold_the_published_architecture(option):
    m = typed(f"model={option}").model
    got = (
        m.hidden_size,
        m.num_layers,
        m.num_heads,
        m.num_kv_heads,
        m.intermediate_size,
        m.vocab_size,
        m.num_experts,
        m.tie_word_embeddings,
    )
    assert got == HF_CONFIGS[option]
    # params_b agrees with the shape to 1% (biases and norms are the rest).
    assert _params(m) / 1e9 == pytest.approx(m.params_b, rel=0.01)
    assert m.model_type in ("llama", "qwen2", "mixtral")


# SFT of Llama-3-8B on 8 A100s: 64 samples of 4 per GPU x 8 ranks x 2 accumulation, no tuning file.
SFT = ("algo=dpo", "model=llama3_8b", "hw=a100x8", "~tuning", "algo.train_batch_samples=64")


def _actor(plan):
    return next(m for m in plan.memory if m.role == "actor")


def test_plan_zero3_below_zero2_per_gpu():
    run = typed(*SFT)
    z2 = resolve_plan(_with(run, engine=dict(zero_stage=2)))
    z3 = resolve_plan(_with(run, engine=dict(zero_stage=3)))
    assert _actor(z3).total_gib < _actor(z2).total_gib
    assert (z2.zero_stage, z3.zero_stage) == (2, 3)


def test_plan_checkpointing_lowers_activations():
    run = typed(*SFT)
    off = resolve_plan(_with(run, engine=dict(gradient_checkpointing=False)))
    on = resolve_plan(_with(run, engine=dict(gradient_checkpointing=True)))
    assert _actor(on).activations_gib < _actor(off).activations_gib


def test_plan_offload_moves_optimizer_to_host():
    run = typed(*SFT)
    plain = _actor(resolve_plan(_with(run, engine=dict(zero_stage=3))))
    off = _actor(resolve_plan(_with(run, engine=dict(zero_stage=3, offload_optimizer=True))))
    assert off.optimizer_gib == 0 < plain.optimizer_gib and off.host_gib > plain.host_gib == 0


def test_plan_lora_reduces_grads_and_optimizer():
    run = typed(*SFT)
    full = _actor(resolve_plan(run))
    lora = _actor(resolve_plan(_with(run, model=dict(lora=dataclasses.replace(run.model.lora, rank=16)))))
    # 32 layers x 4 projections x 2 x 16 x 4096 = 16.8M trainable of 8.03B: about 0.2%.
    assert lora.grads_gib == pytest.approx(full.grads_gib * 32 * 4 * 2 * 16 * 4096 / 8.03e9)
    assert lora.optimizer_gib < 0.01 * full.optimizer_gib
    assert lora.weights_gib == pytest.approx(full.weights_gib)


def test_critic_on_its_own_gpus_is_sharded_over_them():
    run = typed("algo=ppo", "model=llama3_8b", "hw=a100x16")
    plan = resolve_plan(run)
    critic = next(m for m in plan.memory if m.role == "critic")
    # ZeRO-2 over the critic's 4 GPUs: 12 bytes x 8.03e9 / 4 of Adam states.
    assert plan.role("critic").num_workers == 4
    assert critic.optimizer_gib == pytest.approx(12 * 8.03e9 / 4 / 2**30)


def test_critic_on_one_gpu_is_refused_naming_its_ranks():
    run = typed("algo=ppo", "model=llama3_8b", "hw=a100x16", "placement.critic_gpus=1", "placement.actor_gpus=8")
    with pytest.raises(PlanError) as info:
        resolve_plan(run)
    (problem,) = info.value.problems
    assert problem.startswith("out of GPU memory: role critic needs") and "ZeRO-2 over 1 rank(s)" in problem


def test_plan_table_names_tuning_and_machine():
    table = resolve_plan(typed("algo=ppo", "model=llama3_8b", "hw=a100x16")).table()
    assert "tuning          conf/tuning/ppo_llama3_8b_a100x16.yaml" in table
    assert "A100-80GB, 8 per node x 2 node(s), nvlink in a node, infiniband between nodes" in table


def test_memory_check_dry_mode_prints_the_planner_side(tmp_path, capsys, monkeypatch):
    """benchmarks/memory_check.py --dry runs without a GPU and writes the planner's numbers as JSON."""
    import importlib.util
    import json

    from rlhf.config.preflight import CONF_DIR

    path = CONF_DIR.parent / "benchmarks" / "memory_check.py"
    spec = importlib.util.spec_from_file_location("memory_check", path)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve the module's annotations through sys.modules.
    monkeypatch.setitem(__import__("sys").modules, "memory_check", module)
    spec.loader.exec_module(module)
    out = tmp_path / "mc.json"
    assert (
        module.main(["--dry", "--presets", "qwen2_5_0_5b", "--roles", "sft,dpo", "--zero", "2", "--out", str(out)]) == 0
    )
    cases = json.loads(out.read_text())["cases"]
    assert [(c["role"], c["estimate_row"]) for c in cases] == [("sft", "actor"), ("dpo", "actor+ref")]
    assert all(c["allocated_gib"] is None and c["estimate_gib"] > c["estimate_no_overhead_gib"] > 0 for c in cases)
    assert "qwen2_5_0_5b   sft" in capsys.readouterr().out


def test_packing_is_refused_for_reward_models_but_not_sft():
    with pytest.raises(PlanError, match=r"data.packing=true with algo=rm.*data.packing=false"):
        resolve_plan(typed("algo=rm", "data.packing=true"))
    assert resolve_plan(typed("algo=sft", "data.packing=true")).world_size == 1


def test_a_new_rollout_backend_row_is_all_the_planner_needs(monkeypatch):
    """A backend added to rlhf/rollout/backends.py is accepted by the planner and, when it holds its own
    weights, planned as engines exactly like vLLM; an unknown name is refused naming the table's choices."""
    from rlhf.rollout import backends

    monkeypatch.setitem(backends.BACKENDS, "engine_x", backends.Backend("m:f", separate="m:W", own_weights=True))
    monkeypatch.setitem(backends.BACKENDS, "inline_x", backends.Backend("m:g"))
    base = ("algo=grpo", "model=qwen2_5_7b", "hw=h200x8", "rollout=vllm")
    vllm = resolve_plan(typed(*base))
    run = typed(*base)
    engine_x = resolve_plan(_with(run, rollout=dict(backend="engine_x")))
    assert engine_x.role("rollout").num_workers == vllm.role("rollout").num_workers == 8
    assert [(m.role, m.total_gib) for m in engine_x.memory] == [(m.role, m.total_gib) for m in vllm.memory]
    inline = resolve_plan(_with(run, rollout=dict(backend="inline_x")))
    assert inline.role("rollout") is None  # the policy ranks generate
    with pytest.raises(PlanError) as info:
        resolve_plan(_with(run, rollout=dict(backend="sglang")))
    assert any("rollout.backend" in p and "engine_x" in p and "vllm" in p for p in info.value.problems)


def test_sequences_longer_than_the_models_positions_are_refused_with_the_fix():
    # tiny_moe holds 1024 positions; rollout=vllm asks 1024 new tokens after 64-token prompts: 1088.
    with pytest.raises(PlanError) as info:
        resolve_plan(typed("algo=grpo", "model=tiny_moe", "rollout=vllm", "hw=h100x1"))
    (problem,) = [p for p in info.value.problems if "positions" in p]
    assert "sequences of 1088 tokens" in problem and "rollout.max_new_tokens=960" in problem
    assert resolve_plan(typed("algo=grpo", "model=tiny_moe", "rollout=vllm", "hw=h100x1", "rollout.max_new_tokens=960"))
    with pytest.raises(PlanError, match=r"data.max_len=2048\) exceed the 1024 positions .*; set data.max_len=1024$"):
        resolve_plan(typed("algo=sft", "model=tiny", "data.max_len=2048"))


def test_async_colocated_overlap_needs_an_awake_engine():
    """algo.async_rollout overlaps a colocated engine's generation with training only when the engine stays
    awake and holds its own weights (vLLM), and the plan then keeps its reservation beside the training peak."""
    from rlhf.rollout.backends import overlaps_in_policy

    base = ("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "rollout=vllm", "algo.async_rollout=true")
    asleep = typed(*base, "rollout.enable_sleep=true")
    awake = typed(*base, "rollout.enable_sleep=false")
    assert not overlaps_in_policy(asleep.algo, asleep.rollout, asleep.placement.mode)
    assert overlaps_in_policy(awake.algo, awake.rollout, awake.placement.mode)
    # Left to the planner, the overlap asked for gets the awake engine it needs.
    auto = typed(*base)
    assert not overlaps_in_policy(auto.algo, auto.rollout, auto.placement.mode)  # not planned yet
    assert "rollout.enable_sleep=false (the overlap of algo.async_rollout" in "\n".join(resolve_plan(auto).chosen)
    assert overlaps_in_policy(auto.algo, auto.rollout, auto.placement.mode)
    sync = typed(*base[:-1], "rollout.enable_sleep=false")
    assert not overlaps_in_policy(sync.algo, sync.rollout, sync.placement.mode)
    hf = typed(*base[:-2], "rollout=hf", "algo.async_rollout=true", "rollout.enable_sleep=false")
    assert not overlaps_in_policy(hf.algo, hf.rollout, hf.placement.mode)  # HF generate samples the trained module
    # One pool holds the actor and the awake engine; with a sleeping engine they are planned apart.
    assert [m.role for m in resolve_plan(awake).memory if "rollout" in m.role and "+" in m.role]
    assert not [m.role for m in resolve_plan(asleep).memory if "rollout" in m.role and "+" in m.role]


def test_short_sequences_get_micro_batches_of_up_to_16k_tokens():
    """16 rows is the cap at the usual lengths; 192-token rows go up to 16384 // 192 = 85 (64 divides the batch)."""
    from rlhf import scale

    base = ("algo=grpo", "model=qwen2_5_0_5b", "hw=h200x1", "rollout=vllm", "algo.train_batch_samples=256")
    short = typed(*base, "rollout.max_new_tokens=128", "data.prompt_max_len=64")
    plan = resolve_plan(short)
    assert plan.seq_len == 192 and scale.micro_cap(192) == 85
    assert plan.micro_batch_per_gpu == 64, plan.chosen
    assert any("algo.micro_batch_per_gpu=64 (the largest up to 85" in c for c in plan.chosen), plan.chosen
    long = typed(*base, "rollout.max_new_tokens=1024", "data.prompt_max_len=1024")
    assert resolve_plan(long).micro_batch_per_gpu <= scale.MAX_MICRO == scale.micro_cap(2048)


def test_colocated_engine_sleeps_and_the_plan_says_what_staying_awake_would_cost():
    """rollout.enable_sleep left unset: a colocated engine sleeps while the policy trains. Beside a 0.5B model the
    plan says an awake engine would keep the training setting; beside Llama-3-8B on A100s it names what the
    training would give up. Set values stay; without a colocated engine there is nothing to free."""
    base = ("algo=grpo", "rollout=vllm")
    small = typed(*base, "model=qwen2_5_0_5b", "hw=h100x1")
    plan = resolve_plan(small)
    assert small.rollout.enable_sleep is True
    line = next(c for c in plan.chosen if c.startswith("rollout.enable_sleep="))
    assert "rollout.enable_sleep=false would keep it awake with the same training setting" in line, line
    assert not [m.role for m in plan.memory if "rollout" in m.role and "+" in m.role]  # planned apart

    big = typed(*base, "model=llama3_8b", "hw=a100x8")
    plan = resolve_plan(big)
    assert big.rollout.enable_sleep is True
    line = next(c for c in plan.chosen if c.startswith("rollout.enable_sleep="))
    assert "beside an awake engine the training would take" in line, line
    assert "instead of zero2 at micro-batch 16" in line, line
    assert big.engine.zero_stage == 2 and big.algo.micro_batch_per_gpu == 16  # the sleeping engine's setting

    awake = typed(*base, "model=qwen2_5_0_5b", "hw=h100x1", "rollout.enable_sleep=false")
    plan = resolve_plan(awake)
    assert awake.rollout.enable_sleep is False and not any("enable_sleep" in c for c in plan.chosen)
    pool = next(m for m in plan.memory if "rollout" in m.role and "+" in m.role)  # the engine beside the training
    assert pool.total_gib <= awake.hw.gpu_memory_gb
    # Nothing to free: HF generate has no engine, separate engines own their GPUs.
    for other in (("rollout=hf",), ("rollout=vllm", "placement=separate")):
        run = typed("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x8", *other)
        plan = resolve_plan(run)
        assert run.rollout.enable_sleep is False and not any("enable_sleep" in c for c in plan.chosen), other


def test_hf_rollout_memory_counts_the_kept_logits_and_kv_cache():
    """rollout=hf generates inside the policy ranks between training passes: a long generation with a large
    vocabulary makes the actor's transient the generation's (hand count below), not the training pass's."""
    from rlhf.memory import GIB

    run = typed(
        "algo=grpo",
        "model=qwen2_5_0_5b",
        "hw=h100x1",
        "rollout=hf",
        "algo.prompts_per_step=16",
        "algo.samples_per_prompt=4",
        "algo.train_batch_samples=64",
        "algo.micro_batch_per_gpu=1",
        "rollout.max_new_tokens=2048",
        "rollout.generate_batch=32",
        "data.prompt_max_len=128",
        "engine.gradient_checkpointing=true",
    )
    actor = next(m for m in resolve_plan(run).memory if m.role == "actor")
    vocab, layers, kv_heads, head_dim = 151936, 24, 2, 64
    kv = 32 * (128 + 2048) * 2 * layers * kv_heads * head_dim * 2
    kept = 32 * 2048 * vocab * 4  # fp32 logits of every new token
    prefill = 32 * 128 * vocab * 2
    assert actor.activations_gib == pytest.approx((kv + kept + prefill) / GIB, rel=1e-6)
    # Ten times fewer new tokens: the training pass's transient is the larger again.
    short = resolve_plan(_with(run, rollout=dict(max_new_tokens=64)))
    assert next(m for m in short.memory if m.role == "actor").activations_gib < (kv + kept) / GIB / 10


def test_hf_generate_batch_is_chosen_to_fit_and_a_given_one_is_kept():
    """Left unset, rollout.generate_batch is the largest up to 64 whose generation fits beside the training
    states: Llama-3-8B on two 24 GiB cards has too little room beside its states for 64 rows of 128k-vocabulary
    logits, so fewer rows at once; a small model keeps 64; a given value is checked against the memory."""
    big = typed("algo=grpo", "model=llama3_8b", "hw=rtx4090x2", "rollout=hf")
    plan = resolve_plan(big)
    assert 1 <= big.rollout.generate_batch < 64
    assert any(c.startswith(f"rollout.generate_batch={big.rollout.generate_batch} ") for c in plan.chosen)
    assert max(m.total_gib for m in plan.memory) <= big.hw.gpu_memory_gb
    # Twice the chosen rows, given, would not fit.
    twice = typed(
        "algo=grpo",
        "model=llama3_8b",
        "hw=rtx4090x2",
        "rollout=hf",
        f"rollout.generate_batch={2 * big.rollout.generate_batch}",
    )
    with pytest.raises(PlanError, match="out of GPU memory"):
        resolve_plan(twice)

    small = typed("algo=grpo", "model=qwen2_5_0_5b", "hw=h100x1", "rollout=hf")
    resolve_plan(small)
    assert small.rollout.generate_batch == 64


def test_the_plan_counts_the_fused_head_where_the_rl_passes_use_it():
    """GRPO on Qwen2.5-0.5B: the fused head holds one chunk of logits (engine.fused_lm_head); off, under ZeRO-3
    (partitioned head) or for distillation (its loss reads whole logits), the micro-batch's logits count."""
    from rlhf.algos.logprobs import rows_per_chunk

    base = ("algo=grpo", "model=qwen2_5_0_5b", "hw=h200x1", "rollout=vllm", "algo.micro_batch_per_gpu=16")
    fused = _actor_of(*base)
    plain = _actor_of(*base, "engine.fused_lm_head=false")
    tokens = 16 * (typed(*base).data.prompt_max_len + typed(*base).rollout.max_new_tokens)
    rows = rows_per_chunk(151936, None)
    assert rows < tokens
    assert (plain.activations_gib - fused.activations_gib) * 2**30 == pytest.approx(
        tokens * 151936 * 4 - rows * 151936 * 16, rel=1e-6
    )
    z3 = ("engine.zero_stage=3",)
    assert _actor_of(*base, *z3).activations_gib == pytest.approx(
        _actor_of(*base, *z3, "engine.fused_lm_head=false").activations_gib
    )
    sft = ("algo=sft", "model=qwen2_5_0_5b", "hw=h200x1")
    assert _actor_of(*sft).activations_gib < _actor_of(*sft, "engine.fused_lm_head=false").activations_gib
    kd = ("algo=kd", "model=qwen2_5_0_5b", "hw=h200x1", "algo.teacher.name_or_path=Qwen/Qwen2.5-1.5B-Instruct")
    assert _actor_of(*kd).activations_gib == pytest.approx(_actor_of(*kd, "engine.fused_lm_head=false").activations_gib)


def _actor_of(*overrides: str):
    return next(m for m in resolve_plan(typed(*overrides)).memory if m.role == "actor")
