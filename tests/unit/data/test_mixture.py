"""Mixtures: exact per-source counts, oversampling, determinism; train/eval hold-outs."""

from __future__ import annotations

import collections

import pytest

from rlhf.data.errors import DataError
from rlhf.data.mixture import mix_sources, mixture_counts, train_eval_split


def _rows(name, n):
    return [f"{name}{i}" for i in range(n)]


def test_counts_follow_weights_over_the_total_size():
    # N = 60 + 40 = 100; weights 3:1 -> 75 and 25.
    assert mixture_counts({"a": 60, "b": 40}, {"a": 3.0, "b": 1.0}) == {"a": 75, "b": 25}
    # Equal weights on equal sizes keep every row once.
    assert mixture_counts({"a": 10, "b": 10}, {"a": 1, "b": 1}) == {"a": 10, "b": 10}


def test_counts_use_largest_remainder_rounding_and_sum_to_n():
    # N = 30, weights 1:1:2 -> 7.5, 7.5, 15; floors 7, 7, 15 sum to 29; the one left goes to the first of the
    # tied remainders (source order): 8, 7, 15.
    assert mixture_counts({"a": 10, "b": 10, "c": 10}, {"a": 1, "b": 1, "c": 2}) == {"a": 8, "b": 7, "c": 15}
    # N = 7 over weights 1:1:1 -> 2.33 each; floors 6; the remainder 1 goes to "a".
    assert mixture_counts({"a": 3, "b": 2, "c": 2}, {"a": 1, "b": 1, "c": 1}) == {"a": 3, "b": 2, "c": 2}


def test_zero_weight_sources_are_left_out_of_n():
    # Only "a" counts: N = 5, all to "a".
    assert mixture_counts({"a": 5, "b": 50}, {"a": 1.0, "b": 0.0}) == {"a": 5, "b": 0}


@pytest.mark.parametrize(
    "sizes, weights, match",
    [
        ({"a": 5}, {"a": -1.0}, "weight -1.0"),
        ({"a": 5, "b": 5}, {"a": 0.0, "b": 0.0}, "every source has weight 0"),
        ({"a": 5, "b": 0}, {"a": 1.0, "b": 1.0}, "no usable rows"),
    ],
)
def test_bad_weights_are_refused(sizes, weights, match):
    with pytest.raises(DataError, match=match):
        mixture_counts(sizes, weights)


def test_mix_oversamples_a_small_source_and_subsamples_a_large_one():
    mixed = mix_sources({"a": _rows("a", 60), "b": _rows("b", 40)}, {"a": 3, "b": 1}, seed=0)
    counts = collections.Counter(mixed)
    from_a = [r for r in mixed if r.startswith("a")]
    from_b = [r for r in mixed if r.startswith("b")]
    assert len(mixed) == 100 and len(from_a) == 75 and len(from_b) == 25
    # a: every row once (60) plus 15 distinct rows twice.
    assert set(from_a) == set(_rows("a", 60))
    assert sorted(collections.Counter(counts[r] for r in set(from_a)).items()) == [(1, 45), (2, 15)]
    # b: 25 distinct rows, without replacement.
    assert len(set(from_b)) == 25


def test_mix_is_deterministic_in_the_seed_and_shuffled():
    sources = {"a": _rows("a", 30), "b": _rows("b", 30)}
    first = mix_sources(sources, {"a": 1, "b": 2}, seed=7)
    assert first == mix_sources(sources, {"a": 1, "b": 2}, seed=7)
    assert first != mix_sources(sources, {"a": 1, "b": 2}, seed=8)
    assert first[:30] != sorted(first[:30])  # not left in source order


def test_source_sample_does_not_depend_on_the_other_sources():
    # "a" keeps the same 10 of its 20 rows whatever the other source is called or holds.
    one = mix_sources({"a": _rows("a", 20), "b": _rows("b", 20)}, {"a": 1, "b": 3}, seed=3)
    two = mix_sources({"a": _rows("a", 20), "zz": _rows("z", 20)}, {"a": 1, "zz": 3}, seed=3)
    assert sorted(r for r in one if r.startswith("a")) == sorted(r for r in two if r.startswith("a"))


def test_train_eval_split_is_disjoint_ordered_and_deterministic():
    rows = list(range(100))
    train, held = train_eval_split(rows, 0.1, seed=1)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held) == rows and train == sorted(train) and held == sorted(held)
    assert (train, held) == train_eval_split(rows, 0.1, seed=1)
    assert held != train_eval_split(rows, 0.1, seed=2)[1]


def test_train_eval_split_keeps_one_row_on_each_side():
    # round(0.1 * 5) = round(0.5) = 0, raised to 1; round(0.9 * 2) = 2, lowered to 1.
    assert [len(p) for p in train_eval_split(list(range(5)), 0.1, seed=0)] == [4, 1]
    assert [len(p) for p in train_eval_split([0, 1], 0.9, seed=0)] == [1, 1]
    assert train_eval_split([0, 1, 2], 0.0, seed=0) == ([0, 1, 2], [])
    with pytest.raises(DataError, match="data.eval_fraction"):
        train_eval_split([0, 1], 1.0, seed=0)
