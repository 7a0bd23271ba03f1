"""pass@k, maj@k and accuracy against hand-derived numbers and a brute-force count of k-subsets."""

from __future__ import annotations

import itertools

import pytest

from rlhf.evaluation.metrics import accuracy, maj_at_k, majority_answer, mean_maj_at_k, mean_pass_at_k, pass_at_k


def test_accuracy():
    assert accuracy([True, False, True, True]) == 0.75  # 3 of 4
    assert accuracy([]) == 0.0


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 0.4),  # 1 - C(3,1)/C(5,1) = 1 - 3/5: pass@1 is c/n
        (5, 2, 2, 0.7),  # 1 - C(3,2)/C(5,2) = 1 - 3/10
        (5, 2, 4, 1.0),  # only 3 wrong samples: every 4-subset holds a correct one
        (4, 0, 2, 0.0),  # nothing correct
        (4, 4, 4, 1.0),
        (10, 3, 5, 11 / 12),  # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 1 - 1/12
    ],
)
def test_pass_at_k_hand_derived(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_fraction_of_k_subsets_holding_a_correct_sample():
    # The estimator's definition: draw k of the n samples without replacement; count subsets with a hit.
    for n in range(1, 7):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                brute = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(brute, abs=1e-12), (n, c, k)


def test_pass_at_k_refuses_k_above_n():
    with pytest.raises(ValueError, match="eval.n_samples >= k"):
        pass_at_k(3, 1, 4)
    with pytest.raises(ValueError, match="c=5"):
        pass_at_k(4, 5, 1)


def test_mean_pass_at_k_averages_prompts():
    # prompt 1: c=1 of 2 -> pass@1 = 0.5; prompt 2: c=2 of 2 -> 1.0; mean 0.75. pass@2: 1.0 and 1.0.
    per_prompt = [[True, False], [True, True]]
    assert mean_pass_at_k(per_prompt, 1) == pytest.approx(0.75)
    assert mean_pass_at_k(per_prompt, 2) == pytest.approx(1.0)


def test_majority_vote():
    answers = [3, 5, 5, None]
    correct = [True, False, False, False]
    assert maj_at_k(answers, correct, 1) is True  # first sample alone: 3, correct
    assert maj_at_k(answers, correct, 2) is True  # 3 and 5 tie; the first seen (3) wins
    assert maj_at_k(answers, correct, 3) is False  # 5 twice beats 3 once; 5 is wrong
    assert maj_at_k(answers, correct, 4) is False  # None abstains
    assert majority_answer([None, 7, None, 7, 2]) == (7, 1)
    assert majority_answer([None, None]) == (None, -1)
    assert maj_at_k([None, None], [False, False], 2) is False


def test_mean_maj_at_k():
    # prompt A: answers 4,4,1 (4 correct) -> hit; prompt B: 2,9,9 (2 correct) -> 9 wins -> miss: 0.5.
    answers = [[4, 4, 1], [2, 9, 9]]
    correct = [[True, True, False], [True, False, False]]
    assert mean_maj_at_k(answers, correct, 3) == 0.5
    assert mean_maj_at_k(answers, correct, 1) == 1.0  # each prompt's first sample is correct
    with pytest.raises(ValueError, match="1 <= k <= n"):
        maj_at_k([1, 2], [True, False], 3)
