import pytest
import torch

from rlhf.algos.shaping import (
    RunningMeanStd,
    clip_rewards,
    equal_reward_groups,
    keep_mask_for_groups,
    normalize_scores,
    overlong_penalty,
)


def test_overlong_penalty_hand_values():
    # max_len 10, buffer 4: free up to 6, then linear: 7 -> -1/4, 8 -> -2/4, 10 -> -1, beyond -> -1
    lengths = torch.tensor([5, 6, 7, 8, 10, 12])
    torch.testing.assert_close(
        overlong_penalty(lengths, max_len=10, buffer_len=4), torch.tensor([0.0, 0.0, -0.25, -0.5, -1.0, -1.0])
    )
    torch.testing.assert_close(
        overlong_penalty(lengths, max_len=10, buffer_len=4, penalty=0.5),
        torch.tensor([0.0, 0.0, -0.125, -0.25, -0.5, -0.5]),
    )


@pytest.mark.parametrize("buffer_len", [0, 11])
def test_overlong_penalty_rejects_bad_buffer(buffer_len):
    with pytest.raises(ValueError, match=r"algo\.overlong_buffer"):
        overlong_penalty(torch.tensor([5]), max_len=10, buffer_len=buffer_len)


def test_equal_reward_groups_and_keep_mask():
    scores = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0, 2.0, 2.0, 2.0])
    equal = equal_reward_groups(scores, 3)
    assert equal.tolist() == [True, False, True]
    keep = keep_mask_for_groups(~equal, 3)
    assert keep.tolist() == [False, False, False, True, True, True, False, False, False]
    near = torch.tensor([1.0, 1.0 + 1e-7])
    assert equal_reward_groups(near, 2).tolist() == [False]
    assert equal_reward_groups(near, 2, atol=1e-6).tolist() == [True]


def test_group_filter_errors():
    with pytest.raises(ValueError, match=r"algo\.samples_per_prompt"):
        equal_reward_groups(torch.zeros(5), 2)
    with pytest.raises(ValueError, match=r"algo\.samples_per_prompt"):
        equal_reward_groups(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="num_groups"):
        keep_mask_for_groups(torch.ones(2, 2, dtype=torch.bool), 2)


def test_clip_and_normalize():
    torch.testing.assert_close(clip_rewards(torch.tensor([-5.0, 0.0, 5.0]), -1.0, 2.0), torch.tensor([-1.0, 0.0, 2.0]))
    with pytest.raises(ValueError, match="empty"):
        clip_rewards(torch.zeros(1), 1.0, -1.0)
    # (1 - 2) / 1 = -1, (3 - 2) / 1 = 1
    torch.testing.assert_close(normalize_scores(torch.tensor([1.0, 3.0]), 2.0, 1.0), torch.tensor([-1.0, 1.0]))


def test_running_mean_std_hand_values():
    rms = RunningMeanStd()
    assert rms.var == 0.0
    rms.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    # mean 2.5; population variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25
    assert rms.count == 4 and rms.mean == pytest.approx(2.5) and rms.var == pytest.approx(1.25)
    rms.update(torch.tensor([]))
    assert rms.count == 4


def test_running_mean_std_merge_equals_one_pass():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3 + 7
    parts = [x[:10], x[10:400], x[400:]]
    sequential, merged = RunningMeanStd(), RunningMeanStd()
    for p in parts:
        sequential.update(p)
    workers = []
    for p in parts:
        w = RunningMeanStd()
        w.update(p)
        workers.append(w)
    for w in reversed(workers):
        merged.merge(w)
    for rms in (sequential, merged):
        assert rms.count == 1000
        assert rms.mean == pytest.approx(x.mean().item(), rel=1e-12)
        assert rms.var == pytest.approx(x.var(unbiased=False).item(), rel=1e-10)
    restored = RunningMeanStd()
    restored.load_state_dict(merged.state_dict())
    assert restored.state_dict() == merged.state_dict()
    assert restored.std == pytest.approx(x.std(unbiased=False).item(), rel=1e-10)
