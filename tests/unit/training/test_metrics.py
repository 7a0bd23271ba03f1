"""One rule for combining the metrics of a role's ranks: shares add, step values and wall times take the max."""

from __future__ import annotations

from rlhf.training.metrics import combine_rank_metrics


def test_shares_add_and_step_values_take_the_largest_rank():
    ranks = [
        {
            "train/loss": 0.25,
            "train/lr": 1e-5,
            "train/grad_norm": 2.0,
            "timing/step_s": 1.5,
            "train/critic_grad_norm": 3.0,
            "train/critic_lr": 5e-6,
        },
        {"train/loss": 0.5, "timing/step_s": 2.0},
    ]
    out = combine_rank_metrics(ranks)
    # 0.25 + 0.5: each rank's loss is its share of the step mean.
    assert out["train/loss"] == 0.75
    # Reported by rank 0 only (the same value on every rank) or the slowest rank's wall time.
    assert out["train/lr"] == 1e-5 and out["train/grad_norm"] == 2.0 and out["timing/step_s"] == 2.0
    assert out["train/critic_grad_norm"] == 3.0 and out["train/critic_lr"] == 5e-6
