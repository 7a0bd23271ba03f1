"""Metrics of sampled answers: accuracy, pass@k (unbiased) and maj@k. Pure Python, no torch.

- accuracy: the fraction of responses a verifiable reward marks correct.
- pass@k: the probability that at least one of k samples drawn without replacement from the n generated for a
  prompt is correct, estimated without bias from c correct out of n (Chen et al. 2021, "Evaluating Large
  Language Models Trained on Code", arXiv:2107.03374): 1 - C(n-c, k) / C(n, k).
- maj@k: majority vote (self-consistency, Wang et al. 2022, arXiv:2203.11171): the most frequent extracted
  answer among the first k samples is the prompt's answer; correct when a sample giving it is correct.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Optional


def accuracy(correct: Sequence[bool]) -> float:
    """Fraction of True in `correct` (0.0 for an empty list)."""
    return sum(1 for c in correct if c) / len(correct) if correct else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `c` correct among `n` samples: 1 - C(n-c, k) / C(n, k).

    Computed as 1 - prod_{i=n-c+1..n} (1 - k / i), which avoids huge binomials. Needs 1 <= k <= n and
    0 <= c <= n; with fewer than k wrong samples (n - c < k) every k-subset holds a correct one: 1.0.
    """
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n samples, got k={k}, n={n}; sample more (eval.n_samples >= k)")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: correct count c={c} must lie in [0, n={n}]")
    if n - c < k:
        return 1.0
    miss = 1.0
    for i in range(n - c + 1, n + 1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def mean_pass_at_k(correct_per_prompt: Sequence[Sequence[bool]], k: int) -> float:
    """pass@k averaged over prompts; each entry holds the correctness of that prompt's n samples."""
    if not correct_per_prompt:
        return 0.0
    return sum(pass_at_k(len(cs), sum(1 for c in cs if c), k) for cs in correct_per_prompt) / len(correct_per_prompt)


def majority_answer(answers: Sequence[Optional[Hashable]]) -> tuple[Optional[Hashable], int]:
    """(the most frequent non-None answer, the index of its first sample); (None, -1) when none has one.

    Ties go to the answer seen first, so the vote is deterministic for a given sample order.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None, -1
    best = max(counts.values())
    for i, a in enumerate(answers):
        if a is not None and counts[a] == best:
            return a, i
    raise AssertionError("unreachable")


def maj_at_k(answers: Sequence[Optional[Hashable]], correct: Sequence[bool], k: int) -> bool:
    """Whether the majority answer of the first k samples is correct (a sample giving it is marked correct).

    answers[i] is the answer extracted from sample i (None: no answer), correct[i] its verdict. A prompt whose
    first k samples hold no answer counts as wrong.
    """
    if not 1 <= k <= len(answers):
        raise ValueError(f"maj@k needs 1 <= k <= n samples, got k={k}, n={len(answers)}")
    if len(answers) != len(correct):
        raise ValueError(f"maj@k: {len(answers)} answers but {len(correct)} verdicts")
    winner, first = majority_answer(answers[:k])
    return winner is not None and bool(correct[first])


def mean_maj_at_k(
    answers_per_prompt: Sequence[Sequence[Optional[Hashable]]], correct_per_prompt: Sequence[Sequence[bool]], k: int
) -> float:
    """maj@k averaged over prompts."""
    if not answers_per_prompt:
        return 0.0
    hits = [maj_at_k(a, c, k) for a, c in zip(answers_per_prompt, correct_per_prompt, strict=True)]
    return sum(hits) / len(hits)
