import pytest
import torch

from rlhf.algos.preference import DPO_LOSS_TYPES, dpo_loss, kto_kl_ref_point, kto_loss, sequence_logps

# One pair: policy chosen -1, rejected -3; reference -2 for both.
# h = (-1 - -2) - (-3 - -2) = 1 - (-1) = 2
PC, PR, RC, RR = (torch.tensor([v]) for v in (-1.0, -3.0, -2.0, -2.0))


def test_dpo_sigmoid_hand_value_and_rewards():
    # beta h = 0.5 * 2 = 1: -log sigmoid(1) = ln(1 + e^-1) = 0.313262
    loss, chosen_r, rejected_r = dpo_loss(PC, PR, RC, RR, beta=0.5)
    assert loss.item() == pytest.approx(0.313262, abs=1e-6)
    # rewards beta (log pi - log ref): 0.5 * 1 = 0.5 and 0.5 * -1 = -0.5
    assert chosen_r.item() == pytest.approx(0.5) and rejected_r.item() == pytest.approx(-0.5)
    assert not chosen_r.requires_grad


def test_dpo_gradient_pushes_chosen_up():
    pc = PC.clone().requires_grad_()
    dpo_loss(pc, PR, RC, RR, beta=0.5)[0].sum().backward()
    # d/d pc -log sigmoid(beta h) = -beta sigmoid(-beta h) = -0.5 * sigmoid(-1) = -0.5 * 0.268941 = -0.134471
    assert pc.grad.item() == pytest.approx(-0.134471, abs=1e-6)


def test_cdpo_label_smoothing_hand_value():
    # -(0.9) log sigmoid(1) - 0.1 log sigmoid(-1) = 0.9 * 0.313262 + 0.1 * 1.313262 = 0.281936 + 0.131326
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=0.5, label_smoothing=0.1)
    assert loss.item() == pytest.approx(0.413262, abs=1e-6)


@pytest.mark.parametrize("beta,expected", [(0.5, 1.0), (0.25, 0.0), (1.0, 2.25)])
def test_ipo_hand_values(beta, expected):
    # (h - 1 / (2 beta))^2 with h = 2: beta 0.5 -> (2 - 1)^2 = 1; 0.25 -> (2 - 2)^2 = 0; 1 -> (2 - 0.5)^2 = 2.25
    loss, _, _ = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo")
    assert loss.item() == pytest.approx(expected)


def test_dpo_errors():
    with pytest.raises(ValueError, match=r"unknown DPO loss type 'hinge'.*algo\.loss.*valid names: ipo, sigmoid"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="hinge")
    with pytest.raises(ValueError, match="sigmoid"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="beta"):
        dpo_loss(PC, PR, RC, RR, beta=0.0)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="ref_rejected_logps"):
        dpo_loss(PC, PR, RC, torch.zeros(2), beta=0.1)
    assert sorted(DPO_LOSS_TYPES) == ["ipo", "sigmoid"]


def test_sequence_logps_sum_and_mean():
    tok = torch.tensor([[-1.0, -2.0, -3.0]])
    mask = torch.tensor([[1, 1, 0]])
    # sum -1 - 2 = -3; mean -3 / 2 = -1.5
    assert sequence_logps(tok, mask).item() == pytest.approx(-3.0)
    assert sequence_logps(tok, mask, average=True).item() == pytest.approx(-1.5)


POLICY = torch.tensor([-1.0, -1.0])
REF = torch.tensor([-2.0, -2.0])  # log-ratio r = 1 for both samples
DESIRABLE = torch.tensor([True, False])


def test_kto_hand_values():
    # beta 2, z0 0.5:
    # desirable:   1 - sigmoid(2 (1 - 0.5)) = 1 - sigmoid(1) = 1 - 0.731059 = 0.268941 (weight 1)
    # undesirable: 1.5 (1 - sigmoid(2 (0.5 - 1))) = 1.5 (1 - sigmoid(-1)) = 1.5 * 0.731059 = 1.096588
    loss, rewards = kto_loss(POLICY, REF, DESIRABLE, 0.5, beta=2.0, undesirable_weight=1.5)
    torch.testing.assert_close(loss, torch.tensor([0.268941, 1.096588]), rtol=0, atol=1e-6)
    torch.testing.assert_close(rewards, torch.tensor([2.0, 2.0]))  # beta r


def test_kto_reference_point_is_clamped_and_detached():
    # z0 = max(0, -3) = 0: desirable loss 1 - sigmoid(2 * 1) = 1 - 0.880797 = 0.119203
    loss, _ = kto_loss(POLICY, REF, DESIRABLE, -3.0, beta=2.0)
    assert loss[0].item() == pytest.approx(0.119203, abs=1e-6)
    z0 = torch.tensor(0.5, requires_grad=True)
    policy = POLICY.clone().requires_grad_()
    kto_loss(policy, REF, DESIRABLE, z0, beta=2.0)[0].sum().backward()
    assert z0.grad is None and policy.grad is not None


def test_kto_kl_ref_point_and_errors():
    # mean([-1 - -2, -3 - -2]) = mean([1, -1]) = 0
    assert kto_kl_ref_point(torch.tensor([-1.0, -3.0]), torch.tensor([-2.0, -2.0])).item() == 0.0
    with pytest.raises(ValueError, match=r"\[B\]"):
        kto_loss(POLICY, REF, DESIRABLE[:1], 0.0, beta=0.1)
    with pytest.raises(ValueError, match="beta"):
        kto_loss(POLICY, REF, DESIRABLE, 0.0, beta=-1.0)
