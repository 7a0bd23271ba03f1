"""Critic loss with PPO2-style value clipping (Schulman et al. 2017; the `cliprange_value` of OpenAI baselines).

    unclipped_t = (V_t - R_t)^2
    clipped_t   = (V_old_t + clip(V_t - V_old_t, -clip, clip) - R_t)^2
    loss_t      = 0.5 * max(unclipped_t, clipped_t)

The max makes the clip pessimistic: a value cannot improve its loss by moving more than `clip` away from the
value it had at rollout time. The 0.5 makes the gradient (V - R), the usual least-squares convention.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from rlhf.algos.aggregate import Normalizer, aggregate_loss
from rlhf.algos.logprobs import masked_mean


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip: Optional[float] = None,
    agg: str = "token_mean",
    num_tokens: Optional[Normalizer] = None,
    num_seqs: Optional[Normalizer] = None,
    max_len: Optional[Normalizer] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped value loss (see the module docstring).

    Args:
        values: [B, T] current critic values (with gradient).
        old_values: [B, T] values at rollout time.
        returns: [B, T] targets (e.g. GAE returns from `rlhf.algos.advantages`).
        mask: [B, T] float or bool.
        clip: value clip range (> 0), None for the plain squared error (algo.value_clip).
        agg, num_tokens, num_seqs, max_len: see `rlhf.algos.aggregate.aggregate_loss`.

    Returns:
        (loss 0-dim, stats {"vf_clip_frac", "values_mean", "vf_error"} detached; vf_error = masked mean of
        (V - R)^2).
    """
    for name, t in (("old_values", old_values), ("returns", returns), ("mask", mask)):
        if t.shape != values.shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(values.shape)} like values")
    if clip is not None and not clip > 0:
        raise ValueError(f"value clip must be > 0 (algo.value_clip), or None to disable it; got {clip}")
    returns = returns.detach()
    unclipped = (values - returns).square()
    if clip is None:
        loss_tok = 0.5 * unclipped
        clipped_taken = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        old_values = old_values.detach()
        v_clipped = old_values + (values - old_values).clamp(-clip, clip)
        clipped = (v_clipped - returns).square()
        loss_tok = 0.5 * torch.maximum(unclipped, clipped)
        clipped_taken = clipped > unclipped
    loss = aggregate_loss(loss_tok, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    with torch.no_grad():
        stats = {
            "vf_clip_frac": masked_mean(clipped_taken.float(), mask),
            "values_mean": masked_mean(values.detach(), mask),
            "vf_error": masked_mean(unclipped.detach(), mask),
        }
    return loss, stats
