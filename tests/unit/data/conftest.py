"""Offline tokenizers for the data-pipeline tests: a byte-level BPE trained in well under a second.

`chat_tokenizer`: ChatML chat template, eos <|im_end|>, pad <|endoftext|>, no BOS (like Qwen2 instruct).
`plain_tokenizer`: no chat template, prepends BOS <s> and has eos <|endoftext|> (like Llama base models).
Both share one vocabulary of 300 ids, so random-init models with vocab 300 accept their ids.
"""

from __future__ import annotations

import json

import pytest

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|step|>", "<s>"]
VOCAB_SIZE = 300


def _corpus():
    words = "the answer question is what how many apples paris capital france hello world sure".split()
    for i in range(300):
        a, b = i % 17, (i * 7) % 23
        yield f"user\nWhat is {a} plus {b}?\nassistant\nThe answer is {a + b}. {words[i % len(words)]}"
        yield f"Question: {' '.join(words[(i + k) % len(words)] for k in range(6))}\nAnswer: Paris."


@pytest.fixture(scope="session")
def _bpe():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    assert tok.get_vocab_size() <= VOCAB_SIZE
    return tok


@pytest.fixture(scope="session")
def chat_tokenizer(_bpe):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=_bpe,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|step|>"],
        chat_template=CHATML,
    )


@pytest.fixture(scope="session")
def plain_tokenizer(_bpe):
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_bpe.to_str())
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|endoftext|>")


@pytest.fixture
def write_jsonl(tmp_path):
    """write_jsonl(name, rows) -> path; a row that is a str is written verbatim (to plant bad lines)."""

    def write(name, rows):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        lines = [row if isinstance(row, str) else json.dumps(row) for row in rows]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write
