"""Ring attention end to end on CPU: a run whose packed rows are split over 2 ranks (model.ring_attn_size=2,
2 processes, 1 data-parallel rank) takes the same first step as the unsplit run on 1 process: same loss, same
gradient norm (clipping off), same evaluation. The ranks of the ring see the same samples, and DeepSpeed's
average over both processes is undone once (rlhf/models/ring_attention.py)."""

from __future__ import annotations

import pytest

from tests.integration.conftest import SMALL_DATA, run

pytestmark = pytest.mark.timeout(900)

STEP = ["algo.train_batch_samples=4", "algo.micro_batch_per_gpu=2", "algo.max_grad_norm=1e6", "algo.max_steps=1"]
CASES = {
    "sft": ["algo=sft", "data.packing=true", *SMALL_DATA["sft"]],
    "dpo": ["algo=dpo", "data.packing=true", *SMALL_DATA["pair"]],
    "rm": ["algo=rm", *SMALL_DATA["pair"]],  # padded rows: a reward model pools one token per row
}


@pytest.mark.parametrize("algo", sorted(CASES))
def test_ring_of_two_takes_the_unsplit_first_step(algo, tmp_path, mlflow_uri):
    common = [*CASES[algo], *STEP]
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
