"""Knowledge distillation from a teacher's logits (Hinton et al. 2015), token level.

    loss = kd_coef * tau^2 * token_mean(KL(p_teacher || p_student)) + (1 - kd_coef) * token_mean(NLL)

with p = softmax(logits / tau). Forward KL makes the student cover every mode of the teacher, which is the
classic choice for word-level distillation (Kim & Rush 2016). The tau^2 factor keeps the KD gradient's size
independent of the temperature (its gradient carries 1/tau^2 from the two softened distributions), so
kd_coef means the same thing at every tau. The NLL term is on the data labels at temperature 1.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable

from rlhf.algos.aggregate import Normalizer, aggregate_loss
from rlhf.algos.logprobs import compute_dtype, row_chunks, rows_per_chunk, scaled_logits, token_logprobs


def _kl_terms(log_t: torch.Tensor, log_s: torch.Tensor) -> torch.Tensor:
    p_t = log_t.exp()
    # Where the teacher gives probability 0 (a -inf logit), the term is 0, not 0 * inf = NaN.
    return torch.where(p_t > 0, p_t * (log_t - log_s), torch.zeros_like(p_t))


class _ForwardKL(torch.autograd.Function):
    """KL(softmax(t/tau) || softmax(s/tau)) per row, chunked; gradient w.r.t. the student only."""

    @staticmethod
    def forward(ctx, student, teacher, temperature, rows):
        B, T, _ = student.shape
        dtype = compute_dtype(student.dtype)
        out = torch.empty(B, T, dtype=dtype, device=student.device)
        for bs, ts in row_chunks(B, T, rows):
            log_s = torch.log_softmax(scaled_logits(student[bs, ts], dtype, temperature), dim=-1)
            log_t = torch.log_softmax(scaled_logits(teacher[bs, ts], dtype, temperature), dim=-1)
            out[bs, ts] = _kl_terms(log_t, log_s).sum(-1)
        ctx.save_for_backward(student, teacher)
        ctx.temperature, ctx.rows, ctx.dtype = temperature, rows, dtype
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        student, teacher = ctx.saved_tensors
        temperature = ctx.temperature
        B, T, _ = student.shape
        grad = torch.empty_like(student)
        for bs, ts in row_chunks(B, T, ctx.rows):
            p_s = torch.softmax(scaled_logits(student[bs, ts], ctx.dtype, temperature), dim=-1)
            p_t = torch.softmax(scaled_logits(teacher[bs, ts], ctx.dtype, temperature), dim=-1)
            # d KL / d s_j = (p_s_j - p_t_j) / tau
            chunk_grad = (p_s - p_t).mul_(grad_out[bs, ts].to(ctx.dtype).unsqueeze(-1) / temperature)
            grad[bs, ts] = chunk_grad
        return grad, None, None, None


def forward_kl_per_token(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    chunk_rows: Optional[int] = None,
) -> torch.Tensor:
    """KL(p_teacher || p_student) at each position, p = softmax(logits / temperature).

    Args:
        student_logits: [B, T, V], any float dtype, differentiable.
        teacher_logits: [B, T, V], same vocabulary; treated as a constant (no gradient).
        temperature: tau > 0.
        chunk_rows: rows per chunk (memory bound), None for about 256 MiB of fp32 per chunk and tensor.

    Returns:
        [B, T] fp32 KL in nats (not multiplied by tau^2).
    """
    if student_logits.dim() != 3 or student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"student and teacher logits must both be [B, T, V] with the same vocabulary, got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}; slice both to the shared vocabulary "
            f"(padded vocabularies differ in their tail)"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    rows = rows_per_chunk(student_logits.shape[-1], chunk_rows)
    return _ForwardKL.apply(student_logits, teacher_logits.detach(), float(temperature), rows)


def distill_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: Optional[torch.Tensor],
    mask: torch.Tensor,
    *,
    kd_coef: float = 0.5,
    temperature: float = 1.0,
    num_tokens: Optional[Normalizer] = None,
    chunk_rows: Optional[int] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """KD loss mixed with the data NLL (see the module docstring for the formula).

    Args:
        student_logits, teacher_logits: [B, T, V], aligned with labels (shifted, see `rlhf.algos.sft`).
        labels: [B, T] data labels; may be None when kd_coef == 1 (pure distillation).
        mask: [B, T] float or bool, 1 = token that counts.
        kd_coef: weight of the KD term in [0, 1]; 1 - kd_coef weighs the NLL.
        temperature: tau > 0 for the KD term.
        num_tokens: token_mean divisor; pass the step's global count for exact accumulation.

    Returns:
        (loss 0-dim, stats {"kd_loss", "nll"} detached 0-dim, each term before weighting; a skipped term is 0).
    """
    if not 0.0 <= kd_coef <= 1.0:
        raise ValueError(f"kd_coef must be in [0, 1], got {kd_coef}")
    zero = student_logits.new_zeros((), dtype=compute_dtype(student_logits.dtype))
    kd = nll = zero
    if kd_coef > 0:
        kl = forward_kl_per_token(student_logits, teacher_logits, temperature, chunk_rows)
        kd = aggregate_loss(kl, mask, "token_mean", num_tokens=num_tokens)
    if kd_coef < 1:
        if labels is None:
            raise ValueError(f"labels are needed for the NLL term when kd_coef < 1 (got kd_coef={kd_coef})")
        safe_labels = torch.where(mask.bool(), labels, torch.zeros_like(labels))
        nll_tok = -token_logprobs(student_logits, safe_labels, chunk_rows=chunk_rows)
        nll = aggregate_loss(nll_tok, mask, "token_mean", num_tokens=num_tokens)
    loss = kd_coef * temperature**2 * kd + (1.0 - kd_coef) * nll
    return loss, {"kd_loss": kd.detach(), "nll": nll.detach()}
