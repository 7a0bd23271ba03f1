"""Truncated importance sampling on the rollout/trainer log-prob ratio: weights, stats and the weighted
surrogates, by hand."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algos.policy_loss import gspo_policy_loss, ppo_policy_loss, tis_weights


def test_weights_are_the_ratio_truncated_at_the_cap():
    # old - rollout = [ln 0.5, 0, ln 3, ln 1.5 (masked out)] -> ratios [0.5, 1, 3, 1.5]; cap 2 -> [0.5, 1, 2, 1.5].
    old = torch.tensor([[math.log(0.25), -1.0, math.log(0.6), math.log(0.3)]])
    rollout = torch.tensor([[math.log(0.5), -1.0, math.log(0.2), math.log(0.2)]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    w, stats = tis_weights(old, rollout, mask, cap=2.0)
    assert w.tolist()[0] == pytest.approx([0.5, 1.0, 2.0, 1.5], rel=1e-6)
    # Masked means over the 3 real tokens: ratio (0.5 + 1 + 3) / 3 = 1.5; 1 of 3 above the cap.
    assert stats["tis_ratio_mean"].item() == pytest.approx(1.5, rel=1e-6)
    assert stats["tis_clip_frac"].item() == pytest.approx(1 / 3, rel=1e-6)
    assert not w.requires_grad


def test_equal_log_probs_give_weight_one_exactly():
    lp = torch.randn(3, 5)
    w, stats = tis_weights(lp, lp.clone(), torch.ones(3, 5), cap=2.0)
    assert torch.equal(w, torch.ones(3, 5)) and stats["tis_clip_frac"].item() == 0.0


def test_a_huge_mismatch_stays_finite_and_a_cap_below_one_is_refused():
    w, _ = tis_weights(torch.tensor([[0.0]]), torch.tensor([[-1e4]]), torch.ones(1, 1), cap=5.0)
    assert w.item() == 5.0
    with pytest.raises(ValueError, match="algo.tis_cap=0.5 must be >= 1"):
        tis_weights(torch.zeros(1, 1), torch.zeros(1, 1), torch.ones(1, 1), cap=0.5)


def test_ppo_loss_is_weighted_per_token():
    # Two tokens, ratio 1 (logp = old), advantages [1, -2]: per-token loss -A rho = [-1, 2].
    # Weights [0.5, 2] -> [-0.5, 4]; token mean over 2 tokens = 1.75 (unweighted: 0.5).
    logp = torch.zeros(1, 2, requires_grad=True)
    old = torch.zeros(1, 2)
    adv = torch.tensor([[1.0, -2.0]])
    mask = torch.ones(1, 2)
    loss, _ = ppo_policy_loss(logp, old, adv, mask, weight=torch.tensor([[0.5, 2.0]]))
    assert loss.item() == pytest.approx(1.75)
    loss.backward()
    # d/dlogp_t of w_t * (-A_t rho_t) / 2 at rho = 1: -w_t A_t / 2 = [-0.25, 2].
    assert logp.grad[0].tolist() == pytest.approx([-0.25, 2.0])
    unweighted, _ = ppo_policy_loss(logp.detach(), old, adv, mask)
    assert unweighted.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="weight has shape"):
        ppo_policy_loss(logp, old, adv, mask, weight=torch.ones(2, 1))


def test_gspo_loss_is_weighted_per_token():
    # One sequence, s = 1, advantage 1 on both tokens: per-token loss -1; weights [1, 3] -> [-1, -3]; the
    # seq_mean_token_mean of one sequence is the token mean -2.
    logp = torch.zeros(1, 2)
    loss, _ = gspo_policy_loss(logp, logp, torch.ones(1, 2), torch.ones(1, 2), weight=torch.tensor([[1.0, 3.0]]))
    assert loss.item() == pytest.approx(-2.0)
