"""Each public format: rows shaped like the public set's, detected, normalized and tokenized; the exact prompt and
response spans and the loss mask are read back from the token ids. Detection refuses ambiguous rows."""

from __future__ import annotations

import pytest

from rlhf.config.data import DataConfig, SourceConfig
from rlhf.data.datasets import build_dataset
from rlhf.data.errors import DataError
from rlhf.data.formats import FORMATS, FormatOptions, apply_prompt_template, detect_format, parse_hh

U, A, END = "<|im_start|>user\n", "<|im_start|>assistant\n", "<|im_end|>\n"


def masked_runs(tokenizer, ids, mask):
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, m in zip(list(ids) + [None], list(mask) + [0]):
        if m:
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    return runs


def build(task, write_jsonl, rows, tokenizer, **data):
    path = write_jsonl("rows.jsonl", rows)
    fmt = data.pop("format", None)
    cfg = DataConfig(sources={"s": SourceConfig(path=str(path), format=fmt)}, eval_fraction=0.0, **data)
    return build_dataset(task, cfg, tokenizer, step_tag="<|step|>")


def detected(rows, task):
    return detect_format(rows, task, FormatOptions(), source="s").format.name


HH_PREFIX = "\n\nHuman: What is 2 plus 3?\n\nAssistant: Let me see.\n\nHuman: Please answer.\n\nAssistant:"
HH_ROW = {"chosen": HH_PREFIX + " It is 5.", "rejected": HH_PREFIX + " It is 6."}


def test_hh_rlhf_prompt_ends_at_the_last_assistant_turn(write_jsonl, chat_tokenizer):
    assert detected([HH_ROW], "pair") == "hh_rlhf"
    bad = {"chosen": HH_ROW["chosen"], "rejected": "\n\nHuman: Other?\n\nAssistant: It is 6."}
    data = build("pair", write_jsonl, [HH_ROW, bad], chat_tokenizer)
    assert len(data) == 1 and [b.reason for b in data.bad] == [
        "chosen and rejected do not share the conversation before the last Assistant turn"
    ]
    s = data[0]
    n = s["prompt_len"]
    history = f"{U}What is 2 plus 3?{END}{A}Let me see.{END}{U}Please answer.{END}{A}"
    # The multi-turn history is the shared prompt: identical tokens for both, ending at the last "Assistant:".
    assert chat_tokenizer.decode(s["chosen_ids"][:n]) == history
    assert s["chosen_ids"][:n] == s["rejected_ids"][:n]
    assert chat_tokenizer.decode(s["chosen_ids"]) == history + f"It is 5.{END}"
    # Only the last turn is trained; the earlier Assistant turn ("Let me see.") is context.
    assert masked_runs(chat_tokenizer, s["chosen_ids"], s["chosen_mask"]) == ["It is 5.<|im_end|>"]
    assert masked_runs(chat_tokenizer, s["rejected_ids"], s["rejected_mask"]) == ["It is 6.<|im_end|>"]


def test_parse_hh_turns():
    assert parse_hh("\n\nHuman: a b\n\nAssistant: c") == [
        {"role": "user", "content": "a b"},
        {"role": "assistant", "content": "c"},
    ]


def test_ultrafeedback_pairs_share_the_prompt_turn(write_jsonl, chat_tokenizer):
    user = {"role": "user", "content": "What is 2 plus 3?"}
    row = {
        "prompt": user["content"],
        "prompt_id": "x1",
        "score_chosen": 8.0,
        "score_rejected": 2.0,
        "chosen": [user, {"role": "assistant", "content": "It is 5."}],
        "rejected": [user, {"role": "assistant", "content": "It is 6."}],
        "messages": [user, {"role": "assistant", "content": "It is 5."}],
    }
    # The rows also fit `messages` and `prompt`; the format needing the most keys wins.
    assert detected([row], "pair") == "ultrafeedback"
    s = build("pair", write_jsonl, [row], chat_tokenizer)[0]
    assert chat_tokenizer.decode(s["chosen_ids"][: s["prompt_len"]]) == f"{U}What is 2 plus 3?{END}{A}"
    assert masked_runs(chat_tokenizer, s["rejected_ids"], s["rejected_mask"]) == ["It is 6.<|im_end|>"]
    sft = build("sft", write_jsonl, [row], chat_tokenizer)[0]
    assert masked_runs(chat_tokenizer, sft["input_ids"], sft["loss_mask"]) == ["It is 5.<|im_end|>"]


SHAREGPT = {
    "conversations": [
        {"from": "system", "value": "Be brief."},
        {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello."},
        {"from": "human", "value": "2+3?"},
        {"from": "gpt", "value": "5"},
    ],
    "source": "x",
}


def test_sharegpt_roles_system_turn_and_every_assistant_turn(write_jsonl, chat_tokenizer):
    assert detected([SHAREGPT], "sft") == "sharegpt"
    s = build("sft", write_jsonl, [SHAREGPT], chat_tokenizer)[0]
    assert chat_tokenizer.decode(s["input_ids"]) == (
        f"<|im_start|>system\nBe brief.{END}{U}Hi{END}{A}Hello.{END}{U}2+3?{END}{A}5{END}"
    )
    assert masked_runs(chat_tokenizer, s["input_ids"], s["loss_mask"]) == ["Hello.<|im_end|>", "5<|im_end|>"]


def test_sharegpt_unknown_speaker_needs_the_role_map(write_jsonl, chat_tokenizer):
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "bot", "value": "Hello."}]}
    data = build("sft", write_jsonl, [SHAREGPT, row], chat_tokenizer)
    assert len(data) == 1 and data.bad[0].reason == "unknown ShareGPT speaker 'bot'"
    assert "+data.role_map.bot=" in data.bad[0].detail
    mapped = build("sft", write_jsonl, [SHAREGPT, row], chat_tokenizer, role_map={"bot": "assistant"})
    assert len(mapped) == 2 and not mapped.bad


ALPACA = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5", "text": "unused"},
    {"instruction": "Say hello.", "input": "", "output": "Hello.", "text": "unused"},
]


def test_alpaca_input_is_in_the_prompt_and_a_blank_input_leaves_no_separator(write_jsonl, chat_tokenizer):
    assert detected(ALPACA, "sft") == "alpaca"
    data = build("sft", write_jsonl, ALPACA, chat_tokenizer)
    texts = sorted(chat_tokenizer.decode(s["input_ids"]) for s in data.samples)
    assert texts == [f"{U}Add the numbers.\n\n2 and 3{END}{A}5{END}", f"{U}Say hello.{END}{A}Hello.{END}"]
    for s in data.samples:
        assert masked_runs(chat_tokenizer, s["input_ids"], s["loss_mask"])[0] in ("5<|im_end|>", "Hello.<|im_end|>")


def test_alpaca_template_with_named_fields_before_the_chat_template(write_jsonl, chat_tokenizer):
    template = "### Instruction:\n{instruction}\n\n### Input:\n{input}"
    data = build("sft", write_jsonl, ALPACA, chat_tokenizer, prompt_template=template)
    texts = sorted(chat_tokenizer.decode(s["input_ids"]) for s in data.samples)
    assert texts[0] == f"{U}### Instruction:\nAdd the numbers.\n\n### Input:\n2 and 3{END}{A}5{END}"
    assert texts[1] == f"{U}### Instruction:\nSay hello.{END}{A}Hello.{END}"


def test_prompt_template_blank_fields():
    t = "{instruction}\n\n{input}"
    assert apply_prompt_template(t, {"instruction": "A", "input": "B"}) == "A\n\nB"
    assert apply_prompt_template(t, {"instruction": "A", "input": ""}) == "A"
    # A blank first field takes the separator after it.
    assert apply_prompt_template("{input}\n\n{instruction}", {"instruction": "A", "input": " "}) == "A"
    assert apply_prompt_template("Q: {}\nA:", {}, prompt="hi") == "Q: hi\nA:"


def test_messages_prompt_response_and_pairs(write_jsonl, chat_tokenizer):
    conv = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    assert detected([conv], "sft") == "messages"
    s = build("sft", write_jsonl, [conv], chat_tokenizer)[0]
    assert masked_runs(chat_tokenizer, s["input_ids"], s["loss_mask"]) == ["Hello.<|im_end|>"]
    pr = {"prompt": "What is 2 plus 3?", "response": "It is 5."}
    assert detected([pr], "sft") == "prompt_response"
    s = build("sft", write_jsonl, [pr], chat_tokenizer)[0]
    assert chat_tokenizer.decode(s["input_ids"]) == f"{U}What is 2 plus 3?{END}{A}It is 5.{END}"
    pair = {"prompt": "What is 2 plus 3?", "chosen": "It is 5.", "rejected": "It is 6."}
    assert detected([pair], "pair") == "pairs"
    s = build("pair", write_jsonl, [pair], chat_tokenizer)[0]
    assert masked_runs(chat_tokenizer, s["chosen_ids"], s["chosen_mask"]) == ["It is 5.<|im_end|>"]


GSM8K = {
    "question": "Tom has 1,200 apples and buys 34 more. How many now?",
    "answer": "1,200 + 34 = <<1200+34=1234>>1,234\n#### 1,234",
}


def test_gsm8k_prompt_and_reward_fields(write_jsonl, chat_tokenizer):
    assert detected([GSM8K], "prompt") == "gsm8k"
    s = build("prompt", write_jsonl, [GSM8K], chat_tokenizer)[0]
    assert s["text"] == f"{U}{GSM8K['question']}{END}{A}"
    # The reward field is the text after '####' without thousands commas; the worked solution stays too.
    assert s["fields"]["answer"] == "1234" and s["fields"]["solution"] == GSM8K["answer"]
    from rlhf.rewards.functions import math_exact_match

    assert math_exact_match([s["text"]] * 2, ["The answer is 1234.", "1200"], [s["fields"]["answer"]] * 2) == [1.0, 0.0]
    sft = build("sft", write_jsonl, [GSM8K], chat_tokenizer)[0]
    assert masked_runs(chat_tokenizer, sft["input_ids"], sft["loss_mask"]) == [GSM8K["answer"] + "<|im_end|>"]


def test_openrlhf_prompt_collection(write_jsonl, chat_tokenizer):
    row = {"dataset": "math", "context_messages": [{"role": "user", "content": "What is 2 plus 3?"}], "answer": "5"}
    assert detected([row], "prompt") == "prompt_collection"
    s = build("prompt", write_jsonl, [row], chat_tokenizer)[0]
    assert s["text"] == f"{U}What is 2 plus 3?{END}{A}" and s["fields"]["answer"] == "5"


def test_kto_unpaired_rows_with_message_lists(write_jsonl, chat_tokenizer):
    rows = [
        {
            "prompt": [{"role": "user", "content": "What is 2 plus 3?"}],
            "completion": [{"role": "assistant", "content": f"It is {5 + i}."}],
            "label": i == 0,
        }
        for i in range(2)
    ]
    assert detected(rows, "unpaired") == "kto"
    data = build("unpaired", write_jsonl, rows, chat_tokenizer)
    by_label = {s["label"]: masked_runs(chat_tokenizer, s["input_ids"], s["loss_mask"]) for s in data.samples}
    assert by_label == {True: ["It is 5.<|im_end|>"], False: ["It is 6.<|im_end|>"]}


def test_text_and_prm(write_jsonl, chat_tokenizer):
    assert detected([{"text": "Two plus three is five."}], "pretrain") == "text"
    prm = {"prompt": "2+3?", "completions": ["2 + 3 = 5", "so 5"], "labels": [True, True]}
    assert detected([prm], "prm") == "prm"
    s = build("prm", write_jsonl, [prm], chat_tokenizer)[0]
    assert sum(s["step_mask"]) == 2


def test_every_format_example_is_detected_as_itself():
    for fmt in FORMATS.values():
        if fmt.name != "custom":
            assert detected([fmt.example], fmt.tasks[0]) == fmt.name, fmt.name


def test_ambiguous_rows_name_the_candidates_and_the_fix():
    row = {
        "messages": SHAREGPT["conversations"][:0]
        or [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        "conversations": SHAREGPT["conversations"],
    }
    with pytest.raises(DataError) as info:
        detected([row], "sft")
    msg = str(info.value)
    assert "several formats equally well (sharegpt, messages" in msg and "data.format=sharegpt" in msg


def test_format_that_cannot_serve_the_task_names_its_algorithms():
    kto = FORMATS["kto"].example
    with pytest.raises(DataError) as info:
        detected([kto], "pair")
    assert "format kto" in str(info.value) and "algo=kto" in str(info.value)


def test_unknown_rows_list_their_keys_and_the_formats():
    with pytest.raises(DataError) as info:
        detected([{"foo": "x", "bar": 1}], "sft")
    msg = str(info.value)
    assert "no known format matches the rows (keys ['foo', 'bar']" in msg and "hh_rlhf (chosen, rejected)" in msg


def test_wrong_type_says_what_was_expected_and_which_key_holds_it(write_jsonl, chat_tokenizer):
    rows = [{"instruction": ["Add"], "task": "Add the numbers.", "output": "5"}] * 3
    with pytest.raises(DataError) as info:
        build("sft", write_jsonl, rows, chat_tokenizer, format="alpaca")
    msg = str(info.value)
    assert "wrong type at key 'instruction'" in msg and "expected a non-empty string, got a list of str" in msg
    assert "key 'task' holds a non-empty string" in msg


def test_suspicious_rows_are_refused_with_their_reason(write_jsonl, chat_tokenizer):
    good = {"prompt": "What is 2 plus 3?", "chosen": "It is 5.", "rejected": "It is 6."}
    same = {"prompt": "What is 2 plus 3?", "chosen": "It is 5.", "rejected": "It is 5."}
    echo = {
        "prompt": "Q: What is 2 plus 3? A: It is five, surely.",
        "chosen": "It is five, surely.",
        "rejected": "It is 6.",
    }
    data = build("pair", write_jsonl, [good, good, good, same, echo], chat_tokenizer, format="pairs")
    assert sorted(b.reason for b in data.bad) == [
        "chosen identical to rejected",
        "prompt contains its own chosen response",
    ]
    empty = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]}
    conv = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
    sft = build("sft", write_jsonl, [conv, conv, empty], chat_tokenizer)
    assert [b.reason for b in sft.bad] == ["empty response"]


def test_custom_keys_keep_working(write_jsonl, chat_tokenizer):
    rows = [{"q": "What is 2 plus 3?", "a": "It is 5."}]
    path = write_jsonl("rows.jsonl", rows)
    cfg = DataConfig(sources={"s": SourceConfig(path=str(path), input_key="q", output_key="a")}, eval_fraction=0.0)
    s = build_dataset("sft", cfg, chat_tokenizer)[0]
    assert masked_runs(chat_tokenizer, s["input_ids"], s["loss_mask"]) == ["It is 5.<|im_end|>"]


def test_kto_labels_written_as_strings_name_the_label_not_a_poorer_format():
    rows = [
        {"prompt": f"What is {i} plus 1?", "completion": str(i + 1), "label": "true", "_origin": f"k.jsonl:{i + 1}"}
        for i in range(4)
    ]
    with pytest.raises(DataError) as info:
        detect_format(rows, "unpaired", FormatOptions(), source="train")
    msg = str(info.value)
    assert "k.jsonl:1" in msg and "the rows have the keys of format kto (prompt, completion, label)" in msg
    assert "wrong type at key 'label' (expected a label (true/false or 1/0), got a string)" in msg
    assert '"label": true' in msg and "prompt_response" not in msg
    # Real booleans detect as KTO; the same rows for SFT detect as prompt + completion.
    good = [{**r, "label": i % 2 == 0} for i, r in enumerate(rows)]
    assert detect_format(good, "unpaired", FormatOptions(), source="train").format.name == "kto"
    assert detect_format(rows, "sft", FormatOptions(), source="train").format.name == "prompt_response"
