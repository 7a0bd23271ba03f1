"""Collators: right padding for training, left padding for generation, chosen rows before rejected rows."""

from __future__ import annotations

import pytest
import torch

from rlhf.data.collate import (
    collate_pairs,
    collate_prm,
    collate_prompts,
    collate_sft,
    collate_unpaired,
    make_collator,
    pad_token_id,
)
from rlhf.data.errors import DataError

PAD = 0


def test_sft_pads_right():
    batch = collate_sft([{"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]}, {"input_ids": [8], "loss_mask": [1]}], PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_pairs_stack_chosen_then_rejected():
    samples = [
        {"chosen_ids": [1, 2, 3], "chosen_mask": [0, 1, 1], "rejected_ids": [1, 4], "rejected_mask": [0, 1]},
        {"chosen_ids": [9, 8], "chosen_mask": [0, 1], "rejected_ids": [9, 7, 7, 7], "rejected_mask": [0, 1, 1, 1]},
    ]
    batch = collate_pairs(samples, PAD)
    # [2B, T] = [4, 4]: rows 0-1 chosen of pairs 0-1, rows 2-3 rejected of pairs 0-1.
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [9, 8, 0, 0], [1, 4, 0, 0], [9, 7, 7, 7]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]]


def test_prompts_pad_left_and_keep_fields():
    samples = [
        {"input_ids": [5, 6, 7], "text": "abc", "fields": {"answer": "1"}},
        {"input_ids": [8], "text": "d", "fields": {"answer": "2"}},
    ]
    batch = collate_prompts(samples, PAD)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["texts"] == ["abc", "d"] and batch["fields"] == [{"answer": "1"}, {"answer": "2"}]


def test_unpaired_and_prm():
    kto = collate_unpaired(
        [{"input_ids": [1], "loss_mask": [1], "label": True}, {"input_ids": [2, 3], "loss_mask": [0, 1], "label": 0}],
        PAD,
    )
    assert kto["labels"].tolist() == [True, False] and kto["input_ids"].tolist() == [[1, 0], [2, 3]]
    prm = collate_prm(
        [
            {"input_ids": [1, 2, 9], "step_mask": [0, 0, 1], "step_labels": [0.0, 0.0, 0.5]},
            {"input_ids": [3, 9], "step_mask": [0, 1], "step_labels": [0.0, 1.0]},
        ],
        PAD,
    )
    assert prm["step_mask"].tolist() == [[0, 0, 1], [0, 1, 0]]
    assert prm["step_labels"].tolist() == [[0.0, 0.0, 0.5], [0.0, 1.0, 0.0]]
    assert prm["step_labels"].dtype == torch.float32


def test_pad_id_comes_from_the_tokenizer(chat_tokenizer, plain_tokenizer):
    assert pad_token_id(chat_tokenizer) == chat_tokenizer.convert_tokens_to_ids("<|endoftext|>")
    # No pad token: fall back to EOS (padding is masked out anyway).
    assert plain_tokenizer.pad_token_id is None
    assert pad_token_id(plain_tokenizer) == plain_tokenizer.eos_token_id
    collate = make_collator("sft", chat_tokenizer)
    batch = collate([{"input_ids": [5, 6], "loss_mask": [0, 1]}, {"input_ids": [5], "loss_mask": [1]}])
    assert batch["input_ids"][1, 1].item() == chat_tokenizer.pad_token_id


def test_make_collator_refuses_what_cannot_be_packed(chat_tokenizer):
    with pytest.raises(DataError, match="cannot be packed"):
        make_collator("prompt", chat_tokenizer, packing=True, max_len=16)
    packed = make_collator("sft", chat_tokenizer, packing=True, max_len=16)
    assert packed([{"input_ids": [1, 2], "loss_mask": [0, 1]}])["seq_lens"] == [2]
