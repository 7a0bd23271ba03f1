"""Collators: lists of tokenized samples (see `rlhf.data.templates`) to padded torch tensors.

Training batches are right-padded; prompt batches for generation are left-padded so every prompt ends at the
last column. Masks are int64 0/1 tensors, labels are bool or float as noted.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from rlhf.data.errors import DataError
from rlhf.data.packing import PACKABLE_TASKS, collate_packed


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, else its EOS id (padding is masked, so any id works as long as it exists)."""
    for name in ("pad_token_id", "eos_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    raise DataError(
        "the tokenizer has neither a pad_token nor an eos_token",
        key="tokenizer.pad_token",
        hint="set tokenizer.pad_token before building batches",
    )


def pad(seqs: Sequence[Sequence], value, *, left: bool = False, dtype=torch.long) -> torch.Tensor:
    """[B, T] tensor of `seqs` padded with `value` to the longest (T = max length, at least 1 column)."""
    width = max([len(s) for s in seqs] + [1])
    out = torch.full((len(seqs), width), value, dtype=dtype)
    for i, seq in enumerate(seqs):
        if len(seq):
            row = torch.as_tensor(list(seq), dtype=dtype)
            if left:
                out[i, width - len(seq) :] = row
            else:
                out[i, : len(seq)] = row
    return out


def collate_sft(samples: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask", "loss_mask"}: [B, T] right-padded (SFT, pretraining)."""
    ids = [s["input_ids"] for s in samples]
    return {
        "input_ids": pad(ids, pad_id),
        "attention_mask": pad([[1] * len(x) for x in ids], 0),
        "loss_mask": pad([s["loss_mask"] for s in samples], 0),
    }


def collate_pairs(samples: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask", "loss_mask"}: [2B, T], rows 0..B-1 the chosen responses and rows B..2B-1
    the rejected ones of the same pairs (one forward pass scores both; reward models and DPO split it in half);
    "margin" [B] when the samples carry one (algo.margin_key).
    """
    ids = [s["chosen_ids"] for s in samples] + [s["rejected_ids"] for s in samples]
    masks = [s["chosen_mask"] for s in samples] + [s["rejected_mask"] for s in samples]
    out = {
        "input_ids": pad(ids, pad_id),
        "attention_mask": pad([[1] * len(x) for x in ids], 0),
        "loss_mask": pad(masks, 0),
    }
    if samples and "margin" in samples[0]:  # algo.margin_key: [B], one per pair
        out["margin"] = torch.tensor([float(s["margin"]) for s in samples])
    return out


def collate_prompts(samples: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, Any]:
    """{"input_ids", "attention_mask"}: [B, T] LEFT-padded for generation; "texts": the rendered prompts;
    "fields": each prompt's extra columns (e.g. a reference answer for the reward function).
    """
    ids = [s["input_ids"] for s in samples]
    return {
        "input_ids": pad(ids, pad_id, left=True),
        "attention_mask": pad([[1] * len(x) for x in ids], 0, left=True),
        "texts": [s["text"] for s in samples],
        "fields": [dict(s.get("fields", {})) for s in samples],
    }


def collate_unpaired(samples: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """`collate_sft` plus "labels": [B] bool, True for a desirable completion (KTO)."""
    batch = collate_sft(samples, pad_id)
    batch["labels"] = torch.tensor([bool(s["label"]) for s in samples], dtype=torch.bool)
    return batch


def collate_prm(samples: Sequence[Dict[str, Any]], pad_id: int) -> Dict[str, torch.Tensor]:
    """{"input_ids", "attention_mask", "step_mask"}: [B, T] right-padded; "step_labels": [B, T] float32, the
    step labels at the step-tag tokens (step_mask 1) and 0 elsewhere.
    """
    ids = [s["input_ids"] for s in samples]
    return {
        "input_ids": pad(ids, pad_id),
        "attention_mask": pad([[1] * len(x) for x in ids], 0),
        "step_mask": pad([s["step_mask"] for s in samples], 0),
        "step_labels": pad([s["step_labels"] for s in samples], 0.0, dtype=torch.float32),
    }


_COLLATORS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "sft": collate_sft,
    "pretrain": collate_sft,
    "pair": collate_pairs,
    "prompt": collate_prompts,
    "unpaired": collate_unpaired,
    "prm": collate_prm,
}


def make_collator(
    task: str, tokenizer: Any, *, packing: bool = False, max_len: Optional[int] = None
) -> Callable[[List[Dict[str, Any]]], Dict[str, Any]]:
    """The collator of a task (a `build_dataset` task name), for a DataLoader's `collate_fn`.

    With `packing`, a batch is one packed row of at most `max_len` tokens (see `rlhf.data.packing`); the batch
    sampler must hand it the groups of `pack_samples`.
    """
    if task not in _COLLATORS:
        raise DataError(f"unknown task {task!r}", key="task", hint=f"use one of {sorted(_COLLATORS)}")
    if packing:
        if task not in PACKABLE_TASKS:
            raise DataError(
                f"task '{task}' cannot be packed", key="data.packing", hint=f"packing works for {PACKABLE_TASKS}"
            )
        if max_len is None:
            raise ValueError("packing needs max_len")
        return partial(collate_packed, max_len=max_len)
    return partial(_COLLATORS[task], pad_id=pad_token_id(tokenizer))
