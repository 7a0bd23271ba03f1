import math

import pytest
import torch

from rlhf.algos.aggregate import aggregate_loss
from rlhf.algos.policy_loss import entropy_bonus, kl_loss, ppo_policy_loss


def _one(ratio, adv, **kw):
    """PPO loss of a single token with the given ratio and advantage; returns (loss, d loss / d logp, stats)."""
    old = torch.tensor([[-1.0]])
    logp = (old + math.log(ratio)).requires_grad_()
    loss, stats = ppo_policy_loss(logp, old, torch.tensor([[adv]]), torch.ones(1, 1), **kw)
    loss.backward()
    return loss.item(), logp.grad.item(), stats


def test_positive_advantage_above_clip_high_is_clipped():
    # A = 1, ratio 1.5 > 1.2: max(-1.5, -1.2) = -1.2, the clipped (constant) branch: no gradient
    loss, grad, stats = _one(1.5, 1.0)
    assert loss == pytest.approx(-1.2) and grad == 0.0 and stats["clip_frac"].item() == 1.0


def test_negative_advantage_below_clip_low_is_clipped():
    # A = -1, ratio 0.5 < 0.8: max(0.5, 0.8) = 0.8, clipped: no gradient
    loss, grad, stats = _one(0.5, -1.0)
    assert loss == pytest.approx(0.8) and grad == 0.0 and stats["clip_frac"].item() == 1.0


def test_unclipped_side_keeps_gradient():
    # A = 1, ratio 0.5: max(-0.5, -0.8) = -0.5 unclipped; d(-A rho)/d logp = -A rho = -0.5
    loss, grad, stats = _one(0.5, 1.0)
    assert loss == pytest.approx(-0.5) and grad == pytest.approx(-0.5) and stats["clip_frac"].item() == 0.0
    # A = -1, ratio 1.5: max(1.5, 1.2) = 1.5 unclipped (PPO is pessimistic); gradient -A rho = 1.5
    loss, grad, _ = _one(1.5, -1.0)
    assert loss == pytest.approx(1.5) and grad == pytest.approx(1.5)


def test_clip_higher_is_asymmetric():
    # A = 1, ratio 1.25: inside [0.8, 1.28] with clip_high 0.28 -> -1.25; clipped to -1.2 with 0.2
    assert _one(1.25, 1.0, clip_high=0.28)[0] == pytest.approx(-1.25)
    assert _one(1.25, 1.0)[0] == pytest.approx(-1.2)
    # the low side is unchanged: A = -1, ratio 0.75 -> max(0.75, 0.8) = 0.8
    assert _one(0.75, -1.0, clip_high=0.28)[0] == pytest.approx(0.8)


def test_dual_clip():
    # A = -1, ratio 5: max(5, 1.2) = 5; dual clip 3 bounds it to -A * 3 = 3 (no gradient)
    assert _one(5.0, -1.0)[0] == pytest.approx(5.0)
    loss, grad, stats = _one(5.0, -1.0, dual_clip=3.0)
    assert loss == pytest.approx(3.0) and grad == 0.0 and stats["dual_clip_frac"].item() == 1.0
    # below the bound it does nothing: A = -1, ratio 2 -> 2 < 3
    assert _one(2.0, -1.0, dual_clip=3.0)[0] == pytest.approx(2.0)
    # positive advantages are never dual-clipped: A = 1, ratio 5 -> -1.2 as without it
    loss, _, stats = _one(5.0, 1.0, dual_clip=3.0)
    assert loss == pytest.approx(-1.2) and stats["dual_clip_frac"].item() == 0.0


@pytest.mark.parametrize("bad", [1.0, 0.5, -2.0])
def test_dual_clip_must_exceed_one(bad):
    with pytest.raises(ValueError, match=r"dual_clip must be > 1.*algo\.dual_clip"):
        _one(1.0, 1.0, dual_clip=bad)


def test_clip_range_errors():
    with pytest.raises(ValueError, match="clip_low"):
        _one(1.0, 1.0, clip_low=1.0)
    with pytest.raises(ValueError, match="clip_high"):
        _one(1.0, 1.0, clip_high=-0.1)
    with pytest.raises(ValueError, match="advantages has shape"):
        ppo_policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 2), torch.ones(2, 3))


def test_stats_are_masked_and_without_gradient():
    # ratios 1.5 and 0.5 on real tokens, 100 on a padded one that must not count
    old = torch.zeros(1, 3)
    logp = torch.tensor([[math.log(1.5), math.log(0.5), math.log(100.0)]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo_policy_loss(logp, old, torch.ones(1, 3), mask)
    assert all(not v.requires_grad for v in stats.values())
    assert stats["ratio_max"].item() == pytest.approx(1.5)
    assert stats["ratio_min"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    # A = 1: token 0 clipped (1.5 > 1.2), token 1 not (max(-0.5, -0.8) = -0.5) -> 1/2
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    # k3 of KL(old || new) with rho = new/old: rho - 1 - ln rho: 0.5 - 0.405465 = 0.094535,
    # -0.5 + 0.693147 = 0.193147; mean 0.143841
    assert stats["approx_kl"].item() == pytest.approx(0.143841, abs=1e-6)
    # loss: (-1.2 + -0.5) / 2 = -0.85
    assert loss.item() == pytest.approx(-0.85)


@pytest.mark.parametrize("agg", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"])
def test_ppo_micro_batches_give_full_batch_gradient(agg):
    g = torch.Generator().manual_seed(0)
    B, T = 5, 6
    mask = (torch.arange(T)[None] < torch.tensor([6, 2, 4, 1, 5])[:, None]).float()
    old = -torch.rand(B, T, generator=g) * 3
    logp = (old + 0.3 * torch.randn(B, T, generator=g)).requires_grad_()
    adv = torch.randn(B, T, generator=g)
    kw = dict(clip_low=0.2, clip_high=0.28, dual_clip=3.0, agg=agg)
    full, _ = ppo_policy_loss(logp, old, adv, mask, **kw)
    (full_grad,) = torch.autograd.grad(full, logp)
    normalizers = dict(num_tokens=mask.sum(), num_seqs=B, max_len=T)
    total = sum(
        ppo_policy_loss(logp[lo:hi], old[lo:hi], adv[lo:hi], mask[lo:hi], **kw, **normalizers)[0]
        for lo, hi in [(0, 2), (2, 3), (3, 5)]
    )
    (grad,) = torch.autograd.grad(total, logp)
    torch.testing.assert_close(total, full)
    assert torch.allclose(grad, full_grad, atol=1e-7)


def test_kl_loss_hand_values_and_no_gradient_to_reference():
    ref = torch.tensor([[-2.0, -1.0]], requires_grad=True)
    logp = torch.tensor([[-1.0, -2.0]], requires_grad=True)  # d = logp - ref = [1, -1]
    mask = torch.ones(1, 2)
    # k1: (1 - 1) / 2 = 0; k3: (e^-1 + 1 - 1 + e^1 - 1 - 1) / 2 = (0.367879 + 0.718282) / 2 = 0.543081
    assert kl_loss(logp, ref, mask, kind="k1").item() == pytest.approx(0.0)
    loss = kl_loss(logp, ref, mask, kind="k3")
    assert loss.item() == pytest.approx(0.543081, abs=1e-6)
    loss.backward()
    assert ref.grad is None and logp.grad is not None
    with pytest.raises(ValueError, match="algo.kl_estimator"):
        kl_loss(logp, ref, mask, kind="kl")


def test_entropy_bonus_sign_and_value():
    entropy = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    # -0.01 * (1 + 3 + 4) / 3 = -0.026667: minimizing the loss raises entropy
    assert entropy_bonus(entropy, mask, coef=0.01).item() == pytest.approx(-0.026667, abs=1e-6)
    # seq_mean_token_mean: -0.01 * (1 + 3.5) / 2 = -0.0225
    bonus = entropy_bonus(entropy, mask, coef=0.01, agg="seq_mean_token_mean")
    assert bonus.item() == pytest.approx(-0.0225)
    assert bonus.item() == pytest.approx(-0.01 * aggregate_loss(entropy, mask, "seq_mean_token_mean").item())
