"""Combine several per-sample reward sources (model scores, rule rewards, remote rewards) into one reward.

total, metrics = combine_rewards({"correct": r1, "format": r2}, rule="weighted",
                                 weights={"correct": 1.0, "format": 0.2})
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

__all__ = ["RULES", "combine_rewards"]

RULES = ("sum", "mean", "weighted", "min", "product")


def combine_rewards(
    named: Mapping[str, torch.Tensor],
    rule: str = "sum",
    weights: Mapping[str, float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Reduce reward sources elementwise.

    Rules over sources r_1..r_S, each [B]:
        sum: Σ r_s;  mean: Σ r_s / S;  weighted: Σ w_s r_s (`weights` must name exactly the sources);
        min: min_s r_s (a sample is as good as its worst check);  product: Π r_s (gates: any 0 zeroes it).

    Args:
        named: {source name: float tensor [B]}, at least one source, all the same shape.
        rule: one of RULES.
        weights: {source name: weight}; required by "weighted" and rejected by the other rules.
    Returns:
        combined float32 [B]; metrics {"reward/<name>_mean": float, "reward/<name>_std": float} per source
        (population std, so a batch of one gives 0 rather than NaN).
    """
    if rule not in RULES:
        raise ValueError(f"unknown reward combination rule {rule!r}; choose one of {list(RULES)}")
    if not named:
        raise ValueError("combine_rewards needs at least one reward source")
    names = list(named)
    shapes = {name: tuple(named[name].shape) for name in names}
    if any(len(s) != 1 for s in shapes.values()) or len(set(shapes.values())) != 1:
        raise ValueError(f"reward sources must all be 1-D tensors of the same length [B]; got shapes {shapes}")
    if rule == "weighted":
        if weights is None:
            raise ValueError(f"rule 'weighted' needs weights for the sources {names}")
        missing = sorted(set(names) - set(weights))
        unknown = sorted(set(weights) - set(names))
        if missing or unknown:
            raise ValueError(
                f"reward weights do not match the sources {names}: missing weights for {missing}, weights for "
                f"unknown sources {unknown}"
            )
    elif weights is not None:
        raise ValueError(f"weights are only used by rule 'weighted', not {rule!r}; drop them or set rule='weighted'")

    stacked = torch.stack([named[name].detach().to(torch.float32) for name in names])  # [S, B]
    if rule == "sum":
        combined = stacked.sum(0)
    elif rule == "mean":
        combined = stacked.mean(0)
    elif rule == "weighted":
        w = torch.tensor([float(weights[name]) for name in names], dtype=torch.float32, device=stacked.device)
        combined = (w[:, None] * stacked).sum(0)
    elif rule == "min":
        combined = stacked.min(0).values
    else:
        combined = stacked.prod(0)

    metrics: dict[str, float] = {}
    for name, values in zip(names, stacked, strict=True):
        metrics[f"reward/{name}_mean"] = values.mean().item()
        metrics[f"reward/{name}_std"] = values.std(correction=0).item()
    return combined, metrics
