"""How many optimizer (or rollout) steps a run takes and in which order it visits its data: one rule for the
offline trainer and the on-policy driver, so both resume from a step number alone."""

from __future__ import annotations

from typing import Optional


def step_counts(
    num_items: int, per_step: int, epochs: int, max_steps: Optional[int], *, key: str, what: str
) -> tuple[int, int]:
    """(steps per epoch, total steps): whole steps of `per_step` items per epoch, capped by max_steps.

    `key` is the config key of `per_step` and `what` names the items, for the error when one step needs more
    items than the data set has."""
    per_epoch = num_items // per_step if per_step > 0 else 0
    if per_epoch == 0:
        raise ValueError(
            f"the training set has {num_items} {what}, fewer than one step of {key}={per_step}; lower {key} or add data"
        )
    total = per_epoch * epochs
    if max_steps:
        total = min(total, max_steps)
    return per_epoch, total


def saved_by_the_loop(save_every: int, done: int, total: int) -> bool:
    """Whether the loop checkpoints after step `done` (every `save_every` steps, the last step excepted)."""
    return bool(save_every) and done % save_every == 0 and done < total


def final_checkpoint_due(save_every: int, start: int, done: int, planned: int) -> bool:
    """Whether the run checkpoints its last trained step after the loop: with save_every (so a kill while the
    final model is written resumes there instead of training again) and when it stopped early (resumable),
    unless the loop already saved that step or nothing was trained."""
    return done > start and (bool(save_every) or done < planned) and not saved_by_the_loop(save_every, done, planned)


def epoch_order(num_items: int, seed: int, epoch: int) -> list[int]:
    """The shuffled item order of one epoch (a function of the run seed and the epoch only)."""
    import torch

    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    return torch.randperm(num_items, generator=g).tolist()


def step_items(num_items: int, per_step: int, steps_per_epoch: int, seed: int, step: int) -> list[int]:
    """The indices of the items of global step `step`."""
    epoch, s = divmod(step, steps_per_epoch)
    return epoch_order(num_items, seed, epoch)[s * per_step : (s + 1) * per_step]
