"""On one GPU: GRPO and PPO with colocated vLLM rollout on the tiny chat model (`make test-gpu`).

Needs a CUDA build of torch and vLLM. Checks that the engine, after the last weight sync, decodes greedily as
the trained model does, that rollout and trainer log-probs agree step by step, and that training moved the
weights. The larger-shape numbers come from `python -m rlhf.bench` (conf/bench).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def _needs_gpu_and_vllm():
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pytest.importorskip("vllm", reason="vLLM is not installed (pip install -e '.[vllm]')")
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_colocated_vllm_rollout_trains_and_stays_in_sync(tmp_path: Path, algo: str) -> None:
    from safetensors.torch import load_file

    from rlhf.config.preflight import compose_config
    from rlhf.models.tiny import tiny_model_dir
    from rlhf.run import execute

    cfg = compose_config(
        [
            f"algo={algo}",
            "hw=h100x1",
            "rollout=vllm",
            "placement=colocated",
            "algo.max_steps=3",
            "rollout.max_new_tokens=32",
            "rollout.gpu_memory_utilization=0.3",
            "tracking=none",
            f"output_dir={tmp_path / algo}",
        ]
    )
    result = execute(cfg, progress=False)
    assert result.steps == 3
    assert result.eval["check/greedy_agreement"] >= 0.95, result.eval
    assert result.last["rollout/logprob_mismatch"] < 0.05, result.last
    assert result.last["timing/weight_sync_s"] > 0
    before = load_file(str(tiny_model_dir("llama_chat") / "model.safetensors"))
    after = load_file(str(Path(result.model_dir) / "model.safetensors"))
    assert any(not torch.equal(before[k], after[k].to(before[k].dtype)) for k in before)
