"""Group layout of on-policy batches: the samples of one prompt are contiguous rows.

With `B = num_prompts * group_size`, rows `[i*G:(i+1)*G]` form group `i`. GRPO, RLOO, REINFORCE++-baseline and
DAPO dynamic filtering all read a batch this way.
"""

from __future__ import annotations

import torch


def check_group_size(batch_size: int, group_size: int, *, what: str) -> int:
    """Validate a group layout and return the number of groups.

    Raises ValueError naming `algo.samples_per_prompt` when `group_size < 2` (a group method needs at least two
    samples of a prompt to form a baseline) or when `batch_size` is not a multiple of `group_size`.
    """
    if group_size < 2:
        raise ValueError(
            f"{what} compares samples of the same prompt and needs group_size >= 2, got {group_size}; "
            f"set algo.samples_per_prompt to 2 or more"
        )
    if batch_size % group_size != 0:
        raise ValueError(
            f"{what}: batch of {batch_size} samples is not a whole number of groups of {group_size}; "
            f"keep the samples of a prompt together and make the batch a multiple of algo.samples_per_prompt"
        )
    return batch_size // group_size


def group_view(scores: torch.Tensor, group_size: int, *, what: str) -> torch.Tensor:
    """Reshape per-sample scores [B] to [num_groups, group_size] (a view; rows are groups)."""
    if scores.dim() != 1:
        raise ValueError(f"{what}: scores must be 1-D [B], got shape {tuple(scores.shape)}")
    num_groups = check_group_size(scores.shape[0], group_size, what=what)
    return scores.view(num_groups, group_size)
