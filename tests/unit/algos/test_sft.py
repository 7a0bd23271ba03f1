import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.algos.sft import sft_loss, shift_for_causal_lm


def test_shift_for_causal_lm_hand_example():
    ids = torch.tensor([[5, 6, 7, 8]])
    loss_mask = torch.tensor([[0, 0, 1, 1]])  # prompt 5 6, response 7 8
    labels, mask = shift_for_causal_lm(ids, loss_mask)
    # position t predicts token t+1: 5->6 (prompt, masked), 6->7, 7->8, 8->pad (masked)
    assert labels.tolist() == [[6, 7, 8, 0]]
    assert mask.tolist() == [[0, 1, 1, 0]]
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        shift_for_causal_lm(ids, loss_mask[:, :3])


def test_sft_loss_hand_value():
    # position 0: logits [0, ln 3], label 1 -> p = 3/4, nll = ln(4/3) = 0.287682
    # position 1: logits [0, 0], label 0 -> nll = ln 2 = 0.693147
    # position 2: masked out, label -100 (HF ignore index) must not matter
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[1, 0, -100]])
    mask = torch.tensor([[1, 1, 0]])
    # (0.287682 + 0.693147) / 2 = 0.490415
    assert sft_loss(logits, labels, mask).item() == pytest.approx(0.490415, abs=1e-6)
    # global normalizer: 0.980829 / 4 = 0.245207
    assert sft_loss(logits, labels, mask, num_tokens=4).item() == pytest.approx(0.245207, abs=1e-6)


def test_sft_loss_matches_cross_entropy_after_shift():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 11, (3, 6), generator=g)
    loss_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [0, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 0]])
    logits = torch.randn(3, 6, 11, generator=g)
    labels, mask = shift_for_causal_lm(ids, loss_mask)
    ours = sft_loss(logits, labels, mask)
    target = torch.where(loss_mask[:, 1:].bool(), ids[:, 1:], torch.full_like(ids[:, 1:], -100))
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), target.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(ours, ref)


def test_sft_micro_batches_with_global_count_sum_to_full():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 5, 7, generator=g, requires_grad=True)
    labels = torch.randint(0, 7, (4, 5), generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
    full = sft_loss(logits, labels, mask)
    parts = sft_loss(logits[:1], labels[:1], mask[:1], num_tokens=mask.sum()) + sft_loss(
        logits[1:], labels[1:], mask[1:], num_tokens=mask.sum()
    )
    torch.testing.assert_close(parts, full)
    (g_full,) = torch.autograd.grad(full, logits)
    (g_parts,) = torch.autograd.grad(parts, logits)
    assert torch.allclose(g_full, g_parts, atol=1e-7)
