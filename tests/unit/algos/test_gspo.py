"""GSPO's sequence-level surrogate: hand-derived values, and the gradient of the paper's sequence form."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algos.policy_loss import POLICY_LOSSES, gspo_policy_loss


def _one_sequence(advantage: float):
    # Token log-ratios [ln 2, 0] -> mean ln 2 / 2 -> s = exp(ln 2 / 2) = sqrt(2) = 1.41421.
    logp = torch.tensor([[math.log(0.5), math.log(0.25)]], requires_grad=True)
    old = torch.tensor([[math.log(0.25), math.log(0.25)]])
    adv = torch.full((1, 2), advantage)
    return logp, old, adv, torch.ones(1, 2)


def test_positive_advantage_is_clipped_at_one_plus_eps():
    logp, old, adv, mask = _one_sequence(1.0)
    loss, stats = gspo_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    # max(-1 * 1.41421, -1 * clip(1.41421, 0.8, 1.2)) = max(-1.41421, -1.2) = -1.2, a constant: no gradient.
    assert loss.item() == pytest.approx(-1.2)
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0
    assert stats["seq_clip_frac"].item() == 1.0 and stats["ratio_mean"].item() == pytest.approx(math.sqrt(2))


def test_negative_advantage_keeps_the_unclipped_branch_and_spreads_the_gradient_evenly():
    logp, old, adv, mask = _one_sequence(-1.0)
    loss, stats = gspo_policy_loss(logp, old, adv, mask, clip_low=0.2, clip_high=0.2)
    # max(1.41421, 1.2) = 1.41421; d/dlogp_t of (1/2) sum_t s_i,t = (1/2) * s = 0.70711 for both tokens, whatever
    # each token's own ratio was (token ratios 2 and 1): the sequence moves as a whole.
    assert loss.item() == pytest.approx(math.sqrt(2), rel=1e-6)
    loss.backward()
    assert logp.grad[0].tolist() == pytest.approx([math.sqrt(2) / 2, math.sqrt(2) / 2], rel=1e-6)
    assert stats["clip_frac"].item() == 0.0


def test_gradient_equals_the_sequence_form_of_the_paper():
    # J = mean_i min(s_i A_i, clip(s_i) A_i) with s_i = exp(mean_t log-ratio), autograd through s_i directly.
    torch.manual_seed(0)
    B, T = 5, 7
    mask = (torch.rand(B, T) > 0.3).float()
    mask[:, 0] = 1
    old = torch.randn(B, T) * 0.1 - 2
    logp = (old + torch.randn(B, T) * 0.05).requires_grad_(True)
    a = torch.randn(B)
    loss, _ = gspo_policy_loss(logp, old, a[:, None].expand(B, T), mask, clip_low=0.02, clip_high=0.03)
    (g,) = torch.autograd.grad(loss, logp)

    logp2 = logp.detach().clone().requires_grad_(True)
    s = torch.exp(((logp2 - old) * mask).sum(-1) / mask.sum(-1))
    ref = torch.maximum(-a * s, -a * s.clamp(1 - 0.02, 1 + 0.03)).mean()
    (g2,) = torch.autograd.grad(ref, logp2)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g, g2, atol=1e-7), (g - g2).abs().max()
    assert g[mask == 0].abs().max().item() == 0.0


def test_unchanged_policy_gives_ratio_one_and_the_plain_policy_gradient():
    logp = torch.randn(3, 4).requires_grad_(True)
    adv = torch.tensor([1.0, -2.0, 0.5])[:, None].expand(3, 4)
    loss, stats = POLICY_LOSSES["gspo"](logp, logp.detach(), adv, torch.ones(3, 4))
    assert stats["ratio_min"].item() == pytest.approx(1.0) and stats["ratio_max"].item() == pytest.approx(1.0)
    # -mean_i A_i = -(1 - 2 + 0.5) / 3 = 0.16667
    assert loss.item() == pytest.approx(0.5 / 3, rel=1e-6)


def test_dual_clip_is_refused():
    logp, old, adv, mask = _one_sequence(1.0)
    with pytest.raises(ValueError, match="dual_clip"):
        gspo_policy_loss(logp, old, adv, mask, dual_clip=3.0)
