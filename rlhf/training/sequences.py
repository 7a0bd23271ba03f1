"""Forward passes over rollout sequences: [left-padded prompt | right-padded response] rows.

A rollout batch row is `sequences[b] = prompt (left-padded to P) + response (right-padded to R)`;
`action_mask[b, t]` marks real response tokens (through the first EOS). Logits at position P-1+t predict
response token t, so response log-probs come from `logits[:, P-1:-1]`.
"""

from __future__ import annotations

from typing import Optional

import torch

from rlhf.algos.logprobs import entropy_from_logits, token_logprobs


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded prompt starts at position 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logps(
    model,
    sequences: torch.Tensor,
    attention_mask: torch.Tensor,
    prompt_len: int,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
    """Log-probs [B, R] of the response tokens (and their entropy [B, R] when asked)."""
    out = model(
        input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
    )
    logits = out.logits[:, prompt_len - 1 : -1]
    labels = sequences[:, prompt_len:]
    logps = token_logprobs(logits, labels, temperature=temperature)
    ent: Optional[torch.Tensor] = None
    if with_entropy:
        ent = entropy_from_logits(logits.detach(), temperature=temperature)
    aux = getattr(out, "aux_loss", None)
    return logps, ent, aux


def response_values(critic, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int) -> torch.Tensor:
    """Critic values [B, R] of the states before each response token (token-classification head, 1 label)."""
    out = critic(
        input_ids=sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask), use_cache=False
    )
    return out.logits[:, prompt_len - 1 : -1, 0].float()


def action_mask_from(response: torch.Tensor, eos_ids: set[int], pad_id: int) -> torch.Tensor:
    """1 for response tokens up to and including the first EOS; 0 after it (and for padding)."""
    is_eos = torch.zeros_like(response, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response == e
    # Tokens after the first EOS: the cumulative EOS count before them is >= 1.
    eos_before = torch.cumsum(is_eos.long(), dim=-1) - is_eos.long()
    mask = eos_before == 0
    if pad_id not in eos_ids:
        mask &= response != pad_id
    return mask.long()


def split_rows(batch: dict, parts: int) -> list[dict]:
    """Split every [B, ...] tensor (and list) of a batch into `parts` contiguous shards."""
    n = next(len(v) for v in batch.values() if isinstance(v, (torch.Tensor, list)))
    if n % parts:
        raise ValueError(f"cannot split {n} rows into {parts} equal shards")
    size = n // parts
    out = []
    for i in range(parts):
        shard = {}
        for k, v in batch.items():
            shard[k] = v[i * size : (i + 1) * size] if isinstance(v, (torch.Tensor, list)) else v
        out.append(shard)
    return out


def cat_rows(shards: list[dict]) -> dict:
    """Inverse of split_rows; tensors of different widths are right-padded (responses) before joining."""
    out = {}
    for k in shards[0]:
        vals = [s[k] for s in shards]
        if isinstance(vals[0], torch.Tensor):
            out[k] = torch.cat(vals, 0) if vals[0].dim() else torch.stack(vals)
        elif isinstance(vals[0], list):
            out[k] = [x for v in vals for x in v]
        else:
            out[k] = vals[0]
    return out
