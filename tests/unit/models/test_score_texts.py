"""Batched reward-model scoring (``score_texts``, shared by the reward-model role and ``rlhf.eval``): right
padding and the batch size do not change a text's score."""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from rlhf.models.loading import score_texts
from rlhf.models.tiny import tiny_model_dir

TEXTS = [
    "What is 2 + 2? It is 4.",
    "Hi",
    "A much longer conversation text that needs several more tokens than the others in its batch.",
    "What is 9 + 1? It is 7.",
    "ok",
]


def test_batched_scores_equal_one_text_at_a_time() -> None:
    folder = tiny_model_dir("llama")
    tok = AutoTokenizer.from_pretrained(folder)
    tok.padding_side = "right"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1, torch_dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    model.eval()
    one = score_texts(model, tok, TEXTS, 1, "cpu")
    assert one.shape == (len(TEXTS),) and one.dtype == torch.float32
    assert len(set(one.tolist())) == len(TEXTS)  # distinct texts, distinct scores: the head is not constant
    for bs in (2, 5, 8):
        torch.testing.assert_close(score_texts(model, tok, TEXTS, bs, "cpu"), one, atol=1e-5, rtol=1e-5)
    # Each score is the model's own logit for that text alone.
    enc = tok(TEXTS[2], return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        direct = model(**enc).logits[0, 0]
    torch.testing.assert_close(one[2], direct, atol=1e-5, rtol=1e-5)
