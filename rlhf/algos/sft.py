"""Supervised fine-tuning loss: token-mean negative log-likelihood over the masked (response) tokens.

Label convention: labels are ALREADY SHIFTED by the caller, logits[:, t] predicts labels[:, t]. Use
`shift_for_causal_lm` on the model's input ids; it keeps the length T (the last position gets a dummy label
and mask 0), so the full logits tensor is used as is, without slicing off its last position (a slice of a
[B, T, V] tensor cannot be flattened without a copy).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from rlhf.algos.aggregate import Normalizer, aggregate_loss
from rlhf.algos.logprobs import token_logprobs


def shift_for_causal_lm(
    input_ids: torch.Tensor, loss_mask: torch.Tensor, pad_id: int = 0
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Labels and mask aligned with the logits of a causal LM run on `input_ids`.

    labels[:, t] = input_ids[:, t + 1] and mask[:, t] = loss_mask[:, t + 1] for t < T - 1; the last
    position gets `pad_id` and mask 0.

    Args:
        input_ids: [B, T] token ids fed to the model.
        loss_mask: [B, T] 1 where the token at that position should be learned (the response).
            With packed sequences, set it to 0 on each sample's first token so that no sample is
            trained to predict its start from the previous sample.
        pad_id: dummy label for the last position (any valid id; it is masked out).

    Returns:
        (labels [B, T] long, mask [B, T] of loss_mask's dtype).
    """
    if input_ids.shape != loss_mask.shape or input_ids.dim() != 2:
        raise ValueError(
            f"input_ids and loss_mask must both be [B, T], got {tuple(input_ids.shape)} and {tuple(loss_mask.shape)}"
        )
    labels = torch.full_like(input_ids, pad_id, dtype=torch.long)
    labels[:, :-1] = input_ids[:, 1:]
    mask = torch.zeros_like(loss_mask)
    mask[:, :-1] = loss_mask[:, 1:]
    return labels, mask


def sft_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    loss_mask: torch.Tensor,
    num_tokens: Optional[Normalizer] = None,
) -> torch.Tensor:
    """Token-mean NLL: -sum_{b,t} mask * log p(labels[b,t] | logits[b,t]) / num_tokens.

    Args:
        logits: [B, T, V], already aligned with labels (see the module docstring).
        labels: [B, T] ids; masked positions may hold any value (e.g. -100), they are replaced by 0.
        loss_mask: [B, T] float or bool, 1 = token that counts.
        num_tokens: divisor; default the micro-batch's own count. Pass the optimizer step's global count
            for exact gradient accumulation (see `rlhf.algos.aggregate`).

    Returns:
        0-dim loss.
    """
    safe_labels = torch.where(loss_mask.bool(), labels, torch.zeros_like(labels))
    nll = -token_logprobs(logits, safe_labels)
    return aggregate_loss(nll, loss_mask, "token_mean", num_tokens=num_tokens)
