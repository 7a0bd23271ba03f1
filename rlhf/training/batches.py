"""From data-set samples to the tensors an objective reads (padded, or packed into one row)."""

from __future__ import annotations

from typing import Any


def collate_for_task(task: str, samples: list[dict], tokenizer, *, packing: bool, attn_impl: str, dtype) -> dict:
    """Padded [B, T] batch, or with packing every sample of the micro-batch in one [1, L] row with a
    block-diagonal causal mask and per-sample position ids (no padding at all). A packed batch keeps
    "seq_lens" [N] (long; N = B, or 2B for pairs): objectives that score whole sequences split the row by it."""
    import torch

    from rlhf.data.collate import make_collator

    if not packing:
        return make_collator(task, tokenizer)(samples)
    from rlhf.data.packing import collate_packed, packed_attention_kwargs

    total = sum(_length(s) for s in samples)
    batch = collate_packed(samples, max_len=total)
    kw = packed_attention_kwargs(batch["seq_lens"], batch["input_ids"].shape[1], attn_impl, dtype=dtype)
    batch["position_ids"] = kw["position_ids"]
    if "attention_mask" in kw:
        batch["attention_mask_4d"] = kw["attention_mask"]
    batch["seq_lens"] = torch.tensor(batch["seq_lens"], dtype=torch.long)
    return batch


def _length(sample: dict) -> int:
    if "chosen_ids" in sample:
        return len(sample["chosen_ids"]) + len(sample["rejected_ids"])
    return len(sample["input_ids"])


def loss_tokens(sample: dict[str, Any]) -> int:
    """Tokens whose next-token loss counts (the first token of a sequence is never predicted)."""
    mask = sample.get("loss_mask")
    if mask is None:
        return 1
    return int(sum(mask[1:]))
