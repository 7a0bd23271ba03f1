"""Reward model training: the Bradley-Terry pairwise loss (Ouyang et al. 2022, InstructGPT), with the
margin of Llama 2 (Touvron et al. 2023)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F


def _check_pairs(chosen: torch.Tensor, rejected: torch.Tensor) -> None:
    if chosen.dim() != 1 or chosen.shape != rejected.shape:
        raise ValueError(
            f"chosen and rejected rewards must both be [B], got {tuple(chosen.shape)} and {tuple(rejected.shape)}"
        )


def pairwise_loss(chosen: torch.Tensor, rejected: torch.Tensor, margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-pair loss -log sigmoid(r_c - r_r - m).

    Bradley-Terry: P(chosen > rejected) = sigmoid(r_c - r_r); the Llama 2 margin m >= 0 (larger for pairs
    that raters marked as clearly different) asks for a gap of at least m.

    Args:
        chosen: [B] scalar rewards of the chosen responses.
        rejected: [B] rewards of the rejected responses.
        margin: [B] (or a scalar) margin, None for plain Bradley-Terry.

    Returns:
        [B] per-pair loss; reduce it with .mean() (or a global-count sum for gradient accumulation).
    """
    _check_pairs(chosen, rejected)
    diff = chosen - rejected
    if margin is not None:
        diff = diff - margin
    # logsigmoid is the stable form of log(sigmoid(x)) for large negative x.
    return -F.logsigmoid(diff)


@torch.no_grad()
def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs ranked correctly, r_c > r_r strictly (ties count as wrong). Returns a 0-dim tensor."""
    _check_pairs(chosen, rejected)
    return (chosen > rejected).float().mean()
