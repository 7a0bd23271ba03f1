"""The promised error messages: the key at fault, a close match, the valid choices, and what to change.

Each message is checked in-process (compose_config, preflight, resolve_plan) and the main ones once more
through the real command line, which must exit with status 2 and print the message without a traceback.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml
from omegaconf import OmegaConf

from rlhf.config.preflight import ConfigError, compose_config, preflight
from rlhf.plan import PlanError, resolve_plan
from tests.config.helpers import options, typed

DPO_KEYS = "adam_betas, beta, epochs"  # the start of the sorted key list of DPOConfig


def _compose_error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        compose_config(list(overrides))
    return str(info.value)


def _plan_error(*overrides: str) -> PlanError:
    with pytest.raises(PlanError) as info:
        resolve_plan(typed(*overrides))
    return info.value


# --- composition errors, in-process -------------------------------------------------------------------------


def test_typo_names_the_key_suggests_the_fix_and_lists_valid_keys():
    msg = _compose_error("algo=dpo", "algo.betaa=0.1")
    assert "unknown config key 'algo.betaa'" in msg
    assert "Did you mean 'algo.beta'?" in msg
    assert f"valid keys of 'algo': {DPO_KEYS}" in msg
    assert "label_smoothing" in msg and "Could not override" not in msg


def test_typo_added_with_plus_is_refused_not_dropped():
    # Hydra accepts `+algo.betaa` on a dataclass node, and OmegaConf.to_object then silently drops it.
    msg = _compose_error("algo=dpo", "+algo.betaa=0.1")
    assert "unknown config key 'algo.betaa'" in msg and "Did you mean 'algo.beta'?" in msg
    assert "added with '+'" in msg


def test_typo_in_a_nested_schema():
    msg = _compose_error("model.lora.rnk=8")
    assert "unknown config key 'model.lora.rnk'" in msg and "Did you mean 'model.lora.rank'?" in msg
    assert "valid keys of 'model.lora': alpha, dropout, load_in_4bit, rank, target_modules" in msg


def test_key_of_another_group_points_to_it():
    msg = _compose_error("algo=sft", "algo.zero_stage=3")
    assert "unknown config key 'algo.zero_stage'" in msg
    assert "'zero_stage' is a key of 'engine': engine.zero_stage=..." in msg


def test_wrong_type_names_key_value_expected_type_and_current_value():
    msg = _compose_error("algo=dpo", "algo.beta=abc")
    assert msg.startswith("wrong type for 'algo.beta': got 'abc', expected a float")
    assert "current value: algo.beta=0.1" in msg
    assert "wrong type for 'engine.gradient_checkpointing': got 'maybe', expected a bool (true or false)" in (
        _compose_error("engine.gradient_checkpointing=maybe")
    )
    assert "expected an integer" in _compose_error("hw.cpu_workers=two")


def test_unknown_option_lists_valid_options_and_suggests_a_close_one():
    msg = _compose_error("model=llama9")
    assert "unknown option 'llama9' for config group 'model'" in msg
    assert "Did you mean 'model=llama3_8b'?" in msg
    assert f"valid options: {', '.join(options('model'))} (files in conf/model/)" in msg
    assert "Did you mean 'hw=a100x8'?" in _compose_error("hw=a100x9")


def test_unknown_group_on_the_root_suggests_the_group():
    msg = _compose_error("mdoel=tiny")
    assert "unknown config key 'mdoel'" in msg and "Did you mean 'model'?" in msg


def test_entry_typo_in_a_mixture_suggests_the_entry():
    msg = _compose_error("algo=dpo", "data.sources.tiny_preff.weight=2")
    assert (
        "'data.sources' has no entry 'tiny_preff' (entries: tiny_pref). Did you mean 'data.sources.tiny_pref'?" in msg
    )


@pytest.mark.parametrize(
    "override",
    ["data.sources.extra.path=x.jsonl", "+data.sources.extra.path=x.jsonl", "+data.sources.extra={path:x.jsonl}"],
)
def test_new_mixture_entry_from_the_command_line_says_where_to_add_it(override):
    # OmegaConf cannot build a typed SourceConfig entry from an override; the message says what works instead.
    msg = _compose_error(override)
    assert "'data.sources'" in msg and "'extra'" in msg
    assert "conf/data/<option>.yaml" in msg and "data.sources.tiny" in msg


def test_free_form_dict_entry_needs_plus():
    msg = _compose_error("engine.deepspeed_overrides.wall_clock_breakdown=true")
    assert "+engine.deepspeed_overrides.wall_clock_breakdown=true" in msg
    cfg = compose_config(["+engine.deepspeed_overrides.wall_clock_breakdown=true"])
    assert OmegaConf.to_object(cfg).engine.deepspeed_overrides == {"wall_clock_breakdown": True}


def test_bare_word_is_explained():
    assert "'dpo' is an option of algo: algo=dpo" in _compose_error("dpo")


def test_preflight_refuses_unset_mandatory_values_but_still_prints_the_config():
    msg = preflight(["model.params_b=???"])
    assert msg is not None and "config values not set: model.params_b" in msg
    assert preflight(["--cfg", "job", "model.params_b=???"]) is None
    assert preflight(["algo=dpo", "--cfg", "job"]) is None
    assert "algo.betaa" in preflight(["algo=dpo", "algo.betaa=0.1"])


# --- plan errors, in-process ------------------------------------------------------------------------------


def test_indivisible_batch_names_both_keys_and_valid_values():
    err = _plan_error("algo=sft", "algo.train_batch_samples=10", "algo.micro_batch_per_gpu=4")
    (problem,) = err.problems
    # 10 samples on 1 rank: the nearest multiples of 4 are 8 and 12; micro-batches dividing 10 are 1, 2, 5, 10.
    assert problem == (
        "algo.train_batch_samples=10 is not divisible by algo.micro_batch_per_gpu=4 x 1 data-parallel rank(s) = 4; "
        "use algo.train_batch_samples in [8, 12], or algo.micro_batch_per_gpu in [1, 2, 5, 10]"
    )


def test_group_estimator_with_one_sample_per_prompt_names_the_key():
    err = _plan_error("algo=grpo", "algo.samples_per_prompt=1")
    assert any(
        p.startswith("algo.advantage=grpo compares samples of the same prompt: set algo.samples_per_prompt >= 2")
        for p in err.problems
    )


def test_llama3_70b_sft_on_rtx4090x4_is_refused_with_estimate_and_advice():
    err = _plan_error("algo=sft", "model=llama3_70b", "hw=rtx4090x4")
    (problem,) = err.problems
    # ZeRO-2 over 4 ranks, P = 70.55e9: weights 2P = 131.4 GiB, grads 2P/4 = 32.9, optimizer 12P/4 = 197.1.
    assert "out of GPU memory: role actor needs about" in problem
    assert "weights 131.4, grads 32.9, optimizer 197.1" in problem
    assert "hw=rtx4090x4 has 23.6 GiB per GPU" in problem
    for remedy in ("engine=zero3:", "engine=zero3_offload:", "model.lora.rank=16:", "model.lora.load_in_4bit=true"):
        assert remedy in problem
    # Only QLoRA with ZeRO-3 brings 70B under 24 GB per GPU: 0.56 bytes x 70.55e9 / 4 ranks = 9.2 GiB of weights.
    fitting = [line for line in problem.splitlines() if line.endswith("(fits)")]
    assert len(fitting) == 1 and "model.lora.load_in_4bit=true engine=zero3" in fitting[0]


# --- the command line ---------------------------------------------------------------------------------------

CLI_CASES = {
    "typo": ["algo=dpo", "algo.betaa=0.1"],
    "wrong_type": ["algo=dpo", "algo.beta=abc"],
    "unknown_option": ["model=llama9"],
    # Two plan problems at once: both are reported by one run.
    "batch": [
        "algo=grpo",
        "algo.train_batch_samples=10",
        "algo.micro_batch_per_gpu=4",
        "algo.samples_per_prompt=1",
        "mode=plan",
    ],
    "too_big": ["algo=sft", "model=llama3_70b", "hw=rtx4090x4", "mode=plan"],
    "plan_ok": [
        "model=llama3_8b",
        "hw=a100x8",
        "algo=dpo",
        "algo.train_batch_samples=64",
        "algo.micro_batch_per_gpu=4",
        "mode=plan",
    ],
    "cfg_job": ["algo=dpo", "--cfg", "job"],
    # Config, plan and data problems of one command line: all reported by one run.
    "all_at_once": ["algo=sft", "algo.lrr=1e-4", "hw=cpux", "data.train=./nothere.jsonl", "data.max_len=99999"],
    # No config problem: the plan's and the data's, together.
    "plan_and_data": ["algo=sft", "data.train=./nothere.jsonl", "data.max_len=99999", "mode=plan"],
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Run every CLI case at once (each pays 1-4 s of imports) from an empty directory; name -> CompletedProcess."""
    cwd = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "rlhf.run", *args],
            cwd=cwd,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name, args in CLI_CASES.items()
    }
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def _refused(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    return result.stderr


def test_cli_typo(cli):
    err = _refused(cli["typo"])
    assert "'algo.betaa'" in err and "Did you mean 'algo.beta'?" in err and "valid keys of 'algo'" in err


def test_cli_wrong_type(cli):
    assert "wrong type for 'algo.beta': got 'abc', expected a float" in _refused(cli["wrong_type"])


def test_cli_unknown_option(cli):
    err = _refused(cli["unknown_option"])
    assert "Did you mean 'model=llama3_8b'?" in err and "valid options: codellama_34b, llama3_70b" in err


def test_cli_plan_errors_are_reported_together(cli):
    err = _refused(cli["batch"])
    assert "problem(s)" in err
    assert "algo.train_batch_samples=10 is not divisible by algo.micro_batch_per_gpu=4" in err
    assert "[8, 12]" in err and "[1, 2, 5, 10]" in err
    assert "set algo.samples_per_prompt >= 2" in err


def test_cli_refuses_a_model_too_big_with_advice(cli):
    err = _refused(cli["too_big"])
    assert "GiB per GPU" in err and "engine=zero3_offload" in err and "model.lora.rank=16" in err
    assert cli["too_big"].stdout == ""


def test_cli_plan_mode_prints_the_table(cli):
    result = cli["plan_ok"]
    assert result.returncode == 0, result.stderr
    out = result.stdout
    # 64 pairs per step over 8 GPUs at 4 per GPU: 64 / (4 x 8) = 2 accumulation steps.
    assert "batch           64 samples/step = 4 per GPU x 8 ranks x 2 accumulation" in out
    assert "device          cuda x 8  dtype bf16  ZeRO-2" in out
    assert "actor+ref" in out  # the DPO reference lives on the actor's GPUs: their memory adds up
    assert "Traceback" not in result.stderr


def test_cli_cfg_job_prints_the_composed_config(cli):
    result = cli["cfg_job"]
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["algo"]["name"] == "dpo" and printed["algo"]["beta"] == 0.1
    assert list(printed["data"]["sources"]) == ["tiny_pref"]
    assert "hydra" not in printed


def test_optimizer_and_sampling_values_no_run_can_use_are_refused_together():
    """Found at plan time with the rest, not by the optimizer inside a rank after Ray started."""
    run = typed(
        "algo=grpo",
        "algo.lr=-1",
        "algo.warmup_ratio=1.5",
        "algo.max_grad_norm=0",
        "rollout.max_new_tokens=0",
        "rollout.temperature=0",
        "rollout.top_p=0",
        "profile_step=0",
    )
    with pytest.raises(PlanError) as info:
        resolve_plan(run)
    text = "\n".join(info.value.problems)
    for key in (
        "algo.lr=-1.0 must be >= 0",
        "algo.warmup_ratio=1.5",
        "algo.max_grad_norm=0",
        "rollout.max_new_tokens=0",
        "rollout.temperature=0 decodes greedily",
        "rollout.top_p=0",
        "profile_step=0 must be >= 1",
    ):
        assert key in text, (key, text)
    assert resolve_plan(typed("algo=reinforce_pp", "algo.lr=0", "rollout.temperature=0", "algo.samples_per_prompt=1"))


def test_cli_config_plan_and_data_problems_are_reported_together(cli):
    err = _refused(cli["all_at_once"])
    assert "unknown config key 'algo.lrr'" in err and "Did you mean 'algo.lr'?" in err
    assert "unknown option 'cpux' for config group 'hw'. Did you mean 'hw=cpu'?" in err
    assert "(data.max_len=99999) exceed the 1024 positions" in err
    assert "'./nothere.jsonl' was not found locally" in err
    err = _refused(cli["plan_and_data"])
    assert "the configuration cannot run (2 problem(s))" in err
    assert "(data.max_len=99999) exceed the 1024 positions" in err and "'./nothere.jsonl' was not found" in err
