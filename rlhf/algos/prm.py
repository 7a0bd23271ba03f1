"""Process reward models: a causal LM that judges each reasoning step at a step-tag token.

Math-Shepherd (Wang et al. 2024) layout: each step of a solution ends with a tag token; the LM's logits AT the
tag position, restricted to a few label tokens (e.g. "+" and "-"), classify the step. `tag_mask[b, t]` marks
those positions (typically `input_ids == tag_id`; no causal shift: the tag's own logits are read).

Loss kinds (`PRM_LOSS_KINDS`):

    hard  cross-entropy over the K label tokens; targets[b, t] is the index in `label_ids` of the right label
    soft  binary cross-entropy with soft targets in [0, 1] = P(step is correct) (Math-Shepherd's
          Monte-Carlo estimate); label_ids = (positive_id, negative_id) and P = sigmoid(l_pos - l_neg),
          which is the two-token softmax
"""

from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from rlhf.algos.aggregate import Normalizer, aggregate_loss
from rlhf.algos.logprobs import masked_mean
from rlhf.algos.lookup import lookup


def _label_logits(logits: torch.Tensor, label_ids: Sequence[int]) -> torch.Tensor:
    """[B, T, V] -> [B, T, K] fp32 logits of the label tokens (a small copy)."""
    if logits.dim() != 3:
        raise ValueError(f"logits must be [B, T, V], got shape {tuple(logits.shape)}")
    vocab = logits.shape[-1]
    bad = [i for i in label_ids if not 0 <= i < vocab]
    if bad:
        raise ValueError(f"label ids {bad} are outside the vocabulary of size {vocab}")
    index = torch.as_tensor(list(label_ids), device=logits.device)
    return logits.index_select(-1, index).float()


def _hard(label_logits: torch.Tensor, targets: torch.Tensor, tags: torch.Tensor):
    k = label_logits.shape[-1]
    safe = torch.where(tags, targets.long(), torch.zeros_like(targets, dtype=torch.long))
    if bool(((safe < 0) | (safe >= k)).any()):
        raise ValueError(f"hard PRM targets must be indices in [0, {k}) of label_ids at tag positions")
    logp = torch.log_softmax(label_logits, dim=-1)
    loss_tok = -logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    correct = (label_logits.argmax(-1) == safe).float()
    return loss_tok, correct


def _soft(label_logits: torch.Tensor, targets: torch.Tensor, tags: torch.Tensor):
    if label_logits.shape[-1] != 2:
        raise ValueError(
            f"soft PRM targets need label_ids = (positive_id, negative_id), got {label_logits.shape[-1]} ids"
        )
    diff = label_logits[..., 0] - label_logits[..., 1]
    soft = torch.where(tags, targets.to(diff.dtype), torch.zeros_like(diff))
    loss_tok = F.binary_cross_entropy_with_logits(diff, soft, reduction="none")
    correct = ((diff > 0) == (soft > 0.5)).float()
    return loss_tok, correct


PRM_LOSS_KINDS: Dict[str, Callable[..., Tuple[torch.Tensor, torch.Tensor]]] = {
    "hard": _hard,
    "soft": _soft,
}


def prm_loss(
    logits: torch.Tensor,
    tag_mask: torch.Tensor,
    targets: torch.Tensor,
    *,
    label_ids: Sequence[int],
    kind: str = "hard",
    num_tags: Optional[Normalizer] = None,
) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """Mean step-classification loss over the tag positions.

    Args:
        logits: [B, T, V] LM logits.
        tag_mask: [B, T] bool/float, 1 at step-tag positions.
        targets: [B, T]; hard: long indices into label_ids; soft: float P(correct). Other positions are ignored.
        label_ids: token ids of the labels, e.g. (id("+"), id("-")); for soft, positive first.
        kind: a key of `PRM_LOSS_KINDS`.
        num_tags: divisor (default: tags in this micro-batch); the step's global count for exact accumulation.

    Returns:
        (loss 0-dim, stats {"accuracy": fraction of tags whose most likely label is the target} detached).
    """
    fn = lookup(PRM_LOSS_KINDS, kind, what="PRM loss kind")
    if tag_mask.shape != logits.shape[:2] or targets.shape != logits.shape[:2]:
        raise ValueError(
            f"tag_mask {tuple(tag_mask.shape)} and targets {tuple(targets.shape)} must match logits [B, T] "
            f"{tuple(logits.shape[:2])}"
        )
    tags = tag_mask.bool()
    loss_tok, correct = fn(_label_logits(logits, label_ids), targets, tags)
    loss = aggregate_loss(loss_tok, tags, "token_mean", num_tokens=num_tags)
    return loss, {"accuracy": masked_mean(correct, tags).detach()}


def prm_step_scores(logits: torch.Tensor, tag_mask: torch.Tensor, positive_id: int, negative_id: int) -> torch.Tensor:
    """P(step correct) = softmax over (positive, negative) label logits, at each tag.

    Args:
        logits: [B, T, V]; tag_mask: [B, T].

    Returns:
        [B, T] fp32 probabilities at tag positions, 0 elsewhere.
    """
    label_logits = _label_logits(logits, (positive_id, negative_id))
    prob = torch.sigmoid(label_logits[..., 0] - label_logits[..., 1])
    return prob * tag_mask.to(prob.dtype)


def _has_tag(tags: torch.Tensor) -> torch.Tensor:
    return tags.any(-1)


def _min(scores, tags):
    return torch.where(tags, scores, torch.full_like(scores, float("inf"))).min(-1).values


def _last(scores, tags):
    pos = torch.arange(scores.shape[-1], device=scores.device).expand_as(scores)
    last = torch.where(tags, pos, torch.full_like(pos, -1)).max(-1).values.clamp_min(0)
    return scores.gather(-1, last.unsqueeze(-1)).squeeze(-1)


def _mean(scores, tags):
    return masked_mean(scores, tags, dim=-1)


def _prod(scores, tags):
    return torch.where(tags, scores, torch.ones_like(scores)).prod(-1)


# How a solution's step scores become one outcome score (min is the usual choice for best-of-N).
STEP_SCORE_REDUCTIONS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "min": _min,
    "last": _last,
    "mean": _mean,
    "prod": _prod,
}


def reduce_step_scores(step_scores: torch.Tensor, tag_mask: torch.Tensor, reduction: str = "min") -> torch.Tensor:
    """Reduce per-step scores [B, T] (from `prm_step_scores`) over each row's tags to [B].

    A row without any tag scores 0.
    """
    fn = lookup(STEP_SCORE_REDUCTIONS, reduction, what="PRM step-score reduction")
    tags = tag_mask.bool()
    out = fn(step_scores, tags)
    return torch.where(_has_tag(tags), out, torch.zeros_like(out))


def single_token_ids(tokenizer, tokens: Sequence[str], key: str) -> list[int]:
    """The id of each string in `tokens`, each of which the tokenizer must keep as exactly one token.

    `key` names the config key the strings come from, for the error."""
    ids = []
    for t in tokens:
        enc = tokenizer.encode(t, add_special_tokens=False)
        if len(enc) != 1:
            raise ValueError(
                f"{key}: {t!r} is {len(enc)} tokens with this tokenizer ({enc}), it must be exactly one; choose a "
                f"string the tokenizer keeps whole (e.g. {key}=... with a single character the data never uses), "
                "or add it to the tokenizer as a special token"
            )
        ids.append(enc[0])
    return ids
