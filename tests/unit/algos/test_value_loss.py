import pytest
import torch

from rlhf.algos.value_loss import value_loss

OLD = torch.full((1, 3), 0.5)
RET = torch.ones(1, 3)
MASK = torch.ones(1, 3)


def test_clipped_value_loss_hand_values():
    # returns 1, old values 0.5, clip 0.2:
    # V = 1.0: unclipped 0; clipped V = 0.5 + 0.2 = 0.7 -> 0.09; max 0.09 -> 0.045, clipped branch: no gradient
    # V = 0.6: within the clip: 0.16 both -> 0.08; gradient V - R = -0.4
    # V = 0.0: unclipped 1.0; clipped V = 0.3 -> 0.49; max 1.0 -> 0.5; gradient V - R = -1
    values = torch.tensor([[1.0, 0.6, 0.0]], requires_grad=True)
    loss, stats = value_loss(values, OLD, RET, MASK, clip=0.2)
    # token mean (0.045 + 0.08 + 0.5) / 3 = 0.208333
    assert loss.item() == pytest.approx(0.208333, abs=1e-6)
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.0, -0.4, -1.0]]) / 3)
    assert stats["vf_clip_frac"].item() == pytest.approx(1 / 3)
    # (0 + 0.16 + 1) / 3
    assert stats["vf_error"].item() == pytest.approx(1.16 / 3)
    assert all(not v.requires_grad for v in stats.values())


def test_unclipped_value_loss():
    values = torch.tensor([[1.0, 0.6, 0.0]], requires_grad=True)
    # 0.5 * (0 + 0.16 + 1) / 3 = 0.193333
    loss, stats = value_loss(values, OLD, RET, MASK)
    assert loss.item() == pytest.approx(0.193333, abs=1e-6)
    assert stats["vf_clip_frac"].item() == 0.0


def test_mask_and_errors():
    values = torch.tensor([[1.0, 0.6, 100.0]])
    # third token masked out: clip 0.2 -> (0.045 + 0.08) / 2 = 0.0625
    loss, _ = value_loss(values, OLD, RET, torch.tensor([[1.0, 1.0, 0.0]]), clip=0.2)
    assert loss.item() == pytest.approx(0.0625)
    with pytest.raises(ValueError, match=r"value clip must be > 0.*algo\.value_clip"):
        value_loss(values, OLD, RET, MASK, clip=0.0)
    with pytest.raises(ValueError, match="returns has shape"):
        value_loss(values, OLD, RET[:, :2], MASK)
