"""Reduce a per-token loss [B, T] to the scalar that is backpropagated, by named mode.

Modes (`AGG_MODES`, config key `algo.loss_agg`), with m the mask, L_s = sum_t m[s,t] * loss[s,t] and
n_s = sum_t m[s,t]:

    token_mean               sum_s L_s / num_tokens                        (every token weighs the same; DAPO)
    seq_mean_token_mean      sum_s (L_s / n_s) / num_seqs                  (GRPO, Shao et al. 2024)
    seq_mean_token_sum       sum_s L_s / num_seqs
    seq_mean_token_sum_norm  sum_s (L_s / max_len) / num_seqs              (Dr.GRPO, Liu et al. 2025)

Normalization contract. Each mode is a sum over tokens or sequences divided by a constant. The constants
default to the given micro-batch's own counts (num_tokens = sum(mask), num_seqs = B, max_len = T), which gives
the loss of that micro-batch alone. An optimizer step, however, usually spans several micro-batches
(gradient accumulation) on several data-parallel ranks. Pass the GLOBAL constants of the step instead:

    num_tokens = mask tokens of the whole step (all micro-batches, all ranks)
    num_seqs   = rows of the whole step
    max_len    = one fixed length for every micro-batch (the rollout's max new tokens), not each
                 micro-batch's padded T

Then the micro-batch losses add up exactly to the full-batch loss, and so do their gradients; a mean of
per-micro-batch means does not (it over-weights the tokens of short micro-batches). Engines that average
gradients across ranks (DDP, DeepSpeed) divide by the data-parallel world size, and DeepSpeed's
`engine.backward` divides by the gradient accumulation steps: multiply the loss by those factors (or turn the
scaling off) so that the summed gradient is the full-batch one.
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Union

import torch

from rlhf.algos.lookup import lookup

Normalizer = Union[int, float, torch.Tensor]


def _masked_rows(loss_tok: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """L_s = sum_t mask * loss, [B]."""
    return (loss_tok * mask.to(loss_tok.dtype)).sum(-1)


def _token_mean(loss_tok, mask, num_tokens, num_seqs, max_len):
    n = mask.to(loss_tok.dtype).sum().clamp_min(1) if num_tokens is None else num_tokens
    return _masked_rows(loss_tok, mask).sum() / n


def _seq_mean_token_mean(loss_tok, mask, num_tokens, num_seqs, max_len):
    per_seq = _masked_rows(loss_tok, mask) / mask.to(loss_tok.dtype).sum(-1).clamp_min(1)
    return per_seq.sum() / (loss_tok.shape[0] if num_seqs is None else num_seqs)


def _seq_mean_token_sum(loss_tok, mask, num_tokens, num_seqs, max_len):
    return _masked_rows(loss_tok, mask).sum() / (loss_tok.shape[0] if num_seqs is None else num_seqs)


def _seq_mean_token_sum_norm(loss_tok, mask, num_tokens, num_seqs, max_len):
    # Dr.GRPO: a constant length normalizer removes GRPO's bias towards long wrong answers.
    length = loss_tok.shape[-1] if max_len is None else max_len
    return _masked_rows(loss_tok, mask).sum() / length / (loss_tok.shape[0] if num_seqs is None else num_seqs)


AGG_MODES: Dict[str, Callable[..., torch.Tensor]] = {
    "token_mean": _token_mean,
    "seq_mean_token_mean": _seq_mean_token_mean,
    "seq_mean_token_sum": _seq_mean_token_sum,
    "seq_mean_token_sum_norm": _seq_mean_token_sum_norm,
}


def aggregate_loss(
    loss_tok: torch.Tensor,
    mask: torch.Tensor,
    mode: str,
    *,
    num_tokens: Optional[Normalizer] = None,
    num_seqs: Optional[Normalizer] = None,
    max_len: Optional[Normalizer] = None,
) -> torch.Tensor:
    """Aggregate a per-token loss to a scalar; see the module docstring for the modes and the contract.

    Args:
        loss_tok: [B, T] per-token loss.
        mask: [B, T] float or bool, 1 = response token that counts.
        mode: a key of `AGG_MODES`.
        num_tokens: token_mean divisor (default: sum(mask), at least 1).
        num_seqs: divisor of the seq_* modes (default: B).
        max_len: seq_mean_token_sum_norm length divisor (default: T).

    Returns:
        0-dim tensor.
    """
    fn = lookup(AGG_MODES, mode, what="loss aggregation mode", key="algo.loss_agg")
    if loss_tok.dim() != 2 or loss_tok.shape != mask.shape:
        raise ValueError(f"loss_tok and mask must both be [B, T], got {tuple(loss_tok.shape)} and {tuple(mask.shape)}")
    return fn(loss_tok, mask, num_tokens, num_seqs, max_len)
