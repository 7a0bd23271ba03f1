"""Every option of every group composes into its schema, and every algorithm plans on a few machines.

Options are found on disk, so a new YAML file is tested without editing this file; a new folder under conf/
fails `test_every_conf_file_is_reached` until it is added to GROUPS (and so to these tests).
"""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
from omegaconf import OmegaConf

from rlhf.algos.registry import ALGORITHMS
from rlhf.config import SCHEMAS, RunConfig
from rlhf.config.preflight import CONF_DIR
from rlhf.plan import Plan, PlanError, _scale_defaults, resolve_plan
from tests.config.helpers import GROUPS, UNTYPED_GROUPS, algo_data, compose, options, schema_name, typed


def test_every_conf_file_is_reached():
    # conf/hydra/ holds Hydra's own groups (launchers), composed by Hydra itself, not into RunConfig.
    on_disk = {p.relative_to(CONF_DIR).as_posix() for p in CONF_DIR.rglob("*.yaml")} - {
        p.relative_to(CONF_DIR).as_posix() for p in (CONF_DIR / "hydra").rglob("*.yaml")
    }
    reached = {"config.yaml"} | {f"{g}/{o}.yaml" for g in GROUPS + UNTYPED_GROUPS for o in options(g)}
    assert on_disk == reached, (
        f"files under conf/ that no test composes: {sorted(on_disk - reached)}; add their folder to GROUPS in "
        "tests/config/helpers.py with a test that composes each file"
    )
    assert set(GROUPS) == set(SCHEMAS), "every schema group has a conf/ folder and every folder a schema group"
    assert {p.name for p in CONF_DIR.iterdir() if p.is_dir()} - {"hydra"} == set(GROUPS) | set(UNTYPED_GROUPS)


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes_to_its_schema(group):
    """Override only this group on top of the defaults; the node converts to the schema its file names."""
    composed, failures = 0, []
    for option in options(group):
        try:
            cfg = compose(f"{group}={option}")
            run = OmegaConf.to_object(cfg)
            schema = SCHEMAS[group][schema_name(group, option)]
            node = getattr(run, group)
            assert isinstance(run, RunConfig)
            assert type(node) is schema, f"{type(node).__name__} is not {schema.__name__}"
            assert OmegaConf.get_type(cfg, group) is schema
        except Exception as e:  # noqa: BLE001 - collect every failing option in one report
            failures.append(f"conf/{group}/{option}.yaml: {type(e).__name__}: {e}")
        else:
            composed += 1
    assert not failures, "\n".join(failures)
    assert composed == len(list((CONF_DIR / group).glob("*.yaml"))) > 0


@pytest.mark.parametrize("option", options("algo"))
def test_algo_picks_its_data_and_is_registered(option):
    run = typed(f"algo={option}")
    assert run.algo.name == option, "the option file name is the algorithm name"
    assert option in ALGORITHMS
    # The data set comes from the algo file's own `override /data@_global_.data: <option>`.
    assert run.data == typed(f"data={algo_data(option)}").data


def test_every_registered_algorithm_has_an_option_file():
    assert set(ALGORITHMS) == set(options("algo"))


def test_command_line_data_beats_the_data_an_algo_picks():
    assert list(typed("algo=dpo").data.sources) == ["tiny_pref"]
    assert list(typed("algo=dpo", "data=ultrafeedback").data.sources) == ["ultrafeedback"]
    assert list(typed("data=ultrafeedback", "algo=dpo").data.sources) == ["ultrafeedback"]


def test_default_config_is_a_tiny_cpu_run():
    """`python -m rlhf.run` with no overrides must run anywhere: a tiny offline model on one CPU process."""
    run = typed()
    assert run.model.name_or_path.startswith("tiny:") and run.hw.name == "cpu"
    plan = resolve_plan(run)
    assert (plan.device, plan.dtype, plan.world_size, plan.total_gpus) == ("cpu", "fp32", 1, 0)


@pytest.mark.parametrize("option", options("hw"))
def test_hw_profile_name_states_its_gpus(option):
    """Profiles are named <gpu>x<total gpus> (cpu: none); the name must agree with nodes x gpus_per_node."""
    hw = typed(f"hw={option}").hw
    assert hw.name == option
    total = hw.nodes * hw.gpus_per_node
    if option == "cpu":
        assert total == 0 and hw.gpu_memory_gb == 0
    else:
        assert option.rsplit("x", 1)[1] == str(total)
        assert hw.gpu_memory_gb > 0 and hw.gpus_per_node > 0


def _params_from_shape(m, tied: bool) -> float:
    """Llama/Qwen2/Mixtral parameter count: attention with grouped KV heads, SwiGLU MLP per expert, embeddings."""
    head_dim = m.hidden_size // m.num_heads
    attn = 2 * m.hidden_size * m.hidden_size + 2 * m.hidden_size * m.num_kv_heads * head_dim
    mlp = 3 * m.hidden_size * m.intermediate_size * m.num_experts
    embeddings = m.vocab_size * m.hidden_size * (1 if tied else 2)
    return m.num_layers * (attn + mlp) + embeddings


@pytest.mark.parametrize("option", options("model"))
def test_model_preset_params_match_its_shape(option):
    """params_b drives the memory estimate: it must agree with the architecture numbers (tied or not) to 2%."""
    m = typed(f"model={option}").model
    counts = [_params_from_shape(m, tied) / 1e9 for tied in (True, False)]
    assert any(abs(c - m.params_b) / m.params_b < 0.02 for c in counts), (option, m.params_b, counts)


# Hardware profiles every algorithm is planned on, with their data-parallel ranks.
PLAN_HW = {"cpu": 1, "h100x1": 1, "rtx4090x4": 4, "a100x8": 8}


def _on(run: RunConfig, hw_option: str) -> RunConfig:
    # Groups do not interpolate each other (DESIGN rule 5), so swapping a typed node equals composing it; this
    # keeps the suite fast (a composition costs 0.1-0.3 s).
    return dataclasses.replace(run, hw=typed(f"hw={hw_option}").hw)


def _batch(run: RunConfig, **fields) -> RunConfig:
    return dataclasses.replace(run, algo=dataclasses.replace(run.algo, **fields))


def test_swapping_typed_nodes_equals_composing():
    swapped = _batch(_on(typed("algo=dpo"), "a100x8"), train_batch_samples=32, micro_batch_per_gpu=4)
    assert swapped == typed("algo=dpo", "hw=a100x8", "algo.train_batch_samples=32", "algo.micro_batch_per_gpu=4")


@pytest.mark.parametrize("option", options("algo"))
def test_every_algo_plans_on_every_machine_with_a_divisible_batch(option):
    """32 samples = 4 per GPU x ranks x accumulation divides on 1, 4 and 8 ranks, and the RL rollouts (32)."""
    base = _batch(typed(f"algo={option}"), train_batch_samples=32, micro_batch_per_gpu=4)
    for hw_option, ranks in PLAN_HW.items():
        plan = resolve_plan(_on(base, hw_option))
        assert isinstance(plan, Plan)
        assert plan.world_size == ranks
        assert plan.micro_batch_per_gpu * plan.world_size * plan.grad_accum == 32
        assert json.loads(plan.to_json())["algo"] == option
        assert plan.table().startswith(f"algo            {option}")


@pytest.mark.parametrize("option", options("algo"))
def test_every_algo_default_batch_plans_by_lowering_the_micro_batch(option):
    """The tiny preset's 16-sample batch plans on 1, 4 and 8 ranks: its micro-batch (4 or 8) is the largest the
    planner tries, and it takes the largest that divides 16 over the ranks (16 / 8 ranks: 2 per GPU)."""
    base = typed(f"algo={option}")
    assert base.algo.micro_batch_per_gpu is None and base.algo.train_batch_samples is None
    _key, preset = _scale_defaults(base)
    assert preset.train_batch_samples == 16 and preset.micro_batch_per_gpu in (4, 8)
    for hw_option, ranks in PLAN_HW.items():
        run = _on(copy.deepcopy(base), hw_option)
        plan = resolve_plan(run)
        expected = max(m for m in range(1, preset.micro_batch_per_gpu + 1) if 16 % (m * ranks) == 0)
        assert (plan.train_batch_samples, plan.micro_batch_per_gpu) == (16, expected)
        assert plan.grad_accum == 16 // (expected * ranks)
        # The planner filled the config it was given, so the workers see the same numbers.
        assert (run.algo.micro_batch_per_gpu, run.algo.train_batch_samples) == (expected, 16)


@pytest.mark.parametrize("option", ["sft", "pretrain", "rm", "dpo", "ipo", "cdpo", "kto"])
def test_offline_algos_plan_llama3_8b_on_a100x8(option):
    """Real sizes: 8B full fine-tuning with a 64-sample batch fits eight 80 GB GPUs at ZeRO-2."""
    run = dataclasses.replace(_on(typed(f"algo={option}"), "a100x8"), model=typed("model=llama3_8b").model)
    plan = resolve_plan(_batch(run, train_batch_samples=64, micro_batch_per_gpu=4))
    assert (plan.world_size, plan.grad_accum, plan.dtype) == (8, 2, "bf16")
    assert plan.memory and max(m.total_gib for m in plan.memory) < 79.6


@pytest.mark.parametrize(
    "option,actor_gpus,prompts,samples",
    [
        ("grpo", 6, 12, 4),  # 8 GPUs - 2 rollout engines; the reference shares the actor's GPUs
        # 8 - 2 rollout - 2 critic: a full 8B critic with its Adam states (16 bytes/param) needs 2 ZeRO-3 ranks.
        ("ppo", 4, 32, 1),
    ],
)
def test_rl_plans_llama3_8b_with_vllm_on_separate_gpus(option, actor_gpus, prompts, samples):
    tbs = 2 * actor_gpus * 2  # 2 per GPU x ranks x 2 accumulation
    run = typed(
        f"algo={option}",
        "model=llama3_8b",
        "hw=a100x8",
        "rollout=vllm",
        "placement=separate",
        "rollout.num_engines=2",
        "placement.rollout_gpus=2",
        "placement.critic_gpus=2",
        "engine=zero3",
        "algo.micro_batch_per_gpu=2",
        f"algo.train_batch_samples={tbs}",
        f"algo.prompts_per_step={prompts}",
        f"algo.samples_per_prompt={samples}",
    )
    plan = resolve_plan(run)
    assert (plan.world_size, plan.grad_accum) == (actor_gpus, 2)
    assert plan.role("rollout").num_workers == 2
    # prompts x samples = 48 (grpo) or 32 (ppo) rollout samples = 2 optimizer steps of tbs 24 or 16.
    assert plan.rollout_samples == prompts * samples and plan.updates_per_step == 2


def test_llama3_70b_sft_is_refused_on_rtx4090x4():
    with pytest.raises(PlanError, match="out of GPU memory"):
        resolve_plan(typed("algo=sft", "model=llama3_70b", "hw=rtx4090x4"))
