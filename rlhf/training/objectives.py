"""Offline objectives: a batch in, this micro-batch's share of the step loss and metrics out.

Normalization contract: each objective divides by the GLOBAL count of its unit for the whole optimizer step
(loss tokens for SFT, pairs for RM/DPO, samples for KTO), summed over accumulation micro-batches and
data-parallel ranks. Summing the returned losses over micro-batches and ranks gives exactly the full-batch
loss, so gradient accumulation and data parallelism leave the gradient unchanged. Metrics follow the same
rule, so their sums are step means.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Optional, Sequence

import torch

from rlhf.algos.logprobs import head_logps_and_entropy, token_logprobs
from rlhf.algos.preference import dpo_loss, kto_loss
from rlhf.algos.reward import pairwise_loss
from rlhf.models.ring_attention import get_ring, packed_token_logps, sequence_scores


@dataclass
class StepCounts:
    """Global counts over one optimizer step (all micro-batches, all ranks)."""

    tokens: float
    samples: float
    # KTO's reference point z0, estimated once for the step by `kto_prepass` (None: from this batch alone).
    kl_ref: Optional[float] = None


def _forward(model, batch: dict):
    """The model's output on a padded or packed batch."""
    kwargs = {"input_ids": batch["input_ids"]}
    if "position_ids" in batch:
        kwargs["position_ids"] = batch["position_ids"]
    if "attention_mask_4d" in batch:
        kwargs["attention_mask"] = batch["attention_mask_4d"]
    elif "attention_mask" in batch:
        kwargs["attention_mask"] = batch["attention_mask"]
    return model(**kwargs, use_cache=False)


def head_of(model):
    """The ``HeadMode`` a trained or reference model's log-probs use (``head_mode``, set by TrainEngine and the
    offline trainer's reference; the logits path for anything else)."""
    from rlhf.training.sequences import LOGITS

    return getattr(model, "head_mode", None) or LOGITS


def _forward_logps(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """Per-token log-probs of the next token [B, T-1], the shifted loss mask, and the MoE aux loss if any.
    With ring attention (model.ring_attn_size > 1) the packed row is split over the ring and the log-probs
    gathered back: the same [1, T-1] on every rank of the ring. With a fused head (``head_of``) only the
    positions of the loss mask go through the head, and the others are 0 (every objective masks them)."""
    from rlhf.training.sequences import head_bypassed

    ring = get_ring()
    labels = batch["input_ids"][:, 1:]
    loss_mask = batch["loss_mask"][:, 1:]
    keep = loss_mask != 0
    head = head_of(model)
    if ring is not None:
        logps, out = packed_token_logps(model, ring, batch)
    else:
        with head_bypassed(model, head) as head_weight:
            out = _forward(model, batch)
        if head_weight is None:
            logps = token_logprobs(out.logits[:, :-1], labels)
        else:
            picked, _ = head_logps_and_entropy(
                out.logits[:, :-1][keep], head_weight, labels[keep], compiled=head.compiled
            )
            logps = torch.zeros(labels.shape, dtype=picked.dtype, device=picked.device).masked_scatter(keep, picked)
    mask = loss_mask.to(logps.dtype)
    aux = getattr(out, "aux_loss", None)
    return logps, mask, aux


def _moe_aux(model, aux) -> torch.Tensor | float:
    if aux is None:
        return 0.0
    cfg = getattr(getattr(model, "module", model), "config", None)
    coef = getattr(cfg, "router_aux_loss_coef", 0.0) or 0.0
    return coef * aux


def sft_objective(
    model, batch, counts: StepCounts, *, ref_model=None, algo=None, micro_batches: int = 1, tokenizer=None
):
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


def reward_model_objective(
    model, batch, counts: StepCounts, *, ref_model=None, algo=None, micro_batches: int = 1, tokenizer=None
):
    """Bradley-Terry on [chosen; rejected] stacked rows: scores from the HF sequence-classification head."""
    if "seq_lens" in batch:
        raise ValueError(
            "data.packing=true is not supported for reward models (the score head pools one token per row); "
            "set data.packing=false"
        )
    ring = get_ring()
    if ring is not None:
        scores = sequence_scores(model, ring, batch["input_ids"], batch["attention_mask"])
    else:
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


def dpo_objective(model, batch, counts: StepCounts, *, ref_model, algo, micro_batches: int = 1, tokenizer=None):
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


def kto_mismatched_samples(samples: Sequence[dict]) -> list[dict]:
    """Each sample's prompt followed by the completion of the NEXT sample (cyclically), loss on that completion.

    These are the y' of KTO's reference point z0 = KL(pi || ref) ~ mean log pi(y'|x) - log ref(y'|x)
    (Ethayarajh et al. 2024, sec. 4; TRL and OpenRLHF shift completions within the batch the same way): the
    matched completions were trained towards, so their log-ratio is no estimate of the KL. The pairing follows
    the order given (the step's global order), so it does not depend on how the step is cut into micro-batches
    or ranks. With one sample, it is its own mismatch."""
    parts = [_prompt_and_completion(s) for s in samples]
    out = []
    for i, (prompt, _) in enumerate(parts):
        completion = parts[(i + 1) % len(parts)][1]
        out.append(
            {"input_ids": prompt + completion, "loss_mask": [0] * len(prompt) + [1] * len(completion), "label": True}
        )
    return out


def _prompt_and_completion(sample: dict) -> tuple[list[int], list[int]]:
    ids, mask = list(sample["input_ids"]), list(sample["loss_mask"])
    start = next((i for i, m in enumerate(mask) if m), len(ids))
    return ids[:start], ids[start:]


def _reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over data-parallel ranks when a process group is up (the training role), else the tensor itself."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


@torch.no_grad()
def kto_reference_point(model, ref_model, kl_batches: Sequence[dict]) -> float:
    """z0 = max(0, mean over every rank's mismatched samples of log pi(y'|x) - log ref(y'|x)), a constant.

    `kl_batches` are this rank's collated mismatched samples (`kto_mismatched_samples`); every rank calls this
    with the same number of batches (a forward under ZeRO-3 is a collective)."""
    total = torch.zeros(2, dtype=torch.float64)
    for b in kl_batches:
        pol, _, _ = _sequence_logps(model, b)
        ref, _, _ = _sequence_logps(ref_model, b)
        total += torch.stack([(pol - ref).sum().double().cpu(), torch.tensor(float(len(pol)), dtype=torch.float64)])
    device = getattr(model, "device", None)
    summed = _reduce_sum(total.to(device) if device is not None else total).cpu()
    return max(float(summed[0] / summed[1].clamp(min=1)), 0.0)


def kto_prepass(
    model,
    step_samples: Sequence[dict],
    positions: Sequence[int],
    counts: StepCounts,
    *,
    ref_model,
    collate: Callable[[list[dict]], dict],
    micro_batch: int,
    algo: Any = None,
) -> StepCounts:
    """The step's counts with KTO's reference point: one no-grad pass over this rank's mismatched samples.

    Args:
        step_samples: every sample of the optimizer step in its global order (all ranks).
        positions: the indices into `step_samples` this rank trains on.
        collate: samples -> a batch on the model's device (an SFT-style batch: input_ids, loss_mask, ...).
        micro_batch: samples per forward pass.
    """
    mismatched = kto_mismatched_samples(step_samples)
    mine = [mismatched[p] for p in positions]
    batches = [collate(mine[i : i + micro_batch]) for i in range(0, len(mine), micro_batch)]
    return replace(counts, kl_ref=kto_reference_point(model, ref_model, batches))


def kto_objective(model, batch, counts: StepCounts, *, ref_model, algo, micro_batches: int = 1, tokenizer=None):
    """KTO with the step-wide reference point z0 of `kto_prepass` (detached, averaged over ranks, clamped at 0).

    Without a pre-pass (counts.kl_ref None) z0 comes from this batch's own mismatched pairs (the batch needs
    "kl_batch", a collated `kto_mismatched_samples` of its rows)."""
    total, _, _ = _sequence_logps(model, batch)
    with torch.no_grad():
        ref_total, _, _ = _sequence_logps(ref_model, batch)
    if counts.kl_ref is not None:
        kl_ref = float(counts.kl_ref)
    elif "kl_batch" in batch:
        kl_ref = kto_reference_point(model, ref_model, [batch["kl_batch"]])
    else:
        raise ValueError(
            "kto_objective needs the step's reference point: run kto_prepass (rlhf/training/objectives.py "
            "PREPASSES) before the step's micro-batches, or give the batch a 'kl_batch' of mismatched samples"
        )
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
    share = len(total) / counts.samples  # shares of the step's samples sum to 1 over micro-batches and ranks
    metrics = {
        "train/loss": loss.detach(),
        "train/kl_ref": torch.tensor(kl_ref * share),
        "train/desirable_reward": (rewards * desirable).sum().detach() / counts.samples,
        "train/undesirable_reward": (rewards * ~desirable).sum().detach() / counts.samples,
    }
    return loss, metrics


def prm_objective(model, batch, counts: StepCounts, *, ref_model=None, algo, micro_batches: int = 1, tokenizer=None):
    """Process reward model: the LM's logits over `algo.reward_tokens` at each step placeholder classify the step.

    Hard labels (bool) train the cross-entropy on the positive/negative token, soft labels (P(correct) in [0, 1])
    the binary cross-entropy on sigmoid(l_pos - l_neg) (rlhf/algos/prm.py). Divided by the step's global count
    of placeholders (counts.tokens, from `prm_prepass`)."""
    from rlhf.algos.prm import prm_loss, single_token_ids

    if tokenizer is None:
        raise ValueError("prm_objective needs the tokenizer (to read the ids of algo.reward_tokens)")
    if len(algo.reward_tokens) != 2:
        raise ValueError(
            f"algo.reward_tokens={list(algo.reward_tokens)}: give two tokens, the positive (correct step) first, "
            "e.g. algo.reward_tokens=[+,-]"
        )
    ids = single_token_ids(tokenizer, algo.reward_tokens, "algo.reward_tokens")
    logits = _forward(model, batch).logits
    tags = batch["step_mask"].bool()
    labels = batch["step_labels"].to(logits.device)
    # hard: index 0 (the positive token) for a correct step, 1 for a wrong one; soft: P(correct) itself.
    targets = (labels <= 0.5).long() if algo.loss == "hard" else labels.float()
    loss, stats = prm_loss(logits, tags, targets, label_ids=ids, kind=algo.loss, num_tags=counts.tokens)
    n_tags = tags.sum().detach().float()
    metrics = {
        "train/loss": loss.detach(),
        "train/step_accuracy": stats["accuracy"] * n_tags / counts.tokens,
        "train/step_tags": n_tags,
    }
    return loss, metrics


def prm_prepass(model, step_samples: Sequence[dict], positions, counts: StepCounts, **_) -> StepCounts:
    """The step's global count of step placeholders (every rank sees every sample of the step), no forward."""
    return replace(counts, tokens=float(max(sum(sum(s["step_mask"]) for s in step_samples), 1)))


def kd_objective(model, batch, counts: StepCounts, *, ref_model, algo, micro_batches: int = 1, tokenizer=None):
    """Knowledge distillation from the frozen teacher (`ref_model`, algo.teacher.name_or_path) on SFT rows:
    (1 - kd_coef) NLL + kd_coef tau^2 KL(teacher || student) per response token (rlhf/algos/distill.py),
    divided by the step's response tokens. The teacher may be of another size; its vocabulary must agree on the
    ids both have (padded vocabularies are cut to the shorter one)."""
    from rlhf.algos.distill import distill_loss

    out = _forward(model, batch)
    with torch.no_grad():
        teacher = _forward(ref_model, batch).logits[:, :-1]
    student = out.logits[:, :-1]
    v = min(student.shape[-1], teacher.shape[-1])
    labels = batch["input_ids"][:, 1:]
    mask = batch["loss_mask"][:, 1:].to(torch.float32)
    loss, stats = distill_loss(
        student[..., :v],
        teacher[..., :v],
        labels,
        mask,
        kd_coef=algo.kd_coef,
        temperature=algo.temperature,
        num_tokens=counts.tokens,
    )
    metrics = {
        "train/loss": loss.detach(),
        "train/kd_loss": stats["kd_loss"],
        "train/nll": stats["nll"],
        "train/tokens": mask.sum().detach(),
    }
    return loss, metrics


OBJECTIVES: dict[str, Callable] = {
    "sft": sft_objective,
    "reward_model": reward_model_objective,
    "dpo": dpo_objective,
    "kto": kto_objective,
    "prm": prm_objective,
    "kd": kd_objective,
}

# Objectives that need a step-wide value before the step's micro-batches: objective -> pre-pass returning the
# step's StepCounts with that value (the training worker calls it once per step and once per evaluation).
PREPASSES: dict[str, Callable[..., StepCounts]] = {
    "kto": kto_prepass,
    "prm": prm_prepass,
}
