"""Offline preference losses: DPO, cDPO, IPO on pairs; KTO on unpaired desirable/undesirable samples.

All functions take sequence log-probabilities [B] (a response's token log-probs reduced over its mask, see
`sequence_logps`) of the policy and of the frozen reference model:

    h = (log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))      (the log-ratio gap)

Summed or averaged log-probs? DPO and cDPO are derived for the sequence log-likelihood: pass sums
(`sequence_logps(..., average=False)`). IPO as in Azar et al. (2023) and its reference implementations uses the
per-token average: pass means (`average=True`), else the fixed target 1/(2 beta) of the IPO loss is compared
with a gap that grows with the response length.

Loss types (`DPO_LOSS_TYPES`, config key `algo.loss`):

    sigmoid  DPO (Rafailov et al. 2023): -log sigmoid(beta h); with label_smoothing eps it is cDPO
             (Mitchell 2023): -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
    ipo      IPO (Azar et al. 2023): (h - 1 / (2 beta))^2
"""

from __future__ import annotations

from typing import Callable, Dict, Tuple, Union

import torch
import torch.nn.functional as F

from rlhf.algos.logprobs import masked_mean, masked_sum
from rlhf.algos.lookup import lookup


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Reduce token log-probs [B, T] over the mask to [B]: the sum (log p of the response) or the mean."""
    return masked_mean(token_logps, mask, dim=-1) if average else masked_sum(token_logps, mask, dim=-1)


def _sigmoid(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    loss = -F.logsigmoid(beta * h)
    if label_smoothing:
        # cDPO: the label is flipped with probability eps, so the target is the eps-smoothed Bernoulli.
        loss = (1.0 - label_smoothing) * loss - label_smoothing * F.logsigmoid(-beta * h)
    return loss


def _ipo(h: torch.Tensor, beta: float, label_smoothing: float) -> torch.Tensor:
    if label_smoothing:
        raise ValueError(
            f"label_smoothing={label_smoothing} applies to the sigmoid (cDPO) loss only; set algo.label_smoothing=0 "
            f"with algo.loss=ipo"
        )
    # Regress the gap to 1/(2 beta) instead of pushing it to infinity: IPO's fix for deterministic preferences.
    return (h - 1.0 / (2.0 * beta)).square()


DPO_LOSS_TYPES: Dict[str, Callable[[torch.Tensor, float, float], torch.Tensor]] = {
    "sigmoid": _sigmoid,
    "ipo": _ipo,
}


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO-family loss of each pair.

    Args:
        policy_chosen_logps, policy_rejected_logps: [B] policy sequence log-probs (sums; means for IPO).
        ref_chosen_logps, ref_rejected_logps: [B] reference sequence log-probs, same reduction.
        beta: inverse temperature of the implicit reward, > 0.
        loss_type: a key of `DPO_LOSS_TYPES`.
        label_smoothing: cDPO flip probability eps in [0, 0.5); sigmoid loss only.

    Returns:
        (loss [B], chosen_rewards [B], rejected_rewards [B]); the implicit rewards beta * (log pi - log ref)
        are detached, for logging (reward accuracy = mean(chosen_rewards > rejected_rewards)).
    """
    fn = lookup(DPO_LOSS_TYPES, loss_type, what="DPO loss type", key="algo.loss")
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (algo.beta), got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5) (algo.label_smoothing), got {label_smoothing}")
    shape = policy_chosen_logps.shape
    for name, t in (
        ("policy_rejected_logps", policy_rejected_logps),
        ("ref_chosen_logps", ref_chosen_logps),
        ("ref_rejected_logps", ref_rejected_logps),
    ):
        if t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(shape)} like policy_chosen_logps")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    loss = fn(chosen_ratio - rejected_ratio, beta, label_smoothing)
    return loss, beta * chosen_ratio.detach(), beta * rejected_ratio.detach()


@torch.no_grad()
def kto_kl_ref_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """KTO reference point estimate: mean over [B] of log pi(y'|x) - log ref(y'|x), detached.

    y' are mismatched completions (the completion of another prompt in the batch), so the mean estimates
    KL(pi || ref). Average it across data-parallel ranks before `kto_loss`, which clamps it at 0.
    """
    return (policy_kl_logps - ref_kl_logps).mean()


def kto_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    desirable: torch.Tensor,
    kl_ref_point: Union[float, torch.Tensor],
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024), per sample.

    r = log pi(y|x) - log ref(y|x),  z0 = max(0, kl_ref_point) (no gradient),
    v = lambda_D sigmoid(beta (r - z0)) if desirable else lambda_U sigmoid(beta (z0 - r)),
    loss = lambda_y - v = lambda_y (1 - sigmoid(...)).

    The paper suggests weights with lambda_D n_D / (lambda_U n_U) in [1, 4/3] for n_D desirable and n_U
    undesirable samples.

    Args:
        policy_logps, ref_logps: [B] summed sequence log-probs.
        desirable: [B] bool, True for desirable (thumbs-up) samples.
        kl_ref_point: scalar, see `kto_kl_ref_point`.
        beta: > 0.

    Returns:
        (loss [B], rewards [B] = beta * r detached, for logging).
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (algo.beta), got {beta}")
    if policy_logps.dim() != 1 or ref_logps.shape != policy_logps.shape or desirable.shape != policy_logps.shape:
        raise ValueError(
            f"policy_logps, ref_logps and desirable must all be [B], got {tuple(policy_logps.shape)}, "
            f"{tuple(ref_logps.shape)} and {tuple(desirable.shape)}"
        )
    desirable = desirable.bool()
    z0 = torch.as_tensor(kl_ref_point, dtype=policy_logps.dtype, device=policy_logps.device).detach().clamp_min(0)
    ratio = policy_logps - ref_logps
    value = torch.where(desirable, torch.sigmoid(beta * (ratio - z0)), torch.sigmoid(beta * (z0 - ratio)))
    weight = torch.where(
        desirable, torch.full_like(ratio, desirable_weight), torch.full_like(ratio, undesirable_weight)
    )
    return weight * (1.0 - value), beta * ratio.detach()
