"""Ring attention end to end on CPU: runs whose rows are split over a ring of 2 processes
(model.ring_attn_size=2) take the same first step as unsplit runs: same loss, same gradient norm (clipping off).

Offline (SFT, DPO on packed rows): 2 processes in one ring (1 data-parallel rank) against 1 process; the ranks
of the ring see the same samples and DeepSpeed's average over both processes is undone once. On-policy (GRPO
with packed passes): a ring of 2 against 2 data-parallel ranks, which generate the same rollout (the policy
ranks generate as before); the ring's log-probs equal the generator's and the reference's, and the update
equals the data-parallel one. A reward model's padded rows are checked against the unsplit ones in
tests/unit/models/test_ring_attention.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import SMALL_DATA, run

pytestmark = pytest.mark.timeout(900)

STEP = ["algo.train_batch_samples=4", "algo.micro_batch_per_gpu=2", "algo.max_grad_norm=1e6", "algo.max_steps=1"]
OFFLINE = {
    "sft": ["algo=sft", "data.packing=true", *SMALL_DATA["sft"]],
    "dpo": ["algo=dpo", "data.packing=true", *SMALL_DATA["pair"]],
}
GRPO = [
    "algo=grpo",
    "algo.pack_sequences=true",
    "algo.max_steps=1",
    "algo.max_grad_norm=1e6",
    "rollout.max_new_tokens=12",
    "data.sources.tiny_math.max_samples=64",
]


@pytest.mark.parametrize("algo", sorted(OFFLINE))
def test_ring_of_two_takes_the_unsplit_first_step(algo, tmp_path, mlflow_uri):
    common = [*OFFLINE[algo], *STEP]
    whole = run(tmp_path / "whole", mlflow_uri, *common, "hw.cpu_workers=1")
    ring = run(tmp_path / "ring", mlflow_uri, *common, "hw.cpu_workers=2", "model.ring_attn_size=2")
    for key in ("train/loss", "train/grad_norm"):
        print(f"{algo} {key}: unsplit {whole.first[key]!r}, ring of 2 {ring.first[key]!r}")
        assert ring.first[key] == pytest.approx(whole.first[key], rel=1e-5), key
    assert whole.first["train/grad_norm"] > 1e-3
    # The evaluation after the step: Adam's first step moves weights whose gradient is at the float32 noise
    # floor by +-lr whatever its sign, so the two models agree to about 1e-4, not bit for bit.
    assert whole.eval and whole.eval.keys() == ring.eval.keys()
    for key, value in whole.eval.items():
        assert ring.eval[key] == pytest.approx(value, rel=1e-4, abs=1e-5), key


def _step_one(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return next(r for r in rows if r.get("step") == 1 and "train/grad_norm" in r)


def test_grpo_ring_of_two_takes_the_data_parallel_step(tmp_path, mlflow_uri):
    run(tmp_path / "dp", mlflow_uri, *GRPO, "hw.cpu_workers=2")
    run(tmp_path / "ring", mlflow_uri, *GRPO, "hw.cpu_workers=2", "model.ring_attn_size=2")
    dp, ring = _step_one(tmp_path / "dp"), _step_one(tmp_path / "ring")
    assert ring["rollout/reward_mean"] == dp["rollout/reward_mean"]  # the same rollout
    # Old log-probs from the split packed rows against the generator's and the reference's unsplit forwards.
    assert ring["rollout/logprob_mismatch"] < 1e-5 and ring["rollout/kl"] < 1e-6
    for key in ("train/policy_loss", "train/kl_loss", "train/entropy", "train/grad_norm"):
        print(f"grpo {key}: data-parallel {dp[key]!r}, ring of 2 {ring[key]!r}")
        assert ring[key] == pytest.approx(dp[key], rel=1e-4, abs=1e-6), key
    assert dp["train/grad_norm"] > 1e-2
