"""PPO with the critic on fewer data-parallel ranks than the actor (the shipped ppo_llama3_8b_a100x16 tuning puts
the actor on 8 GPUs and the critic on 4): the critic's DeepSpeed engine takes its own accumulation from the plan,
and the run trains exactly as with equal ranks.

On CPU, placement.critic_gpus counts the critic's processes. Two runs with 2 actor ranks: the critic on 2 ranks
(4 per micro-batch x 1 accumulation x 2 ranks = 8 samples) and on 1 rank (4 x 2 x 1 = 8). Every loss divides by
the step's global token count, so both critics see the same gradient: the same gradient norm, the same weights
after the first update, and so the same values, advantages and policy after the second step. Clipping is off
(max_grad_norm=1e6) so that a wrongly scaled gradient cannot hide behind it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlhf.config.preflight import compose_config
from rlhf.run import execute

pytestmark = pytest.mark.timeout(1500)

PPO = [
    "algo=ppo",
    "hw.cpu_workers=2",
    "algo.prompts_per_step=8",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "algo.max_steps=2",
    "algo.save_every=1",
    "algo.keep_checkpoints=5",
    "algo.max_grad_norm=1e6",
    "rollout.max_new_tokens=8",
    "data.sources.tiny_math.max_samples=32",
    "eval.max_prompts=4",
]


@pytest.fixture(scope="module", autouse=True)
def _ray_for_module():
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


def _run(tmp: Path, name: str, *overrides: str):
    out = tmp / name
    cfg = compose_config(
        [
            f"output_dir={out}",
            f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
            "tracking.log_model=false",
            *PPO,
            *overrides,
        ]
    )
    return execute(cfg, progress=False), out


def _critic_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The critic's module weights in its DeepSpeed state of step `step` (written by rank 0)."""
    path = out / "checkpoints" / f"step_{step:06d}" / "critic" / "state" / "mp_rank_00_model_states.pt"
    return torch.load(path, map_location="cpu", weights_only=False)["module"]


def test_critic_on_fewer_ranks_trains_like_equal_ranks(tmp_path: Path) -> None:
    from omegaconf import OmegaConf

    from rlhf.plan import resolve_plan

    plan = resolve_plan(OmegaConf.to_object(compose_config([*PPO, "placement.critic_gpus=1"])))
    actor, critic = plan.role("actor"), plan.role("critic")
    assert (actor.dp_ranks, actor.micro_batch_per_gpu, actor.grad_accum) == (2, 4, 1)
    assert (critic.dp_ranks, critic.micro_batch_per_gpu, critic.grad_accum) == (1, 4, 2)

    equal, equal_out = _run(tmp_path, "equal")
    fewer, fewer_out = _run(tmp_path, "fewer", "placement.critic_gpus=1")

    for key in ("train/value_loss", "train/critic_grad_norm", "train/policy_loss", "rollout/reward_mean"):
        for step, (a, b) in enumerate(((equal.first, fewer.first), (equal.last, fewer.last)), start=1):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), (key, step, a[key], b[key])
    # A real gradient reached the critic (a zero one would pass the comparison trivially).
    assert equal.first["train/critic_grad_norm"] > 1e-3

    w_equal, w_fewer = _critic_weights(equal_out, 1), _critic_weights(fewer_out, 1)
    assert w_equal.keys() == w_fewer.keys()
    for k in w_equal:
        assert torch.allclose(w_fewer[k], w_equal[k], atol=1e-5, rtol=0), k
    # The second step's advantages come from the updated critic's values: the policies end alike too.
    p_equal = load_file(str(Path(equal_out) / "final" / "model.safetensors"))
    p_fewer = load_file(str(Path(fewer_out) / "final" / "model.safetensors"))
    assert max(float((p_fewer[k] - p_equal[k]).abs().max()) for k in p_equal) < 1e-5
