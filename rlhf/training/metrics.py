"""One rule for combining the metrics the ranks of a role return for a step.

Ranks return their shares of the step's means (each loss is divided by the global count of its unit, see
rlhf/algos/aggregate.py and rlhf/training/objectives.py), so shares add up to the mean over the whole batch.
Values that are the same step seen from every rank (learning rate, gradient norm) or wall times (the step
waits for the slowest rank) are not shares: they take the largest rank's value.
"""

from __future__ import annotations


def is_share(key: str) -> bool:
    """Whether a rank's value of `key` is its share of a sum over ranks."""
    return not (key.startswith("timing/") or key.endswith(("/lr", "_lr", "grad_norm")))


def combine_rank_metrics(per_rank: list[dict]) -> dict:
    out: dict[str, float] = {}
    for d in per_rank:
        for k, v in d.items():
            if is_share(k):
                out[k] = out.get(k, 0.0) + v
            else:
                out[k] = max(out.get(k, v), v)
    return out
