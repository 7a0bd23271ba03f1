import pytest
import torch

from rlhf.algos.groups import check_group_size, group_view


def test_group_view_rows_are_contiguous_samples():
    scores = torch.arange(6.0)
    # rows [0:3] and [3:6] form groups 0 and 1
    assert group_view(scores, 3, what="test").tolist() == [[0.0, 1.0, 2.0], [3.0, 4.0, 5.0]]
    assert check_group_size(6, 2, what="test") == 3


def test_group_errors_name_the_config_key():
    with pytest.raises(ValueError, match=r"grpo.*group_size >= 2, got 1.*algo\.samples_per_prompt"):
        check_group_size(4, 1, what="grpo")
    with pytest.raises(ValueError, match=r"batch of 7 samples.*groups of 2.*algo\.samples_per_prompt"):
        check_group_size(7, 2, what="grpo")
    with pytest.raises(ValueError, match=r"1-D"):
        group_view(torch.zeros(2, 2), 2, what="grpo")
