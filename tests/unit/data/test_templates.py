"""Templates: prompt rendering, loss masks that cover exactly the response tokens, truncation, pairs, KTO, PRM."""

from __future__ import annotations

import copy

import pytest

from rlhf.data.errors import DataError, RowError
from rlhf.data.templates import (
    TemplateArgs,
    render_prompt,
    split_shared_prefix,
    tokenize_pair,
    tokenize_prm,
    tokenize_prompt,
    tokenize_sft,
    tokenize_unpaired,
)

CHAT = TemplateArgs()
PLAIN = TemplateArgs(apply_chat_template=False)
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "hello"},
    {"role": "assistant", "content": "hello world"},
    {"role": "user", "content": "What is 1 plus 2?"},
    {"role": "assistant", "content": "The answer is 3."},
]


def masked_runs(tokenizer, ids, mask):
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, m in zip(ids + [None], mask + [0]):
        if m:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


# ---------------------------------------------------------------------------------------------------- prompts


def test_render_prompt_forms(chat_tokenizer, plain_tokenizer):
    assert (
        render_prompt("What is 2?", chat_tokenizer) == "<|im_start|>user\nWhat is 2?<|im_end|>\n<|im_start|>assistant\n"
    )
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert render_prompt(messages, chat_tokenizer).endswith("<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n")
    assert render_prompt("hi", plain_tokenizer, apply_chat_template=False) == "hi"


def test_chat_needs_a_chat_template_and_messages_need_chat(chat_tokenizer, plain_tokenizer):
    with pytest.raises(DataError, match="has no chat_template"):
        render_prompt("hi", plain_tokenizer)
    with pytest.raises(DataError, match="data.apply_chat_template is false"):
        render_prompt([{"role": "user", "content": "hi"}], chat_tokenizer, apply_chat_template=False)


def test_tokenize_prompt_cuts_from_the_left_and_keeps_fields(chat_tokenizer):
    full = tokenize_prompt("What is 3 plus 4?", chat_tokenizer, CHAT, {"answer": "7"})
    assert full["text"] == render_prompt("What is 3 plus 4?", chat_tokenizer)
    assert chat_tokenizer.decode(full["input_ids"]) == full["text"]
    assert full["fields"] == {"answer": "7"}
    cut = tokenize_prompt("What is 3 plus 4?", chat_tokenizer, TemplateArgs(prompt_max_len=5), {"answer": "7"})
    assert cut["input_ids"] == full["input_ids"][-5:]  # the generation prompt survives
    assert cut["text"].endswith("<|im_start|>assistant\n") and len(cut["text"]) < len(full["text"])


# -------------------------------------------------------------------------------------------------------- SFT


def test_single_turn_masks_exactly_the_response_and_end_token(chat_tokenizer):
    out = tokenize_sft("What is 3 plus 4?", "The answer is 7.", chat_tokenizer, CHAT)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert len(ids) == len(mask)
    # The whole rendered conversation survives tokenization in segments.
    assert chat_tokenizer.decode(ids) == (
        "<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\nThe answer is 7.<|im_end|>\n"
    )
    assert masked_runs(chat_tokenizer, ids, mask) == ["The answer is 7.<|im_end|>"]
    # The template's trailing newline is glue, not trained.
    assert chat_tokenizer.decode(ids[-1:]) == "\n" and mask[-1] == 0


def test_every_assistant_turn_of_a_conversation_is_trained(chat_tokenizer):
    out = tokenize_sft(CONVERSATION, None, chat_tokenizer, CHAT)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert chat_tokenizer.decode(ids) == chat_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert masked_runs(chat_tokenizer, ids, mask) == ["hello world<|im_end|>", "The answer is 3.<|im_end|>"]


def test_response_given_as_messages_trains_only_the_response_turns(chat_tokenizer):
    prompt, response = CONVERSATION[:2], CONVERSATION[2:]
    out = tokenize_sft(prompt, response, chat_tokenizer, CHAT)
    assert out == tokenize_sft(CONVERSATION, None, chat_tokenizer, CHAT)
    # With the first exchange in the prompt, only the last turn is trained.
    out = tokenize_sft(CONVERSATION[:4], CONVERSATION[4:], chat_tokenizer, CHAT)
    assert masked_runs(chat_tokenizer, out["input_ids"], out["loss_mask"]) == ["The answer is 3.<|im_end|>"]


def test_plain_text_gets_bos_and_eos(plain_tokenizer):
    # The prompt template is applied by the row's format (rlhf/data/formats.py), before tokenizing.
    out = tokenize_sft("Question: What is 3 plus 4?\nAnswer: ", "The answer is 7.", plain_tokenizer, PLAIN)
    ids, mask = out["input_ids"], out["loss_mask"]
    assert ids[0] == plain_tokenizer.bos_token_id and ids[-1] == plain_tokenizer.eos_token_id
    assert plain_tokenizer.decode(ids) == "<s>Question: What is 3 plus 4?\nAnswer: The answer is 7.<|endoftext|>"
    assert masked_runs(plain_tokenizer, ids, mask) == ["The answer is 7.<|endoftext|>"]


def test_eos_is_not_doubled_when_the_text_ends_with_it(plain_tokenizer):
    out = tokenize_sft("Q", "A<|endoftext|>", plain_tokenizer, PLAIN)
    assert out["input_ids"].count(plain_tokenizer.eos_token_id) == 1


def test_pretrain_mode_trains_every_token(plain_tokenizer, chat_tokenizer):
    out = tokenize_sft("hello world, the answer is Paris.", None, plain_tokenizer, PLAIN, pretrain_mode=True)
    assert plain_tokenizer.decode(out["input_ids"]) == "<s>hello world, the answer is Paris.<|endoftext|>"
    assert out["loss_mask"] == [1] * len(out["input_ids"])
    short = tokenize_sft("hello world", None, plain_tokenizer, TemplateArgs(max_len=3), pretrain_mode=True)
    assert short["input_ids"] == out["input_ids"][:3] and short["loss_mask"] == [1, 1, 1]
    chat = tokenize_sft(CONVERSATION, None, chat_tokenizer, CHAT, pretrain_mode=True)
    assert chat_tokenizer.decode(chat["input_ids"]) == chat_tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert all(chat["loss_mask"])


def test_truncation_keeps_the_prompt_end_and_the_response_start(chat_tokenizer):
    prompt = "What is " + "1 plus " * 20 + "2?"
    full = tokenize_sft(prompt, "The answer is 3.", chat_tokenizer, CHAT)
    prompt_len = full["loss_mask"].index(1)
    args = TemplateArgs(prompt_max_len=10, max_len=14)
    cut = tokenize_sft(prompt, "The answer is 3.", chat_tokenizer, args)
    # Prompt: its last 10 tokens; then 4 response tokens (14 - 10).
    assert cut["input_ids"][:10] == full["input_ids"][prompt_len - 10 : prompt_len]
    assert cut["input_ids"][10:] == full["input_ids"][prompt_len : prompt_len + 4]
    assert cut["loss_mask"] == [0] * 10 + [1] * 4


def test_no_response_token_left_is_a_bad_row(chat_tokenizer):
    with pytest.raises(RowError, match="no response token left after truncation"):
        tokenize_sft("What is 1 plus 2?", "3", chat_tokenizer, TemplateArgs(prompt_max_len=64, max_len=8))


def test_a_string_without_response_is_not_a_conversation(chat_tokenizer):
    with pytest.raises(RowError, match="no response"):
        tokenize_sft("just text", None, chat_tokenizer, CHAT)


def test_template_without_end_of_turn_marker_gets_eos_on_each_turn(chat_tokenizer):
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}"
    )
    out = tokenize_sft(CONVERSATION, None, tokenizer, CHAT)
    assert masked_runs(tokenizer, out["input_ids"], out["loss_mask"]) == [
        "hello world<|im_end|>",
        "The answer is 3.<|im_end|>",
    ]
    assert tokenizer.decode(out["input_ids"]).endswith("assistant: The answer is 3.<|im_end|>\n")


def test_template_that_rewrites_earlier_turns_is_refused(chat_tokenizer):
    # Like templates that drop the reasoning of earlier turns: earlier assistant turns render differently.
    tokenizer = copy.deepcopy(chat_tokenizer)
    tokenizer.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'assistant' and not loop.last %}"
        "{{ '<|im_start|>assistant\\n...<|im_end|>\\n' }}{% else %}"
        "{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    )
    with pytest.raises(DataError, match="prefix"):
        tokenize_sft(CONVERSATION, None, tokenizer, CHAT)


# ------------------------------------------------------------------------------------------------------ pairs


def test_pair_string_form_shares_the_prompt_tokens(chat_tokenizer):
    out = tokenize_pair("What is 1 plus 2?", "The answer is 3.", "no", chat_tokenizer, CHAT)
    p = out["prompt_len"]
    assert out["chosen_ids"][:p] == out["rejected_ids"][:p]
    assert out["chosen_mask"][:p] == out["rejected_mask"][:p] == [0] * p
    assert masked_runs(chat_tokenizer, out["chosen_ids"], out["chosen_mask"]) == ["The answer is 3.<|im_end|>"]
    assert masked_runs(chat_tokenizer, out["rejected_ids"], out["rejected_mask"]) == ["no<|im_end|>"]


def test_pair_chat_form_equals_the_string_form(chat_tokenizer):
    user = {"role": "user", "content": "What is 1 plus 2?"}
    chosen = [user, {"role": "assistant", "content": "The answer is 3."}]
    rejected = [user, {"role": "assistant", "content": "no"}]
    as_chat = tokenize_pair(None, chosen, rejected, chat_tokenizer, CHAT)
    as_strings = tokenize_pair("What is 1 plus 2?", "The answer is 3.", "no", chat_tokenizer, CHAT)
    assert as_chat == as_strings
    # Responses given as assistant-message lists after a string prompt: the same again.
    assert tokenize_pair("What is 1 plus 2?", chosen[1:], rejected[1:], chat_tokenizer, CHAT) == as_strings


def test_pair_multi_turn_trains_only_the_differing_last_turn(chat_tokenizer):
    rejected = CONVERSATION[:-1] + [{"role": "assistant", "content": "no"}]
    out = tokenize_pair(None, CONVERSATION, rejected, chat_tokenizer, CHAT)
    p = out["prompt_len"]
    assert out["chosen_ids"][:p] == out["rejected_ids"][:p]
    assert masked_runs(chat_tokenizer, out["chosen_ids"], out["chosen_mask"]) == ["The answer is 3.<|im_end|>"]


def test_pair_plain_text_form(plain_tokenizer):
    out = tokenize_pair("What is 1 plus 2?", "3", "4", plain_tokenizer, PLAIN)
    assert out["chosen_ids"][: out["prompt_len"]] == out["rejected_ids"][: out["prompt_len"]]
    assert masked_runs(plain_tokenizer, out["rejected_ids"], out["rejected_mask"]) == ["4<|endoftext|>"]


def test_split_shared_prefix_and_its_faults():
    u = {"role": "user", "content": "q"}
    a1, a2 = {"role": "assistant", "content": "x"}, {"role": "assistant", "content": "y"}
    assert split_shared_prefix([u, a1], [u, a2]) == ([u], [a1], [a2])
    with pytest.raises(RowError, match="identical"):
        split_shared_prefix([u, a1], [u, a1])
    with pytest.raises(RowError, match="outside an assistant turn"):
        split_shared_prefix([u, a1], [{"role": "user", "content": "other"}, a1])


def test_pair_forms_must_match(chat_tokenizer):
    with pytest.raises(RowError, match="differ in form"):
        tokenize_pair("q", "a", [{"role": "assistant", "content": "b"}], chat_tokenizer, CHAT)


# ---------------------------------------------------------------------------------------------- KTO and PRM


def test_unpaired_keeps_the_label(chat_tokenizer):
    out = tokenize_unpaired("What is 1 plus 2?", "The answer is 3.", 1, chat_tokenizer, CHAT)
    assert out["label"] is True
    assert masked_runs(chat_tokenizer, out["input_ids"], out["loss_mask"]) == ["The answer is 3.<|im_end|>"]
    assert tokenize_unpaired("q", "a", False, chat_tokenizer, CHAT)["label"] is False


def test_prm_marks_each_step_tag_with_its_label(chat_tokenizer):
    steps = ["1 + 2 = 3.", "3 * 2 = 7.", "The answer is 7."]
    out = tokenize_prm("What is (1 plus 2) times 2?", steps, [True, False, 0.25], "<|step|>", chat_tokenizer, CHAT)
    ids, step_mask, labels = out["input_ids"], out["step_mask"], out["step_labels"]
    tag = chat_tokenizer.convert_tokens_to_ids("<|step|>")
    positions = [t for t, m in enumerate(step_mask) if m]
    assert positions == [t for t, token in enumerate(ids) if token == tag] and len(positions) == 3
    assert [labels[t] for t in positions] == [1.0, 0.0, 0.25]
    assert sum(labels) == 1.25  # nothing outside the tags
    assert chat_tokenizer.decode(ids).endswith(
        "<|im_start|>assistant\n1 + 2 = 3.<|step|>\n3 * 2 = 7.<|step|>\nThe answer is 7.<|step|>"
    )


def test_prm_faults(chat_tokenizer):
    with pytest.raises(RowError, match="differ in length"):
        tokenize_prm("q", ["a", "b"], [True], "<|step|>", chat_tokenizer, CHAT)
    with pytest.raises(DataError, match="must be exactly one"):
        tokenize_prm("q", ["a"], [True], "STEP END", chat_tokenizer, CHAT)
    with pytest.raises(RowError, match="no step tag left"):
        tokenize_prm("What is 1 plus 2?", ["3"], [True], "<|step|>", chat_tokenizer, TemplateArgs(max_len=6))
