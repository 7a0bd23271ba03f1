"""Best-of-N selection of rejection sampling and best-vs-worst pairing of iterative DPO
(rlhf/controllers/iterative.py), on hand-written rewards."""

from __future__ import annotations

from rlhf.controllers.iterative import select_best, select_pairs


def test_best_of_n_with_threshold_and_ties():
    # 3 prompts x 3 samples; prompt 1 ties (first kept), prompt 2 is below the threshold 0.5
    rewards = [0.1, 0.9, 0.3, 0.7, 0.7, 0.2, 0.4, 0.0, 0.1]
    assert select_best(rewards, 3, None) == [1, 3, 6]
    assert select_best(rewards, 3, 0.5) == [1, 3, None]


def test_best_and_worst_pairs_need_a_margin():
    rewards = [0.1, 0.9, 0.3, 0.5, 0.5, 0.5, 1.0, 0.0, 0.0]
    # prompt 0: best 1, worst 0; prompt 1: all equal -> no pair; prompt 2: best 6, worst the last of the tie, 8
    assert select_pairs(rewards, 3, 1e-6) == [(1, 0), None, (6, 8)]
    assert select_pairs(rewards, 3, 0.9) == [None, None, (6, 8)]
