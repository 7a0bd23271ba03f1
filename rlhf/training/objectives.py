"""Offline objectives: a batch in, this micro-batch's share of the step loss and metrics out.

Normalization contract: each objective divides by the GLOBAL count of its unit for the whole optimizer step
(loss tokens for SFT, pairs for RM/DPO, samples for KTO), summed over accumulation micro-batches and
data-parallel ranks. Summing the returned losses over micro-batches and ranks gives exactly the full-batch
loss, so gradient accumulation and data parallelism leave the gradient unchanged. Metrics follow the same
rule, so their sums are step means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from rlhf.algos.logprobs import token_logprobs
from rlhf.algos.preference import dpo_loss, kto_loss
from rlhf.algos.reward import pairwise_loss


@dataclass
class StepCounts:
    """Global counts over one optimizer step (all micro-batches, all ranks)."""

    tokens: float
    samples: float


def _forward_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log-probs of the next token [B, T-1], the shifted loss mask, and the MoE aux loss if any."""
    kwargs = {"input_ids": batch["input_ids"]}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if "attention_mask_4d" in batch:
        kwargs["attention_mask"] = batch["attention_mask_4d"]
    elif "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    out = model(**kwargs, use_cache=False)
    logits = out.logits[:, :-1]
    labels = batch["input_ids"][:, 1:]
    logps = token_logprobs(logits, labels)
    mask = batch["loss_mask"][:, 1:].to(logps.dtype)
    aux = getattr(out, "aux_loss", None)
    return logps, mask, aux


def _moe_aux(model, aux) -> torch.Tensor | float:
    if aux is None:
        return 0.0
    cfg = getattr(getattr(model, "module", model), "config", None)
    coef = getattr(cfg, "router_aux_loss_coef", 0.0) or 0.0
    return coef * aux


def sft_objective(model, batch, counts: StepCounts, *, ref_model=None, algo=None, micro_batches: int = 1):
    logps, mask, aux = _forward_logps(model, batch)
    nll_sum = -(logps * mask).sum()
    loss = nll_sum / counts.tokens
    # The router loss is a per-micro-batch mean: spread it evenly over the step's micro-batches.
    loss_total = loss + _moe_aux(model, aux) / micro_batches
    metrics = {"train/loss": loss.detach(), "train/tokens": mask.sum().detach()}
    if aux is not None:
        metrics["train/moe_aux_loss"] = aux.detach() / micro_batches
    return loss_total, metrics


def _sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Summed and mean response log-probs, and response tokens, per sequence [N]: one per row, or per packed
    sequence."""
    logps, mask, _ = _forward_logps(model, batch)
    masked = logps * mask
    if "seq_lens" in batch:
        # A packed row [1, L] holds N sequences; target t (predicting token t + 1) belongs to the sequence of
        # token t + 1. Each sequence's first token has loss mask 0, so no target crosses a boundary.
        lens = batch["seq_lens"].to(logps.device)
        segment = torch.repeat_interleave(torch.arange(len(lens), device=logps.device), lens)[1:]
        total = torch.zeros(len(lens), dtype=logps.dtype, device=logps.device).index_add(0, segment, masked[0])
        n = torch.zeros_like(total).index_add(0, segment, mask[0])
    else:
        total, n = masked.sum(-1), mask.sum(-1)
    return total, total / n.clamp(min=1), n


def reward_model_objective(model, batch, counts: StepCounts, *, ref_model=None, algo=None, micro_batches: int = 1):
    """Bradley-Terry on [chosen; rejected] stacked rows: scores from the HF sequence-classification head."""
    if "seq_lens" in batch:
        raise ValueError(
            "data.packing=true is not supported for reward models (the score head pools one token per row); "
            "set data.packing=false"
        )
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    scores = out.logits.squeeze(-1).float()
    b = scores.shape[0] // 2
    chosen, rejected = scores[:b], scores[b:]
    margin = batch.get("margin")
    per_pair = pairwise_loss(chosen, rejected, margin=margin)
    loss = per_pair.sum() / counts.samples
    metrics = {
        "train/loss": loss.detach(),
        "train/accuracy": (chosen > rejected).float().sum().detach() / counts.samples,
        "train/chosen_score": chosen.sum().detach() / counts.samples,
        "train/rejected_score": rejected.sum().detach() / counts.samples,
    }
    return loss, metrics


def dpo_objective(model, batch, counts: StepCounts, *, ref_model, algo, micro_batches: int = 1):
    """DPO/IPO/cDPO on [chosen; rejected] rows. IPO uses mean per-token log-probs (as in TRL), DPO sums."""
    total, mean, n_tokens = _sequence_logps(model, batch)
    with torch.no_grad():
        ref_total, ref_mean, _ = _sequence_logps(ref_model, batch)
    use_mean = algo.loss == "ipo"
    pol = mean if use_mean else total
    ref = ref_mean if use_mean else ref_total
    b = pol.shape[0] // 2
    per_pair, chosen_r, rejected_r = dpo_loss(
        pol[:b], pol[b:], ref[:b], ref[b:], beta=algo.beta, loss_type=algo.loss, label_smoothing=algo.label_smoothing
    )
    loss = per_pair.sum() / counts.samples
    if algo.nll_coef > 0:
        chosen_tokens = n_tokens[:b].sum().clamp(min=1)
        loss = loss + algo.nll_coef * (-total[:b].sum() / chosen_tokens) * b / counts.samples
    metrics = {
        "train/loss": loss.detach(),
        "train/reward_accuracy": (chosen_r > rejected_r).float().sum().detach() / counts.samples,
        "train/reward_margin": (chosen_r - rejected_r).sum().detach() / counts.samples,
        "train/chosen_reward": chosen_r.sum().detach() / counts.samples,
        "train/rejected_reward": rejected_r.sum().detach() / counts.samples,
        "train/chosen_logp": total[:b].sum().detach() / counts.samples,
    }
    return loss, metrics


def kto_objective(model, batch, counts: StepCounts, *, ref_model, algo, micro_batches: int = 1):
    """KTO with the reference point estimated from the batch's own policy/reference log-ratio (detached)."""
    total, _, _ = _sequence_logps(model, batch)
    with torch.no_grad():
        ref_total, _, _ = _sequence_logps(ref_model, batch)
        kl_ref = (total - ref_total).mean().clamp(min=0)
    desirable = batch["labels"].bool()
    out = kto_loss(
        total,
        ref_total,
        desirable,
        kl_ref,
        beta=algo.beta,
        desirable_weight=algo.desirable_weight,
        undesirable_weight=algo.undesirable_weight,
    )
    per_sample, rewards = out[0], out[1]
    loss = per_sample.sum() / counts.samples
    metrics = {
        "train/loss": loss.detach(),
        "train/kl_ref": kl_ref.detach() / micro_batches,
        "train/desirable_reward": (rewards * desirable).sum().detach() / counts.samples,
        "train/undesirable_reward": (rewards * ~desirable).sum().detach() / counts.samples,
    }
    return loss, metrics


OBJECTIVES: dict[str, Callable] = {
    "sft": sft_objective,
    "reward_model": reward_model_objective,
    "dpo": dpo_objective,
    "kto": kto_objective,
}
