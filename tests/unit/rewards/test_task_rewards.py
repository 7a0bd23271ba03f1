"""The default task's reward functions against hand-derived values."""

from __future__ import annotations

import pytest

from rlhf.rewards.functions import number_format, numeric_closeness


def test_number_format_accepts_one_number_only():
    responses = ["7.", "7", "-3.5", "  12. ", "7..", "2222 2", "a7", "0 * 3 = 0."]
    assert number_format([""] * len(responses), responses) == [1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_numeric_closeness_is_one_over_one_plus_the_distance():
    responses = ["0.", "1", "12", "no number", "37 * 0 = 0.", "The answer is 3 and then 9"]
    # 1/(1+0), 1/(1+1), 1/(1+12), none, the last number 0 -> 1, "answer is 3" -> 1/(1+3)
    expected = [1.0, 0.5, 1 / 13, 0.0, 1.0, 0.25]
    assert numeric_closeness([""] * 6, responses, answer=["0"] * 6) == pytest.approx(expected)
    assert numeric_closeness([""], ["19"], answer=["#### 20"]) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="2 responses but 1 answers"):
        numeric_closeness(["", ""], ["1", "2"], answer=["1"])
