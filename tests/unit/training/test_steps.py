"""Step counts and data order: one rule for the offline trainer and the on-policy driver."""

from __future__ import annotations

import pytest

from rlhf.training.steps import epoch_order, step_counts, step_items


def test_step_counts_take_whole_steps_and_cap_at_max_steps():
    # 50 items / 16 per step = 3 whole steps per epoch (2 items left over), x 2 epochs = 6, capped at 4.
    assert step_counts(50, 16, 2, None, key="algo.train_batch_samples", what="samples") == (3, 6)
    assert step_counts(50, 16, 2, 4, key="algo.train_batch_samples", what="samples") == (3, 4)
    with pytest.raises(ValueError, match="8 prompts, fewer than one step of algo.prompts_per_step=16"):
        step_counts(8, 16, 1, None, key="algo.prompts_per_step", what="prompts")


def test_step_items_follow_one_permutation_per_epoch():
    order0, order1 = epoch_order(10, 7, 0), epoch_order(10, 7, 1)
    assert sorted(order0) == list(range(10)) and order0 != order1
    # Steps 0-1 are epoch 0's first 8 items in order; step 2 starts epoch 1.
    assert step_items(10, 4, 2, 7, 0) + step_items(10, 4, 2, 7, 1) == order0[:8]
    assert step_items(10, 4, 2, 7, 2) == order1[:4]
    # A function of (seed, epoch) only: a resumed run sees the same order.
    assert epoch_order(10, 7, 1) == order1


def test_the_last_step_is_checkpointed_once():
    from rlhf.training.steps import final_checkpoint_due, saved_by_the_loop

    # save_every=2 over 5 steps: the loop saves 2 and 4, the run saves 5 after it.
    assert [d for d in range(1, 6) if saved_by_the_loop(2, d, 5)] == [2, 4]
    assert final_checkpoint_due(2, 0, 5, 5)
    # save_every=2 over 4 steps: the loop does not save step 4 (the last), the run does, once.
    assert not saved_by_the_loop(2, 4, 4) and final_checkpoint_due(2, 0, 4, 4)
    # Stopped early (max_time) after step 3 of 8: saved unless the loop just did.
    assert final_checkpoint_due(0, 0, 3, 8) and not final_checkpoint_due(3, 0, 3, 8)
    # save_every=0 and a complete run: only the final model; nothing trained (resumed at the end): nothing.
    assert not final_checkpoint_due(0, 0, 4, 4) and not final_checkpoint_due(2, 4, 4, 4)
