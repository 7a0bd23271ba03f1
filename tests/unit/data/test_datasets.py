"""build_dataset: keys from the source config, bad-row reporting, mixtures, eval splits, every task."""

from __future__ import annotations

import pytest

from rlhf.config.data import DataConfig, SourceConfig
from rlhf.data.datasets import build_dataset
from rlhf.data.errors import DataError
from rlhf.data.readers import asset_root


def _data(**kw) -> DataConfig:
    """A DataConfig without the default hold-out, so that row counts below are whole sources."""
    kw.setdefault("eval_fraction", 0.0)
    return DataConfig(**kw)


PAIRS = [{"prompt": f"What is {i} plus 1?", "response": f"The answer is {i + 1}."} for i in range(10)]
CHATS = [
    {
        "messages": [
            {"role": "user", "content": f"What is {i} plus 2?"},
            {"role": "assistant", "content": f"The answer is {i + 2}."},
        ]
    }
    for i in range(5)
]


@pytest.fixture
def two_sources(write_jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Lines 3 and 5 lack "response", line 7 is not JSON: 3 bad of 13 lines.
    lines = PAIRS[:2] + [{"prompt": "q"}] + PAIRS[2:3] + [{"prompt": "q", "answer": "a"}] + PAIRS[3:4]
    lines += ['{"prompt": '] + PAIRS[4:]
    write_jsonl("data/x.jsonl", lines)
    write_jsonl("data/chat.jsonl", CHATS)
    return {
        "tiny": SourceConfig(path="data/x.jsonl"),
        "chat": SourceConfig(path="data/chat.jsonl", input_key="messages", output_key=None),
    }


def test_sft_mixture_and_its_summary(two_sources, chat_tokenizer):
    data = build_dataset("sft", _data(sources=two_sources), chat_tokenizer, "train")
    # N = 10 + 5 = 15 at weights 1:1 -> 7.5 each; the tie's extra row goes to the first source: 8 and 7.
    assert len(data) == 15 and data.source_counts() == {"tiny": 8, "chat": 7}
    assert data.summary() == (
        "sft: 15 rows from 2 sources (tiny: 8, chat: 7); skipped 3 bad rows: "
        "2 missing key 'response' (first at data/x.jsonl:3), 1 invalid JSON (first at data/x.jsonl:7)"
    )
    assert [b.origin for b in data.bad] == ["data/x.jsonl:3", "data/x.jsonl:5", "data/x.jsonl:7"]  # reading order
    sample = data[0]
    assert set(sample) >= {"input_ids", "loss_mask", "source"} and len(data.lengths()) == 15


def test_same_seed_same_dataset(two_sources, chat_tokenizer):
    cfg = _data(sources=two_sources)
    one = build_dataset("sft", cfg, chat_tokenizer, "train", seed=5)
    two = build_dataset("sft", cfg, chat_tokenizer, "train", seed=5)
    other = build_dataset("sft", cfg, chat_tokenizer, "train", seed=6)
    assert one.samples == two.samples and one.samples != other.samples


def test_error_policy_raises_the_first_bad_row_with_its_key(two_sources, chat_tokenizer):
    # Line 3 (missing key) comes before line 7 (invalid JSON): line 3 is reported.
    with pytest.raises(DataError) as err:
        build_dataset("sft", _data(sources={"tiny": two_sources["tiny"]}, bad_rows="error"), chat_tokenizer)
    message = str(err.value)
    assert "data source 'tiny'" in message and "data/x.jsonl:3" in message and "key 'response'" in message


def test_wrong_key_name_stops_with_the_keys_rows_have(write_jsonl, chat_tokenizer):
    path = write_jsonl("q.jsonl", [{"question": f"q{i}", "answer": f"a{i}"} for i in range(6)])
    cfg = _data(sources={"gsm": SourceConfig(path=str(path), output_key="answer")})
    with pytest.raises(DataError) as err:
        build_dataset("sft", cfg, chat_tokenizer)
    message = str(err.value)
    assert "6 of 6 rows are bad" in message and "missing key 'prompt'" in message
    assert "['answer', 'question']" in message and "data.sources.gsm.input_key=question" in message


def test_response_too_long_for_the_budget_is_a_bad_row(write_jsonl, chat_tokenizer):
    rows = [{"prompt": "What is 1 plus 2? " * 8, "response": "3"}] + PAIRS[:4]
    cfg = _data(sources={"s": SourceConfig(path=str(write_jsonl("p.jsonl", rows)))}, max_len=40, prompt_max_len=40)
    data = build_dataset("sft", cfg, chat_tokenizer)
    assert len(data) == 4 and data.bad[0].reason == "no response token left after truncation"


def test_pair_task_in_both_forms(write_jsonl, chat_tokenizer):
    strings = [{"prompt": r["prompt"], "chosen": r["response"], "rejected": "no"} for r in PAIRS[:4]]
    convs = [
        {"chosen": c["messages"], "rejected": c["messages"][:1] + [{"role": "assistant", "content": "no"}]}
        for c in CHATS
    ]
    cfg = _data(
        sources={
            "str": SourceConfig(path=str(write_jsonl("s.jsonl", strings))),
            "chat": SourceConfig(path=str(write_jsonl("c.jsonl", convs))),
        }
    )
    data = build_dataset("pair", cfg, chat_tokenizer)
    assert len(data) == 9 and not data.bad
    for sample in data:
        p = sample["prompt_len"]
        assert sample["chosen_ids"][:p] == sample["rejected_ids"][:p]
    assert data.lengths()[0] == len(data[0]["chosen_ids"]) + len(data[0]["rejected_ids"])


def test_prompt_task_keeps_fields_and_requires_them(write_jsonl, chat_tokenizer):
    rows = [{"prompt": f"What is {i} plus 1?", "answer": str(i + 1)} for i in range(4)] + [{"prompt": "q"}]
    cfg = _data(sources={"rl": SourceConfig(path=str(write_jsonl("r.jsonl", rows)), fields=["answer"])})
    data = build_dataset("prompt", cfg, chat_tokenizer)
    assert sorted(s["fields"]["answer"] for s in data) == ["1", "2", "3", "4"]
    assert data.bad[0].reason == "missing key 'answer'"


def test_unpaired_and_prm_tasks(write_jsonl, chat_tokenizer):
    kto = [{"prompt": "q1", "completion": "good", "label": True}, {"prompt": "q2", "completion": "bad", "label": 0}]
    prm = [{"prompt": "q", "steps": ["1 + 1 = 2.", "The answer is 2."], "labels": [True, False]}] * 2
    kto_cfg = _data(sources={"k": SourceConfig(path=str(write_jsonl("k.jsonl", kto)), output_key="completion")})
    labels = sorted(s["label"] for s in build_dataset("unpaired", kto_cfg, chat_tokenizer))
    assert labels == [False, True]
    prm_cfg = _data(
        sources={"p": SourceConfig(path=str(write_jsonl("p.jsonl", prm)), output_key="steps", label_key="labels")}
    )
    data = build_dataset("prm", prm_cfg, chat_tokenizer, step_tag="<|step|>")
    assert [sum(s["step_mask"]) for s in data] == [2, 2]
    with pytest.raises(DataError, match="step tag"):
        build_dataset("prm", prm_cfg, chat_tokenizer)


def test_eval_fraction_holds_rows_out_of_training(write_jsonl, chat_tokenizer):
    cfg = _data(sources={"s": SourceConfig(path=str(write_jsonl("p.jsonl", PAIRS)))}, eval_fraction=0.2)
    train = build_dataset("sft", cfg, chat_tokenizer, "train")
    held = build_dataset("sft", cfg, chat_tokenizer, "eval")
    # 10 rows, round(0.2 * 10) = 2 held out.
    assert (len(train), len(held)) == (8, 2)
    assert not {tuple(s["input_ids"]) for s in train} & {tuple(s["input_ids"]) for s in held}
    assert held.summary().startswith("sft eval: 2 rows from 1 source (s: 2)")


def test_eval_split_from_a_directory_and_no_eval(write_jsonl, tmp_path, chat_tokenizer):
    write_jsonl("d/train.jsonl", PAIRS[:7])
    write_jsonl("d/test.jsonl", PAIRS[7:])
    with_eval = _data(sources={"s": SourceConfig(path=str(tmp_path / "d"), eval_split="test")})
    assert len(build_dataset("sft", with_eval, chat_tokenizer, "eval")) == 3
    # The default eval_split is "test": the directory's test file.
    assert (
        len(build_dataset("sft", _data(sources={"s": SourceConfig(path=str(tmp_path / "d"))}), chat_tokenizer, "eval"))
        == 3
    )
    without = _data(sources={"s": SourceConfig(path=str(tmp_path / "d"), eval_split=None)})
    empty = build_dataset("sft", without, chat_tokenizer, "eval")
    assert len(empty) == 0 and "no rows" in empty.summary()


def test_unknown_task_and_split(two_sources, chat_tokenizer):
    with pytest.raises(DataError, match="unknown task"):
        build_dataset("ppo", _data(sources=two_sources), chat_tokenizer)
    with pytest.raises(DataError, match="unknown split"):
        build_dataset("sft", _data(sources=two_sources), chat_tokenizer, "test")


SHIPPED = [
    ("sft", SourceConfig(path="asset:sft", input_key="messages", output_key=None, max_samples=60)),
    ("sft", SourceConfig(path="asset:sft_pairs", max_samples=60)),
    ("pair", SourceConfig(path="asset:preference", max_samples=60)),
    ("pair", SourceConfig(path="asset:preference_chat", max_samples=60)),
    ("prompt", SourceConfig(path="asset:prompts", fields=["answer"], max_samples=60)),
    ("unpaired", SourceConfig(path="asset:kto", output_key="completion", max_samples=60)),
    ("prm", SourceConfig(path="asset:prm", output_key="steps", label_key="labels", max_samples=60)),
]


@pytest.mark.parametrize("task, src", SHIPPED, ids=[s.path for _, s in SHIPPED])
def test_shipped_data_sets_build_without_bad_rows(task, src, chat_tokenizer):
    name = src.path.split(":")[1]
    if not any((asset_root() / f).exists() for f in (name, f"{name}.jsonl")):
        pytest.skip(f"asset {name} not shipped yet")
    data = build_dataset(task, _data(sources={name: src}), chat_tokenizer, step_tag="<|step|>")
    assert len(data) == 60 and not data.bad, data.summary()


def test_margin_key_carries_each_pairs_margin_to_the_batch_and_the_loss(write_jsonl, chat_tokenizer):
    """algo.margin_key: the named column reaches the collated batch as [B] and shifts the Bradley-Terry loss."""
    import math

    import torch

    from rlhf.algos.reward import pairwise_loss
    from rlhf.data.collate import collate_pairs

    rows = [{"prompt": f"What is {i} plus 1?", "chosen": f"{i + 1}.", "rejected": "no", "gap": i} for i in range(4)]
    rows.append({"prompt": "What is 9 plus 1?", "chosen": "10.", "rejected": "no", "gap": "wide"})
    cfg = _data(sources={"m": SourceConfig(path=str(write_jsonl("m.jsonl", rows)))}, max_bad_fraction=0.5)
    data = build_dataset("pair", cfg, chat_tokenizer, margin_key="gap")
    samples = sorted(data, key=lambda s: s["margin"])  # the mixture shuffles rows
    assert [s["margin"] for s in samples] == [0.0, 1.0, 2.0, 3.0]
    assert len(data.bad) == 1 and "gap" in data.bad[0].reason
    batch = collate_pairs(samples, pad_id=0)
    assert batch["margin"].tolist() == [0.0, 1.0, 2.0, 3.0]
    # -log sigmoid(r_c - r_r - m) with r_c - r_r = 1: m = 0 -> log(1 + e^-1) = 0.3133, m = 1 -> log 2 = 0.6931.
    loss = pairwise_loss(torch.ones(4), torch.zeros(4), margin=batch["margin"])
    assert loss[:2].tolist() == pytest.approx([math.log1p(math.exp(-1)), math.log(2)], abs=1e-6)
    # Without the key the batch has no margin and the loss is plain Bradley-Terry.
    plain = build_dataset("pair", cfg, chat_tokenizer)
    assert "margin" not in collate_pairs(list(plain), pad_id=0) and not plain.bad
