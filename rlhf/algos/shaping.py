"""Reward shaping before advantage estimation: clipping, normalization (with running statistics), DAPO's
soft overlong punishment and DAPO's dynamic-sampling filter of groups without signal (Yu et al. 2025)."""

from __future__ import annotations

import math
from typing import Dict, Union

import torch

from rlhf.algos.groups import check_group_size, group_view


def clip_rewards(scores: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """Clamp scores [B] to [low, high] (a reward model's outliers should not dominate a batch)."""
    if low > high:
        raise ValueError(f"reward clip range is empty: low={low} > high={high}")
    return scores.clamp(low, high)


def normalize_scores(
    scores: torch.Tensor, mean: Union[float, torch.Tensor], std: Union[float, torch.Tensor], eps: float = 1e-8
) -> torch.Tensor:
    """(scores - mean) / (std + eps), e.g. with the statistics of a `RunningMeanStd`. [B] -> [B]."""
    return (scores - mean) / (std + eps)


class RunningMeanStd:
    """Running mean and variance of a stream of scalars (Welford), mergeable across workers.

    `merge` combines two summaries exactly (Chan et al. 1979), so per-rank statistics can be gathered and
    merged in any order. Values are accumulated in float64 Python floats.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    def _combine(self, count: int, mean: float, m2: float) -> None:
        if count == 0:
            return
        total = self.count + count
        delta = mean - self.mean
        self.mean += delta * count / total
        self.m2 += m2 + delta * delta * self.count * count / total
        self.count = total

    def update(self, x: torch.Tensor) -> None:
        """Add every element of x."""
        x = torch.as_tensor(x).detach().to(torch.float64).flatten()
        if x.numel() == 0:
            return
        mean = x.mean()
        self._combine(x.numel(), mean.item(), (x - mean).square().sum().item())

    def merge(self, other: RunningMeanStd) -> None:
        """Fold another summary into this one."""
        self._combine(other.count, other.mean, other.m2)

    @property
    def var(self) -> float:
        """Population variance (0 before any data)."""
        return self.m2 / self.count if self.count else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def state_dict(self) -> Dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def overlong_penalty(lengths: torch.Tensor, max_len: int, buffer_len: int, penalty: float = 1.0) -> torch.Tensor:
    """DAPO soft overlong punishment, added to the score. [B] lengths -> [B] float penalties <= 0.

        0                                          if L <= max_len - buffer_len
        -penalty * (L - (max_len - buffer_len)) / buffer_len   in between (linear)
        -penalty                                   if L >= max_len

    Truncated responses are punished gradually instead of with a cliff, which is less noisy for the policy.
    """
    if not 0 < buffer_len <= max_len:
        raise ValueError(f"overlong buffer must be in (0, max_len={max_len}] (algo.overlong_buffer), got {buffer_len}")
    over = (lengths.float() - (max_len - buffer_len)).clamp_min(0)
    return -penalty * (over / buffer_len).clamp_max(1.0)


def equal_reward_groups(scores: torch.Tensor, group_size: int, atol: float = 0.0) -> torch.Tensor:
    """Groups whose scores are all equal (max - min <= atol): [B] -> bool [num_groups].

    Such groups have zero group-relative advantage and only dilute the batch; DAPO's dynamic sampling drops
    them and samples more prompts.
    """
    groups = group_view(scores, group_size, what="equal_reward_groups")
    return (groups.max(-1).values - groups.min(-1).values) <= atol


def keep_mask_for_groups(keep_groups: torch.Tensor, group_size: int) -> torch.Tensor:
    """Expand a per-group bool [num_groups] to a per-sample mask [B = num_groups * group_size].

    E.g. `keep_mask_for_groups(~equal_reward_groups(scores, G), G)` selects the samples worth training on.
    """
    if keep_groups.dim() != 1:
        raise ValueError(f"keep_groups must be 1-D [num_groups], got shape {tuple(keep_groups.shape)}")
    check_group_size(keep_groups.shape[0] * group_size, group_size, what="keep_mask_for_groups")
    return keep_groups.bool().repeat_interleave(group_size)
