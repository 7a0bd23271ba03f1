import pytest
import torch

from rlhf.algos.reward import pairwise_accuracy, pairwise_loss


def test_pairwise_loss_hand_values():
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([0.0, 0.0])
    loss = pairwise_loss(chosen, rejected)
    # -log sigmoid(2) = ln(1 + e^-2) = 0.126928; -log sigmoid(0) = ln 2 = 0.693147
    torch.testing.assert_close(loss, torch.tensor([0.126928, 0.693147]), rtol=0, atol=1e-6)
    loss.sum().backward()
    # d/dc -log sigmoid(c - r) = -sigmoid(-(c - r)): -sigmoid(-2) = -0.119203, -sigmoid(0) = -0.5
    torch.testing.assert_close(chosen.grad, torch.tensor([-0.119203, -0.5]), rtol=0, atol=1e-6)


def test_pairwise_loss_margin():
    # Llama 2 margin 1 on the first pair: -log sigmoid(2 - 0 - 1) = ln(1 + e^-1) = 0.313262
    loss = pairwise_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]), margin=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.313262, 0.693147]), rtol=0, atol=1e-6)


def test_pairwise_accuracy_counts_ties_as_wrong():
    # right (2 > 0), tie (0 = 0), wrong (1 < 3): 1/3
    acc = pairwise_accuracy(torch.tensor([2.0, 0.0, 1.0]), torch.tensor([0.0, 0.0, 3.0]))
    assert acc.item() == pytest.approx(1 / 3)


def test_shape_errors():
    with pytest.raises(ValueError, match=r"\[B\]"):
        pairwise_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match=r"\[B\]"):
        pairwise_accuracy(torch.zeros(3, 1), torch.zeros(3, 1))
