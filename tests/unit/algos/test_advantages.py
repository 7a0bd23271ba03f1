import math

import pytest
import torch

from rlhf.algos.advantages import (
    ADVANTAGE_ESTIMATORS,
    ESTIMATOR_NEEDS_CRITIC,
    GROUP_ESTIMATORS,
    compute_advantages,
    discounted_returns,
    gae,
    token_rewards,
)


def _mask(lengths, T=4):
    return (torch.arange(T)[None] < torch.tensor(lengths)[:, None]).float()


def _broadcast(per_seq, mask):
    return torch.tensor(per_seq)[:, None] * mask


# Two groups of three samples, responses of different lengths.
GROUP_SCORES = torch.tensor([1.0, 0.0, 0.0, 3.0, 1.0, 2.0])
GROUP_MASK = _mask([3, 2, 4, 1, 4, 2])


def test_grpo_hand_values():
    # group 0 [1, 0, 0]: mean 1/3, deviations [2/3, -1/3, -1/3], unbiased var (4/9 + 1/9 + 1/9) / 2 = 1/3,
    #   std 0.577350 -> [1.154701, -0.577350, -0.577350]
    # group 1 [3, 1, 2]: mean 2, deviations [1, -1, 0], var (1 + 1 + 0) / 2 = 1, std 1 -> [1, -1, 0]
    # (eps = 0 for exact values; the default 1e-6 shifts them by ~2e-6)
    adv, ret = compute_advantages("grpo", scores=GROUP_SCORES, mask=GROUP_MASK, group_size=3, eps=0.0)
    expected = _broadcast([1.154701, -0.577350, -0.577350, 1.0, -1.0, 0.0], GROUP_MASK)
    torch.testing.assert_close(adv, expected, rtol=0, atol=2e-6)
    torch.testing.assert_close(ret, adv)


def test_dr_grpo_hand_values():
    # score - group mean: [1 - 1/3, -1/3, -1/3] and [3 - 2, 1 - 2, 2 - 2]
    adv, _ = compute_advantages("dr_grpo", scores=GROUP_SCORES, mask=GROUP_MASK, group_size=3)
    expected = _broadcast([2 / 3, -1 / 3, -1 / 3, 1.0, -1.0, 0.0], GROUP_MASK)
    torch.testing.assert_close(adv, expected)


def test_rloo_hand_values():
    # score - mean of the other two: 1 - (0 + 0)/2 = 1; 0 - (1 + 0)/2 = -0.5 (twice);
    # 3 - (1 + 2)/2 = 1.5; 1 - (3 + 2)/2 = -1.5; 2 - (3 + 1)/2 = 0
    adv, ret = compute_advantages("rloo", scores=GROUP_SCORES, mask=GROUP_MASK, group_size=3)
    expected = _broadcast([1.0, -0.5, -0.5, 1.5, -1.5, 0.0], GROUP_MASK)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, expected)


def test_rloo_with_kl_in_reward():
    # kl 0.2 on every token, kl_coef 0.5 -> reward -0.1 per response token, added as future-KL returns.
    kl = torch.full_like(GROUP_MASK, 0.2)
    adv, _ = compute_advantages("rloo", scores=GROUP_SCORES, mask=GROUP_MASK, kl=kl, kl_coef=0.5, group_size=3)
    # row 0 (length 3, A = 1), gamma 1: 1 - 0.3, 1 - 0.2, 1 - 0.1
    torch.testing.assert_close(adv[0], torch.tensor([0.7, 0.8, 0.9, 0.0]))
    # row 3 (length 1, A = 1.5): 1.5 - 0.1
    torch.testing.assert_close(adv[3], torch.tensor([1.4, 0.0, 0.0, 0.0]))
    # gamma 0.5 discounts only the KL rewards: t2 -0.1; t1 -0.1 + 0.5 * -0.1 = -0.15; t0 -0.1 + 0.5 * -0.15 = -0.175
    adv, _ = compute_advantages(
        "rloo", scores=GROUP_SCORES, mask=GROUP_MASK, kl=kl, kl_coef=0.5, group_size=3, gamma=0.5
    )
    torch.testing.assert_close(adv[0], torch.tensor([0.825, 0.85, 0.9, 0.0]))


PP_SCORES = torch.tensor([1.0, 0.0])
PP_MASK = _mask([3, 2])
PP_KL = torch.full((2, 4), 0.2)


def test_reinforce_pp_hand_values():
    # per-token reward -0.5 * 0.2 = -0.1, plus the score at the last token:
    # row 0: [-0.1, -0.1, 0.9, 0] -> returns (gamma 1) [0.7, 0.8, 0.9, 0]
    # row 1: [-0.1, -0.1, 0, 0]   -> returns [-0.2, -0.1, 0, 0]
    adv, ret = compute_advantages("reinforce_pp", scores=PP_SCORES, mask=PP_MASK, kl=PP_KL, kl_coef=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.7, 0.8, 0.9, 0.0], [-0.2, -0.1, 0.0, 0.0]]))
    # whitened over the 5 tokens: mean 2.1 / 5 = 0.42; deviations 0.28, 0.38, 0.48, -0.62, -0.52;
    # squares sum 0.0784 + 0.1444 + 0.2304 + 0.3844 + 0.2704 = 1.108; unbiased var 1.108 / 4 = 0.277,
    # std sqrt(0.277) = 0.5263079 -> 0.28 / std = 0.532008, 0.722011, 0.912014, -1.178018, -0.988015
    expected = torch.tensor([[0.532008, 0.722011, 0.912014, 0.0], [-1.178018, -0.988015, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=2e-6)


def test_reinforce_pp_discounted_returns():
    # gamma 0.5: row 0: t2 0.9; t1 -0.1 + 0.5 * 0.9 = 0.35; t0 -0.1 + 0.5 * 0.35 = 0.075
    #            row 1: t1 -0.1; t0 -0.1 + 0.5 * -0.1 = -0.15
    _, ret = compute_advantages("reinforce_pp", scores=PP_SCORES, mask=PP_MASK, kl=PP_KL, kl_coef=0.5, gamma=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.075, 0.35, 0.9, 0.0], [-0.15, -0.1, 0.0, 0.0]]))


def test_reinforce_pp_baseline_hand_values():
    # groups [1, 0] and [3, 5]: centered [0.5, -0.5] and [-1, 1]; no KL, gamma 1 -> broadcast returns.
    mask = _mask([3, 2, 1, 2])
    adv, ret = compute_advantages(
        "reinforce_pp_baseline", scores=torch.tensor([1.0, 0.0, 3.0, 5.0]), mask=mask, group_size=2
    )
    torch.testing.assert_close(ret, _broadcast([0.5, -0.5, -1.0, 1.0], mask))
    # 8 tokens: 0.5 x3, -0.5 x2, -1, 1 x2; mean 1.5 / 8 = 0.1875
    # deviations 0.3125 x3, -0.6875 x2, -1.1875, 0.8125 x2;
    # squares 3 * 0.09765625 + 2 * 0.47265625 + 1.41015625 + 2 * 0.66015625 = 3.96875
    # unbiased var 3.96875 / 7 = 0.566964, std 0.752970
    # -> 0.415023, -0.913051, -1.577088, 1.079060
    expected = _broadcast([0.415023, -0.913051, -1.577088, 1.079060], mask)
    torch.testing.assert_close(adv, expected, rtol=0, atol=2e-6)


def test_gae_hand_values():
    # row 0: values [0.5, 0.6, 0.7], score 1, gamma 1, lam 0.5; rewards [0, 0, 1]
    #   t2: delta = 1 + 0 - 0.7 = 0.3, A = 0.3
    #   t1: delta = 0 + 0.7 - 0.6 = 0.1, A = 0.1 + 0.5 * 0.3 = 0.25
    #   t0: delta = 0 + 0.6 - 0.5 = 0.1, A = 0.1 + 0.5 * 0.25 = 0.225
    #   returns = A + V = [0.725, 0.85, 1.0]
    # row 1: length 2, values [0.2, 0.4, pad 9.9], score -1
    #   t1: delta = -1 + 0 - 0.4 = -1.4, A = -1.4;  t0: delta = 0.4 - 0.2 = 0.2, A = 0.2 + 0.5 * -1.4 = -0.5
    #   returns = [-0.3, -1.0, 0]
    mask = _mask([3, 2], T=3)
    values = torch.tensor([[0.5, 0.6, 0.7], [0.2, 0.4, 9.9]])
    scores = torch.tensor([1.0, -1.0])
    raw = gae(token_rewards(scores, mask), values * mask, mask, gamma=1.0, lam=0.5)
    torch.testing.assert_close(raw, torch.tensor([[0.225, 0.25, 0.3], [-0.5, -1.4, 0.0]]))
    adv, ret = compute_advantages("gae", scores=scores, mask=mask, values=values, gamma=1.0, lam=0.5)
    torch.testing.assert_close(ret, torch.tensor([[0.725, 0.85, 1.0], [-0.3, -1.0, 0.0]]))
    # whitened: mean -1.125 / 5 = -0.225; deviations 0.45, 0.475, 0.525, -0.275, -1.175;
    # squares sum 2.16, unbiased var 0.54, std 0.734847
    expected = torch.tensor([[0.612372, 0.646393, 0.714435], [-0.374228, -1.598973, 0.0]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=2e-6)


def test_gae_with_gamma_and_kl_in_reward():
    # one token after another, gamma 0.9, lam 0.8, kl_coef 0.1, kl [1, 2]; values [0.5, 0.4]; score 1
    # rewards: t0 -0.1; t1 -0.2 + 1 = 0.8
    # t1: delta = 0.8 - 0.4 = 0.4, A = 0.4
    # t0: delta = -0.1 + 0.9 * 0.4 - 0.5 = -0.24, A = -0.24 + 0.9 * 0.8 * 0.4 = 0.048
    mask = torch.ones(1, 2)
    _, ret = compute_advantages(
        "gae",
        scores=torch.tensor([1.0]),
        mask=mask,
        kl=torch.tensor([[1.0, 2.0]]),
        kl_coef=0.1,
        values=torch.tensor([[0.5, 0.4]]),
        gamma=0.9,
        lam=0.8,
    )
    torch.testing.assert_close(ret, torch.tensor([[0.048 + 0.5, 0.4 + 0.4]]))


def test_masked_holes_are_skipped():
    # a mask hole (an env token inside the response) must behave as if the token were absent
    holed = torch.tensor([[1.0, 0.0, 1.0]])
    dense = torch.tensor([[1.0, 1.0]])
    rewards_h = torch.tensor([[0.3, 7.0, 1.0]])
    rewards_d = torch.tensor([[0.3, 1.0]])
    ret_h = discounted_returns(rewards_h, holed, gamma=0.9)
    ret_d = discounted_returns(rewards_d, dense, gamma=0.9)
    torch.testing.assert_close(ret_h[:, [0, 2]], ret_d)
    assert ret_h[0, 1] == 0
    # gamma 1 takes the cumulative-sum path: 0.3 + 1.0 = 1.3, hole 0, 1.0
    torch.testing.assert_close(discounted_returns(rewards_h, holed, gamma=1.0), torch.tensor([[1.3, 0.0, 1.0]]))
    values_h = torch.tensor([[0.5, 99.0, 0.7]])
    adv_h = gae(rewards_h, values_h, holed, gamma=0.9, lam=0.7)
    adv_d = gae(rewards_d, values_h[:, [0, 2]], dense, gamma=0.9, lam=0.7)
    torch.testing.assert_close(adv_h[:, [0, 2]], adv_d)


def test_discounted_returns_fast_path_matches_recursion():
    g = torch.Generator().manual_seed(3)
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    mask = (torch.rand(4, 7, generator=g) > 0.3).double()
    expected = torch.zeros_like(rewards)
    for b in range(4):
        running = 0.0
        for t in reversed(range(7)):
            if mask[b, t]:
                running = rewards[b, t].item() + running
                expected[b, t] = running
    torch.testing.assert_close(discounted_returns(rewards, mask, gamma=1.0), expected)
    # the loop at gamma just below 1 agrees with the fast path at 1
    torch.testing.assert_close(discounted_returns(rewards, mask, gamma=1 - 1e-12), expected)


def test_token_rewards_places_score_at_last_token():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    # score 1 at t = 1 of row 0; the empty row gets nothing
    torch.testing.assert_close(
        token_rewards(torch.tensor([1.0, 2.0]), mask), torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    )


@pytest.mark.parametrize("name", sorted(ADVANTAGE_ESTIMATORS))
def test_every_estimator_is_masked_detached_and_finite(name):
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, generator=g, requires_grad=True)
    values = torch.randn(6, 4, generator=g)
    kl = torch.rand(6, 4, generator=g)
    adv, ret = compute_advantages(
        name, scores=scores, mask=GROUP_MASK, kl=kl, kl_coef=0.1, values=values, group_size=3, gamma=0.99, lam=0.95
    )
    assert adv.shape == ret.shape == GROUP_MASK.shape
    assert not adv.requires_grad and not ret.requires_grad
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert (adv[GROUP_MASK == 0] == 0).all() and (ret[GROUP_MASK == 0] == 0).all()


def test_registries():
    assert sorted(ADVANTAGE_ESTIMATORS) == ["dr_grpo", "gae", "grpo", "reinforce_pp", "reinforce_pp_baseline", "rloo"]
    assert ESTIMATOR_NEEDS_CRITIC == {"gae"}
    assert GROUP_ESTIMATORS == {"reinforce_pp_baseline", "rloo", "grpo", "dr_grpo"}


@pytest.mark.parametrize("name", sorted(GROUP_ESTIMATORS))
def test_group_estimators_reject_bad_group_sizes(name):
    with pytest.raises(ValueError, match=r"group_size >= 2.*algo\.samples_per_prompt"):
        compute_advantages(name, scores=GROUP_SCORES, mask=GROUP_MASK, group_size=1)
    with pytest.raises(ValueError, match=r"batch of 6 samples.*groups of 4.*algo\.samples_per_prompt"):
        compute_advantages(name, scores=GROUP_SCORES, mask=GROUP_MASK, group_size=4)


def test_errors():
    with pytest.raises(
        ValueError,
        match=r"unknown advantage estimator 'gea'.*algo\.advantage.*valid names: dr_grpo, gae, grpo, "
        r"reinforce_pp, reinforce_pp_baseline, rloo",
    ):
        compute_advantages("gea", scores=GROUP_SCORES, mask=GROUP_MASK)
    with pytest.raises(ValueError, match="critic"):
        compute_advantages("gae", scores=GROUP_SCORES, mask=GROUP_MASK)
    with pytest.raises(ValueError, match="gamma"):
        compute_advantages("reinforce_pp", scores=GROUP_SCORES, mask=GROUP_MASK, gamma=1.5)
    with pytest.raises(ValueError, match="values has shape"):
        compute_advantages("gae", scores=GROUP_SCORES, mask=GROUP_MASK, values=torch.zeros(6, 3))
    with pytest.raises(ValueError, match=r"scores must be \[B\]"):
        compute_advantages("grpo", scores=GROUP_SCORES[:4], mask=GROUP_MASK, group_size=2)


def test_grpo_equal_scores_give_zero_advantage():
    # std 0: the eps keeps it finite and the advantage is exactly 0
    adv, _ = compute_advantages("grpo", scores=torch.ones(4), mask=_mask([1, 2, 3, 4]), group_size=2)
    assert (adv == 0).all() and not math.isnan(adv.sum().item())
