import math

import pytest
import torch
import torch.nn.functional as F

from rlhf.algos.distill import distill_loss, forward_kl_per_token

# teacher [0, ln 3] -> p_t = [1/4, 3/4]; student [0, 0] -> p_s = [1/2, 1/2]
# KL(p_t || p_s) = 0.25 ln(0.25 / 0.5) + 0.75 ln(0.75 / 0.5) = -0.173287 + 0.304099 = 0.130812
TEACHER = torch.tensor([[[0.0, math.log(3.0)]]])
STUDENT = torch.tensor([[[0.0, 0.0]]])
KL = 0.130812


def test_forward_kl_hand_value():
    assert forward_kl_per_token(STUDENT, TEACHER).item() == pytest.approx(KL, abs=1e-6)
    # temperature 2 on teacher [0, 2 ln 3] gives the same p_t, and the student stays uniform
    assert forward_kl_per_token(STUDENT, 2 * TEACHER, temperature=2.0).item() == pytest.approx(KL, abs=1e-6)


def test_distill_loss_hand_values():
    labels = torch.tensor([[1]])
    mask = torch.tensor([[1]])
    # kd_coef 0.5, tau 1: 0.5 * 0.130812 + 0.5 * ln 2 (student NLL of label 1) = 0.065406 + 0.346574 = 0.411980
    loss, stats = distill_loss(STUDENT, TEACHER, labels, mask, kd_coef=0.5)
    assert loss.item() == pytest.approx(0.411980, abs=1e-6)
    assert stats["kd_loss"].item() == pytest.approx(KL, abs=1e-6)
    assert stats["nll"].item() == pytest.approx(math.log(2.0), abs=1e-6)
    # pure KD at tau 2 (teacher scaled as above): tau^2 * KL = 4 * 0.130812 = 0.523248; labels not needed
    loss, _ = distill_loss(STUDENT, 2 * TEACHER, None, mask, kd_coef=1.0, temperature=2.0)
    assert loss.item() == pytest.approx(0.523248, abs=1e-5)


def test_forward_kl_matches_kl_div_and_gradient():
    g = torch.Generator().manual_seed(0)
    student = torch.randn(3, 4, 9, generator=g)
    teacher = torch.randn(3, 4, 9, generator=g, requires_grad=True)
    a = student.clone().requires_grad_()
    ours = forward_kl_per_token(a, teacher, temperature=1.5, chunk_rows=5)
    b = student.clone().requires_grad_()
    ref = F.kl_div(
        torch.log_softmax(b / 1.5, -1),
        torch.log_softmax(teacher.detach() / 1.5, -1),
        log_target=True,
        reduction="none",
    ).sum(-1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    weight = torch.randn(3, 4, generator=g)
    (ours * weight).sum().backward()
    (ref * weight).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert teacher.grad is None  # the teacher is a constant


def test_forward_kl_gradcheck_and_bf16():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(2, 3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: forward_kl_per_token(s, teacher, 0.8, chunk_rows=2), (student,))
    low = forward_kl_per_token(student.detach().to(torch.bfloat16), teacher.to(torch.bfloat16))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, forward_kl_per_token(student.detach(), teacher).float(), rtol=0, atol=0.05)


def test_teacher_zero_probability_gives_no_nan():
    # teacher [0, -inf] -> p_t = [1, 0]; student uniform: KL = 1 * ln(1 / 0.5) = ln 2
    teacher = torch.tensor([[[0.0, -math.inf]]])
    assert forward_kl_per_token(STUDENT, teacher).item() == pytest.approx(math.log(2.0), abs=1e-6)


def test_distill_errors():
    mask = torch.tensor([[1]])
    with pytest.raises(ValueError, match="vocabulary"):
        forward_kl_per_token(STUDENT, torch.zeros(1, 1, 3))
    with pytest.raises(ValueError, match="kd_coef"):
        distill_loss(STUDENT, TEACHER, None, mask, kd_coef=1.5)
    with pytest.raises(ValueError, match="labels"):
        distill_loss(STUDENT, TEACHER, None, mask, kd_coef=0.5)
