"""Readers: every path form, bad lines located by file:line, the bad-row policies, row validation."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.config.data import SourceConfig
from rlhf.data.errors import DataError, RowError
from rlhf.data.readers import asset_root, enforce_bad_fraction, read_source, validate_row

GOOD = [{"prompt": f"q{i}", "response": f"a{i}"} for i in range(6)]


def _src(path, **kw):
    return SourceConfig(path=str(path), **kw)


# ----------------------------------------------------------------------------------------------------- JSONL


def test_jsonl_skip_counts_bad_lines_and_tags_origins(write_jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Lines: 1-2 good, 3 invalid JSON, 4 blank (not a row), 5 a list (not an object), 6-9 good.
    path = write_jsonl("x.jsonl", GOOD[:2] + ['{"prompt": "q", ', "", "[1, 2]"] + GOOD[2:])
    out = read_source("tiny", _src(path), "train")
    assert len(out.rows) == 6
    assert [b.reason for b in out.bad] == ["invalid JSON", "not a JSON object"]
    assert [b.origin for b in out.bad] == ["x.jsonl:3", "x.jsonl:5"]
    assert out.rows[0]["_origin"] == "x.jsonl:1"
    assert out.rows[2]["_origin"] == "x.jsonl:6"


def test_jsonl_error_policy_names_file_and_line(write_jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write_jsonl("x.jsonl", GOOD[:2] + ['{"prompt": oops}'] + GOOD[2:])
    with pytest.raises(DataError) as err:
        read_source("tiny", _src(path), "train", bad_rows="error")
    message = str(err.value)
    assert "x.jsonl:3" in message and "invalid JSON" in message and "tiny" in message
    assert "data.bad_rows=skip" in message


def test_a_truncated_line_is_placed_at_its_own_end(write_jsonl, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = '{"prompt": "What is 1 plus 1?", "response": "2"'  # the closing brace is missing
    out = read_source("tiny", _src(write_jsonl("x.jsonl", GOOD[:1] + [line] + GOOD[1:])), "train")
    (bad,) = out.bad
    assert (bad.origin, bad.reason) == ("x.jsonl:2", "invalid JSON")
    assert bad.detail == f"Expecting ',' delimiter at column {len(line) + 1}"


def test_too_many_unreadable_lines_stop_the_read(write_jsonl):
    # 3 bad of 5 rows = 0.6 > 0.5.
    path = write_jsonl("x.jsonl", GOOD[:2] + ["nope", "nope", "nope"])
    with pytest.raises(DataError, match=r"3 of 5 rows are bad.*3 x invalid JSON"):
        read_source("tiny", _src(path), "train")
    # 0.6 <= 0.7: accepted.
    assert len(read_source("tiny", _src(path), "train", max_bad_fraction=0.7).bad) == 3


def test_unknown_policy_is_refused(write_jsonl):
    with pytest.raises(DataError, match="data.bad_rows"):
        read_source("tiny", _src(write_jsonl("x.jsonl", GOOD)), "train", bad_rows="ignore")


def test_max_samples_keeps_the_first_rows(write_jsonl):
    out = read_source("tiny", _src(write_jsonl("x.jsonl", GOOD), max_samples=4), "train")
    assert [r["prompt"] for r in out.rows] == ["q0", "q1", "q2", "q3"]


# ------------------------------------------------------------------------------------------- JSON and parquet


def test_json_list_with_a_non_object_item(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(GOOD[:3] + ["text"] + GOOD[3:]))
    out = read_source("tiny", _src(path), "train")
    assert len(out.rows) == 6 and out.bad[0].origin.endswith("x.json:row 3")
    with pytest.raises(DataError, match=r"x.json:row 3.*not a JSON object"):
        read_source("tiny", _src(path), "train", bad_rows="error")


def test_json_file_holding_json_lines_is_read_line_by_line(tmp_path):
    path = tmp_path / "x.json"
    path.write_text("\n".join(json.dumps(r) for r in GOOD[:3]) + "\nbad\n")
    out = read_source("tiny", _src(path), "train")
    assert len(out.rows) == 3 and out.bad[0].origin.endswith("x.json:4")


def test_parquet_rows_carry_their_index(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.Table.from_pylist(GOOD), path)
    out = read_source("tiny", _src(path), "train")
    assert [r["prompt"] for r in out.rows] == [r["prompt"] for r in GOOD]
    assert out.rows[4]["_origin"].endswith("x.parquet:row 4")


def test_damaged_parquet_names_the_file(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"PAR1 not really")
    with pytest.raises(DataError, match="x.parquet"):
        read_source("tiny", _src(path), "train")


# ------------------------------------------------------------------------------------------------ directories


def test_directory_picks_files_of_the_split(write_jsonl, tmp_path):
    write_jsonl("d/train-00000.jsonl", GOOD[:2])
    write_jsonl("d/train-00001.jsonl", GOOD[2:5])
    write_jsonl("d/test.jsonl", GOOD[5:])
    train = read_source("tiny", _src(tmp_path / "d"), "train")
    assert [r["prompt"] for r in train.rows] == ["q0", "q1", "q2", "q3", "q4"]  # sorted file order
    test = read_source("tiny", _src(tmp_path / "d"), "test")
    assert [r["prompt"] for r in test.rows] == ["q5"]
    with pytest.raises(DataError, match="no file for split 'validation'"):
        read_source("tiny", _src(tmp_path / "d", split="validation"), "validation")


def test_directory_without_split_names_is_one_training_split(write_jsonl, tmp_path):
    write_jsonl("d/b.jsonl", GOOD[3:])
    write_jsonl("d/a.jsonl", GOOD[:3])
    assert len(read_source("tiny", _src(tmp_path / "d"), "train").rows) == 6
    # Asking it for an eval split must not silently evaluate on the training rows.
    with pytest.raises(DataError, match="no file for split 'test'"):
        read_source("tiny", _src(tmp_path / "d"), "test")


def test_openrlhf_json_at_form(write_jsonl, tmp_path, monkeypatch):
    write_jsonl("d/train.jsonl", GOOD[:4])
    write_jsonl("d/test.jsonl", GOOD[4:])
    monkeypatch.chdir(tmp_path)
    assert len(read_source("tiny", _src("json@./d"), "test").rows) == 2
    with pytest.raises(DataError, match="not found"):
        read_source("tiny", _src("json@./missing"), "train")


def test_single_file_has_no_other_split(write_jsonl):
    with pytest.raises(DataError, match="single file"):
        read_source("tiny", _src(write_jsonl("x.jsonl", GOOD)), "test")


# ------------------------------------------------------------------------------------------ assets and the hub


def test_missing_asset_lists_what_ships():
    with pytest.raises(DataError, match="no shipped data set 'asset:no_such_set'"):
        read_source("tiny", _src("asset:no_such_set"), "train")


@pytest.mark.skipif(not (asset_root() / "preference").is_dir(), reason="shipped preference data not present")
def test_asset_directory_and_file_forms():
    train = read_source("pref", _src("asset:preference"), "train")
    test = read_source("pref", _src("asset:preference"), "test")
    assert train.rows and test.rows and not train.bad
    assert set(train.rows[0]) >= {"prompt", "chosen", "rejected"}
    assert train.rows[0]["_origin"].endswith("train.jsonl:1")
    # A file named without its suffix.
    if (asset_root() / "kto.jsonl").exists():
        assert read_source("kto", _src("asset:kto"), "train").rows[0]["_origin"].endswith("kto.jsonl:1")


def test_missing_local_path_is_not_looked_up_on_the_hub(tmp_path):
    with pytest.raises(DataError, match="was not found locally"):
        read_source("tiny", _src(tmp_path / "nowhere" / "x.jsonl"), "train")


def test_unreachable_hub_name_says_local_and_hub_both_failed(tmp_path):
    # A fresh interpreter so that HF_HUB_OFFLINE is read at import, as in a real offline run.
    code = (
        "from rlhf.config.data import SourceConfig\n"
        "from rlhf.data.readers import read_source\n"
        "from rlhf.data.errors import DataError\n"
        "try:\n"
        "    read_source('hub', SourceConfig(path='someorg/no_such_data_set'), 'train')\n"
        "except DataError as e:\n"
        "    print(e)\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "was not found locally" in out.stdout, out.stderr[-2000:]
    assert "hub" in out.stdout and "offline" in out.stdout.lower()
    assert "data.sources.hub.path" in out.stdout


# ------------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "row, required, reason",
    [
        ({"q": "x"}, {"prompt": "text"}, "missing key 'prompt'"),
        ({"prompt": None}, {"prompt": "text"}, "missing key 'prompt'"),
        ({"prompt": "  "}, {"prompt": "text"}, "empty string at key 'prompt'"),
        ({"prompt": 3}, {"prompt": "text"}, "wrong type at key 'prompt'"),
        ({"prompt": [{"role": "user"}]}, {"prompt": "messages"}, "wrong type at key 'prompt'"),
        ({"prompt": "hi"}, {"prompt": "messages"}, "wrong type at key 'prompt'"),
        ({"steps": ["a", ""]}, {"steps": "str_list"}, "wrong type at key 'steps'"),
        ({"label": 2}, {"label": "label"}, "wrong type at key 'label'"),
        ({"labels": [True, 0.5, 1.5]}, {"labels": "label_list"}, "wrong type at key 'labels'"),
    ],
)
def test_validate_row_names_the_key_and_fault(row, required, reason):
    with pytest.raises(RowError) as err:
        validate_row(row, required)
    assert err.value.reason == reason
    assert err.value.key == next(iter(required))


def test_validate_row_accepts_each_kind():
    validate_row(
        {
            "p": "hi",
            "m": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}],
            "s": ["a", "b"],
            "l": 1,
            "ls": [True, 0, 0.25],
            "f": 0,
        },
        {"p": "text", "m": "text", "s": "str_list", "l": "label", "ls": "label_list", "f": "any"},
    )


def test_messages_problem_says_which_message():
    with pytest.raises(RowError, match="message 1 has no string 'content'"):
        validate_row({"m": [{"role": "user", "content": "a"}, {"role": "assistant"}]}, {"m": "messages"})


def test_bad_fraction_message_suggests_the_key_override():
    from rlhf.data.errors import BadRow

    rows = [{"question": "q", "answer": "a", "_origin": "x:1"}] * 4
    bad = [BadRow("tiny", f"x.jsonl:{i}", "missing key 'prompt'", key="prompt") for i in range(1, 4)]
    with pytest.raises(DataError) as err:
        enforce_bad_fraction("tiny", 4, bad, 0.5, rows=rows, key_fields={"prompt": "input_key"})
    message = str(err.value)
    assert "3 of 4 rows are bad" in message and "first at x.jsonl:1" in message
    assert "['answer', 'question']" in message and "data.sources.tiny.input_key=" in message


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_byte_order_mark_is_not_part_of_the_first_row(tmp_path, suffix):
    rows = [{"prompt": "a", "response": "b"}, {"prompt": "c", "response": "d"}]
    text = "\n".join(json.dumps(r) for r in rows) if suffix == ".jsonl" else json.dumps(rows)
    path = tmp_path / f"bom{suffix}"
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    read = read_source("bom", SourceConfig(path=str(path)), "train")
    assert [r["prompt"] for r in read.rows] == ["a", "c"] and read.bad == []
