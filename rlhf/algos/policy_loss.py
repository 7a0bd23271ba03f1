"""Policy-gradient losses: the PPO clipped surrogate with asymmetric and dual clipping, GSPO's sequence-level
surrogate, a KL-to-reference term and an entropy bonus.

PPO (Schulman et al. 2017), per token with ratio rho = pi(a) / pi_old(a) and advantage A:

    loss_t = max(-A rho, -A clip(rho, 1 - clip_low, 1 + clip_high))

clip_high > clip_low is DAPO's clip-higher (Yu et al. 2025): it lets low-probability tokens grow, against
entropy collapse. Dual-clip (Ye et al. 2020) bounds the loss of tokens with A < 0 whose ratio exploded:

    loss_t = min(loss_t, -A * dual_clip)   for A < 0, with dual_clip > 1.

GSPO (Zheng et al. 2025, arXiv:2507.18071) replaces the token ratio by the length-normalized sequence ratio

    s_i = exp( (1/|y_i|) sum_t log(pi(y_i,t) / pi_old(y_i,t)) )

and clips whole sequences (its paper uses clip_low 3e-4, clip_high 4e-4). The GSPO-token form used here,
s_i,t = sg[s_i] * pi(y_i,t) / sg[pi(y_i,t)], has the value s_i at every token and, with a per-sequence advantage
and `seq_mean_token_mean` aggregation, exactly GSPO's gradient; it also accepts per-token advantages.
`POLICY_LOSSES` maps `algo.policy_loss` to these functions.

Truncated importance sampling (TIS; Yao et al. 2025, "Your efficient RL framework secretly brings you
off-policy RL training"; TRL's vLLM importance-sampling correction, verl/OpenRLHF's TIS): the rollout engine
samples from pi_rollout, which differs numerically from the trainer's pi_old (other kernels, precision) and,
with an overlapped rollout, by one update. Each token's surrogate is weighted by

    w_t = min(pi_old(a_t) / pi_rollout(a_t), C)

(`tis_weights`; no gradient), so the expectation is over pi_old again while the weight stays bounded by C
(`algo.tis_cap`).

Losses are reduced by `rlhf.algos.aggregate.aggregate_loss` (pass the step's global normalizers for exact
gradient accumulation). Stats are micro-batch masked means, detached 0-dim tensors, without the `train/`
prefix.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

from rlhf.algos.aggregate import Normalizer, aggregate_loss
from rlhf.algos.kl import kl_penalty
from rlhf.algos.logprobs import masked_mean

# Log-ratio bound before exp: a stale or mismatched log-prob must not overflow the ratio to inf.
LOG_RATIO_CLAMP = 20.0


def _check(name: str, t: torch.Tensor, like: torch.Tensor, like_name: str = "logp") -> None:
    if t.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected {tuple(like.shape)} like {like_name}")


def _check_surrogate(logp, old_logp, advantages, mask, clip_low: float, clip_high: float) -> None:
    """Shapes and clip ranges shared by the PPO and GSPO surrogates."""
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask)):
        _check(name, t, logp)
    if not 0.0 <= clip_low < 1.0:
        raise ValueError(f"clip_low must be in [0, 1) (algo.clip_low), got {clip_low}")
    if not clip_high >= 0.0:
        raise ValueError(f"clip_high must be >= 0 (algo.clip_high), got {clip_high}")


def _masked_extreme(x: torch.Tensor, mask: torch.Tensor, largest: bool) -> torch.Tensor:
    fill = float("-inf") if largest else float("inf")
    filled = torch.where(mask.bool(), x, torch.full_like(x, fill))
    out = filled.max() if largest else filled.min()
    # An empty micro-batch reports ratio 1 rather than an infinity.
    return torch.where(mask.bool().any(), out, torch.ones_like(out))


def ppo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: Optional[float] = None,
    agg: str = "token_mean",
    num_tokens: Optional[Normalizer] = None,
    num_seqs: Optional[Normalizer] = None,
    max_len: Optional[Normalizer] = None,
    weight: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Clipped surrogate loss (see the module docstring).

    Args:
        logp: [B, T] log-probs of the sampled tokens under the current policy (with gradient).
        old_logp: [B, T] log-probs under the policy that sampled them (behaviour policy), no gradient.
        advantages: [B, T].
        mask: [B, T] float or bool, 1 = token that counts.
        clip_low: epsilon below 1, in [0, 1).
        clip_high: epsilon above 1, >= 0.
        dual_clip: constant c > 1 for the dual clip of negative advantages, None disables.
        agg, num_tokens, num_seqs, max_len: see `rlhf.algos.aggregate.aggregate_loss`.
        weight: [B, T] per-token weights of the surrogate (the TIS weights of `tis_weights`), None for 1.

    Returns:
        (loss 0-dim, stats): clip_frac (tokens where the clipped branch is taken), dual_clip_frac, approx_kl
        (k3 estimate of KL(pi_old || pi)), ratio_mean, ratio_min, ratio_max.
    """
    _check_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high)
    if dual_clip is not None and not dual_clip > 1.0:
        raise ValueError(f"dual_clip must be > 1 (algo.dual_clip), or None to disable it; got {dual_clip}")

    advantages = advantages.detach()
    old_logp = old_logp.detach()
    log_ratio = (logp - old_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_tok = torch.maximum(unclipped, clipped)
    dual_taken = torch.zeros_like(mask, dtype=torch.bool)
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual_taken = (advantages < 0) & (loss_tok > bound)
        loss_tok = torch.where(dual_taken, bound, loss_tok)
    if weight is not None:
        _check("weight", weight, logp)
        loss_tok = loss_tok * weight.detach()
    loss = aggregate_loss(loss_tok, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)

    with torch.no_grad():
        ratio_d = ratio.detach()
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "dual_clip_frac": masked_mean(dual_taken.float(), mask),
            "approx_kl": masked_mean(kl_penalty(old_logp, logp.detach(), "k3"), mask),
            "ratio_mean": masked_mean(ratio_d, mask),
            "ratio_min": _masked_extreme(ratio_d, mask, largest=False),
            "ratio_max": _masked_extreme(ratio_d, mask, largest=True),
        }
    return loss, stats


def gspo_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_low: float = 3e-4,
    clip_high: float = 4e-4,
    dual_clip: Optional[float] = None,
    agg: str = "seq_mean_token_mean",
    num_tokens: Optional[Normalizer] = None,
    num_seqs: Optional[Normalizer] = None,
    max_len: Optional[Normalizer] = None,
    weight: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """GSPO-token clipped surrogate (see the module docstring). Arguments and shapes as `ppo_policy_loss`.

    Returns:
        (loss 0-dim, stats): clip_frac (share of tokens in clipped sequences), approx_kl, ratio_mean/min/max
        (of the sequence ratios s_i), seq_clip_frac (share of sequences clipped).
    """
    _check_surrogate(logp, old_logp, advantages, mask, clip_low, clip_high)
    if dual_clip is not None:
        raise ValueError("algo.dual_clip is a token-level PPO option; GSPO clips whole sequences: set it to null")

    m = mask.to(logp.dtype)
    advantages = advantages.detach()
    old_logp = old_logp.detach()
    seq_log_ratio = ((logp - old_logp) * m).sum(-1) / m.sum(-1).clamp_min(1)  # [B]
    seq_log_ratio = seq_log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    # Value exp(seq_log_ratio) at every token; gradient flows through each token's own log-prob only.
    ratio = torch.exp(seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach())
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    loss_tok = torch.maximum(unclipped, clipped)
    if weight is not None:
        _check("weight", weight, logp)
        loss_tok = loss_tok * weight.detach()
    loss = aggregate_loss(loss_tok, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)

    with torch.no_grad():
        taken = (clipped > unclipped).float()
        seq_ratio = torch.exp(seq_log_ratio.detach())
        rows = m.sum(-1) > 0
        seq_taken = (taken * m).sum(-1) > 0
        stats = {
            "clip_frac": masked_mean(taken, mask),
            "seq_clip_frac": seq_taken[rows].float().mean() if rows.any() else torch.zeros(()),
            "dual_clip_frac": torch.zeros(()),
            "approx_kl": masked_mean(kl_penalty(old_logp, logp.detach(), "k3"), mask),
            "ratio_mean": seq_ratio[rows].mean() if rows.any() else torch.ones(()),
            "ratio_min": seq_ratio[rows].min() if rows.any() else torch.ones(()),
            "ratio_max": seq_ratio[rows].max() if rows.any() else torch.ones(()),
        }
    return loss, stats


def tis_weights(
    old_logp: torch.Tensor, rollout_logp: torch.Tensor, mask: torch.Tensor, *, cap: float
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Truncated importance weights min(exp(old_logp - rollout_logp), cap) [B, T] (detached; see the module
    docstring) and their stats: tis_ratio_mean (masked mean of the untruncated ratio) and tis_clip_frac (share
    of tokens whose ratio exceeded the cap). The log-ratio is clamped to +-LOG_RATIO_CLAMP before exp."""
    _check("rollout_logp", rollout_logp, old_logp, "old_logp")
    _check("mask", mask, old_logp, "old_logp")
    if not cap >= 1.0:
        raise ValueError(
            f"algo.tis_cap={cap} must be >= 1 (a cap below 1 down-weights even tokens the two policies agree on), "
            "or null to turn the correction off (rlhf/config/algo.py RLConfig.tis_cap)"
        )
    with torch.no_grad():
        ratio = torch.exp((old_logp.detach() - rollout_logp.detach()).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        weight = ratio.clamp(max=cap)
        stats = {
            "tis_ratio_mean": masked_mean(ratio, mask),
            "tis_clip_frac": masked_mean((ratio > cap).to(ratio.dtype), mask),
        }
    return weight, stats


# algo.policy_loss -> surrogate; both take the same arguments.
POLICY_LOSSES = {"ppo": ppo_policy_loss, "gspo": gspo_policy_loss}


def kl_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    mask: torch.Tensor,
    *,
    kind: str = "k3",
    agg: str = "token_mean",
    num_tokens: Optional[Normalizer] = None,
    num_seqs: Optional[Normalizer] = None,
    max_len: Optional[Normalizer] = None,
) -> torch.Tensor:
    """KL-to-reference term of the loss (GRPO's form; KL in the loss rather than in the reward).

    Aggregates `rlhf.algos.kl.kl_penalty(logp, ref_logp, kind)` [B, T] over the mask. Unweighted: add
    kl_coef * kl_loss(...) to the policy loss (and log the unweighted value).
    """
    _check("ref_logp", ref_logp, logp)
    per_tok = kl_penalty(logp, ref_logp.detach(), kind)
    return aggregate_loss(per_tok, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)


def entropy_bonus(
    entropy: torch.Tensor,
    mask: torch.Tensor,
    *,
    coef: float,
    agg: str = "token_mean",
    num_tokens: Optional[Normalizer] = None,
    num_seqs: Optional[Normalizer] = None,
    max_len: Optional[Normalizer] = None,
) -> torch.Tensor:
    """Term to ADD to the loss for an entropy bonus: -coef * aggregate(entropy) (minimizing it raises entropy).

    entropy: [B, T] from `rlhf.algos.logprobs.entropy_from_logits` (with gradient).
    """
    _check("mask", mask, entropy, "entropy")
    ent = aggregate_loss(entropy, mask, agg, num_tokens=num_tokens, num_seqs=num_seqs, max_len=max_len)
    return -coef * ent
