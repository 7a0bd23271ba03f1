"""The shipped synthetic data: deterministic, equal to the generators, disjoint splits, documented schemas."""

from __future__ import annotations

import dataclasses
import json
import random
import re
from pathlib import Path

import pytest

from rlhf.data import synthetic
from rlhf.data.synthetic import (
    CORPUS_FILE,
    POLITE_PREFIX,
    SHIPPED_JSONL,
    asset_path,
    main,
    number_words,
    render_assets,
    split_of,
)

DATA = asset_path("data")
_ARITH = re.compile(r"^(\d+) ([-+*]) (\d+) = (\d+)\.$")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}
_CHAIN_OP = re.compile(r"(add|subtract|multiply by) (\d+)")


def read_jsonl(rel: str) -> list[dict]:
    path = DATA / rel
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise AssertionError(f"{path}:{number} is not JSON: {err}") from err
    return rows


def arithmetic_is_right(sentence: str) -> bool:
    """``"12 + 7 = 19."`` -> True; raises if the sentence is not in the canonical form."""
    match = _ARITH.match(sentence)
    assert match, f"not a canonical arithmetic sentence: {sentence!r}"
    a, op, b, c = match.groups()
    return _OPS[op](int(a), int(b)) == int(c)


def chain_answer(prompt: str) -> int:
    """Value of ``Start with 12, add 7, then multiply by 3. What is the result?`` computed from the prompt."""
    value = int(re.match(r"Start with (\d+),", prompt).group(1))
    for word, n in _CHAIN_OP.findall(prompt):
        value = {"add": value + int(n), "subtract": value - int(n), "multiply by": value * int(n)}[word]
    return value


# --------------------------------------------------------------------------------------------------------------
# Determinism and drift


@pytest.mark.parametrize("rel", sorted(SHIPPED_JSONL))
def test_generator_is_deterministic_and_seeded(rel: str) -> None:
    make, _, split = SHIPPED_JSONL[rel]
    assert make(30, split, seed=0) == make(30, split, seed=0)
    assert make(30, split, seed=0) != make(30, split, seed=1)


def test_shipped_files_equal_generator_output() -> None:
    rendered = render_assets()
    assert set(rendered) == set(SHIPPED_JSONL) | {CORPUS_FILE}
    drifted = [rel for rel, text in rendered.items() if (DATA / rel).read_text(encoding="utf-8") != text]
    assert not drifted, f"regenerate with `python -m rlhf.data.synthetic`; drifted: {drifted}"


def test_check_flag_detects_drift(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0
    assert main(["--out", str(tmp_path), "--check"]) == 0
    edited = tmp_path / "kto.jsonl"
    edited.write_text(edited.read_text() + '{"prompt": "x", "completion": "y", "label": true}\n')
    assert main(["--out", str(tmp_path), "--check"]) == 1
    assert main(["--check"]) == 0  # the shipped folder itself


# --------------------------------------------------------------------------------------------------------------
# Splits


def test_split_of_holds_out_about_ten_percent() -> None:
    keys = [f"{a}+{b}" for a in range(100) for b in range(100)]
    share = sum(split_of(k) == "test" for k in keys) / len(keys)
    assert 0.08 < share < 0.12
    assert split_of("12+7") == split_of("12+7")


def _user_texts(rel: str) -> set[str]:
    texts = set()
    for row in read_jsonl(rel):
        if "messages" in row:
            texts |= {m["content"] for m in row["messages"] if m["role"] == "user"}
        elif "chosen" in row and isinstance(row["chosen"], list):
            texts |= {m["content"] for m in row["chosen"] if m["role"] == "user"}
        elif "text" in row:
            continue  # plain pre-training text has no prompts
        else:
            texts.add(row["prompt"])
    return texts


def test_no_test_prompt_appears_in_any_train_file() -> None:
    test_files = [rel for rel in SHIPPED_JSONL if rel.endswith("test.jsonl")]
    train_files = [rel for rel in SHIPPED_JSONL if rel not in test_files]
    test_prompts = set().union(*(_user_texts(rel) for rel in test_files))
    train_prompts = set().union(*(_user_texts(rel) for rel in train_files))
    assert test_prompts and train_prompts
    assert not test_prompts & train_prompts
    for test_rel in test_files:
        train_rel = test_rel.replace("test.jsonl", "train.jsonl")
        train_rows = {json.dumps(r, sort_keys=True) for r in read_jsonl(train_rel)}
        assert not train_rows & {json.dumps(r, sort_keys=True) for r in read_jsonl(test_rel)}


@pytest.mark.parametrize("rel", sorted(SHIPPED_JSONL))
def test_rows_within_a_file_are_distinct(rel: str) -> None:
    rows = [json.dumps(r, sort_keys=True) for r in read_jsonl(rel)]
    assert len(rows) == len(set(rows)) == SHIPPED_JSONL[rel][1]


# --------------------------------------------------------------------------------------------------------------
# Schemas (as documented in rlhf/assets/data/README.md)


def _check_messages(messages: list[dict]) -> None:
    assert all(list(m) == ["role", "content"] and isinstance(m["content"], str) for m in messages)
    roles = [m["role"] for m in messages]
    if roles[0] == "system":
        roles = roles[1:]
    # after an optional system turn: user, assistant, user, assistant, ...
    assert roles == ["user", "assistant"] * (len(roles) // 2) and roles, roles


@pytest.mark.parametrize("rel", ["sft/train.jsonl", "sft/test.jsonl"])
def test_sft_schema(rel: str) -> None:
    rows = read_jsonl(rel)
    turns = []
    for row in rows:
        assert list(row) == ["messages"]
        _check_messages(row["messages"])
        turns.append(sum(m["role"] == "assistant" for m in row["messages"]))
        for m in row["messages"]:
            if m["role"] == "assistant" and _ARITH.match(m["content"]):
                assert arithmetic_is_right(m["content"]), m
    assert set(turns) == {1, 2}  # single- and multi-turn rows both present
    assert any(row["messages"][0]["role"] == "system" for row in rows)


def test_sft_pairs_schema() -> None:
    for row in read_jsonl("sft_pairs.jsonl"):
        assert list(row) == ["prompt", "response"]
        assert isinstance(row["prompt"], str) and isinstance(row["response"], str)
        assert "<|im_start|>" not in row["prompt"]


@pytest.mark.parametrize("rel", ["preference/train.jsonl", "preference/test.jsonl"])
def test_preference_chosen_is_polite_and_correct(rel: str) -> None:
    rows = read_jsonl(rel)
    wrong_rejected = 0
    for row in rows:
        assert list(row) == ["prompt", "chosen", "rejected"]
        assert row["chosen"].startswith(POLITE_PREFIX) and not row["rejected"].startswith(POLITE_PREFIX)
        body = row["chosen"][len(POLITE_PREFIX) :]
        if _ARITH.match(body):
            assert arithmetic_is_right(body)
            right = body.split(" = ")[1].rstrip(".")
            wrong_rejected += right not in row["rejected"]
    assert wrong_rejected > 0.3 * len(rows)  # most arithmetic rejections also carry a wrong number


def test_preference_chat_shares_the_prompt_prefix() -> None:
    rows = read_jsonl("preference_chat.jsonl")
    for row in rows:
        assert list(row) == ["chosen", "rejected"]
        chosen, rejected = row["chosen"], row["rejected"]
        _check_messages(chosen)
        _check_messages(rejected)
        assert chosen[:-1] == rejected[:-1] and chosen[-1] != rejected[-1]
        assert chosen[-1]["content"].startswith(POLITE_PREFIX)
    assert any(len(row["chosen"]) >= 4 for row in rows)  # some carry an earlier exchange


@pytest.mark.parametrize("rel", ["prompts/train.jsonl", "prompts/test.jsonl"])
def test_prompt_answers_are_right(rel: str) -> None:
    chains = 0
    for row in read_jsonl(rel):
        assert list(row) == ["prompt", "answer"] and row["answer"].isdigit()
        if row["prompt"].startswith("Start with"):
            chains += 1
            assert chain_answer(row["prompt"]) == int(row["answer"]), row
        else:
            a, op, b = re.search(r"(\d+) (\+|-|\*|plus|minus|times) (\d+)", row["prompt"]).groups()
            op = {"plus": "+", "minus": "-", "times": "*"}.get(op, op)
            assert _OPS[op](int(a), int(b)) == int(row["answer"]), row
    assert chains > 0


def test_kto_labels_follow_the_style() -> None:
    rows = read_jsonl("kto.jsonl")
    for row in rows:
        assert list(row) == ["prompt", "completion", "label"] and isinstance(row["label"], bool)
        assert row["label"] == row["completion"].startswith(POLITE_PREFIX)
    share = sum(row["label"] for row in rows) / len(rows)
    assert 0.4 < share < 0.6


def test_prm_labels_mark_the_first_slip_and_after() -> None:
    rows = read_jsonl("prm.jsonl")
    for row in rows:
        assert list(row) == ["prompt", "steps", "labels"] and len(row["steps"]) == len(row["labels"])
        # Recompute: a step is good while every step so far is right and continues from the previous result.
        value, good, expected = int(re.match(r"Start with (\d+),", row["prompt"]).group(1)), True, []
        for step in row["steps"][:-1]:
            a, _, _, c = _ARITH.match(step).groups()
            good = good and int(a) == value and arithmetic_is_right(step)
            expected.append(good)
            value = int(c)
        expected.append(good and row["steps"][-1] == f"The answer is {chain_answer(row['prompt'])}.")
        assert row["labels"] == expected, row
    flawed = sum(not all(row["labels"]) for row in rows) / len(rows)
    assert 0.35 < flawed < 0.65


def test_corpus_is_sized_and_varied() -> None:
    text = (DATA / CORPUS_FILE).read_text(encoding="utf-8")
    assert 100_000 < len(text.encode()) < 300_000
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", text)}
    assert len(words) >= 300
    assert sum(ch.isdigit() for ch in text) / len(text) > 0.05  # numbers are frequent


@pytest.mark.parametrize("rel", sorted(SHIPPED_JSONL) + [CORPUS_FILE])
def test_file_is_small_and_documented(rel: str) -> None:
    assert (DATA / rel).stat().st_size < 250_000
    assert f"`{rel}`" in (DATA / "README.md").read_text()


# --------------------------------------------------------------------------------------------------------------
# Helpers


def test_asset_path_finds_files_and_names_missing_ones() -> None:
    assert asset_path("data", "sft", "train.jsonl").is_file()
    with pytest.raises(FileNotFoundError, match=r"no_such\.jsonl.*python -m rlhf\.data\.synthetic"):
        asset_path("data", "no_such.jsonl")


def test_number_words() -> None:
    assert [number_words(n) for n in (0, 13, 40, 42, 100, 315)] == [
        "zero",
        "thirteen",
        "forty",
        "forty-two",
        "one hundred",
        "three hundred and fifteen",
    ]
    with pytest.raises(ValueError, match="0..999"):
        number_words(1000)


def test_draw_names_an_exhausted_key_space() -> None:
    other = "train" if split_of("fixed") == "test" else "test"

    def fixed_problem(rng: random.Random) -> synthetic.Problem:
        return dataclasses.replace(synthetic.arithmetic_problem(rng), key="fixed")

    with pytest.raises(RuntimeError, match=f"fixed_problem found no {other} problem in 50 draws"):
        synthetic.draw(random.Random(0), fixed_problem, other, max_tries=50)
