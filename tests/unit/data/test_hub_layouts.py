"""Data sets as the hub publishes them, downloaded to a folder (`huggingface-cli download ... --local-dir`):
README.md `configs:` decide the files of a split; without them the hub's file naming does (split name before
the first `-`, across subfolders, .gz included); near misses are listed, never guessed."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhf.config.data import SourceConfig
from rlhf.data.errors import DataError
from rlhf.data.readers import read_source, split_available


def _parquet(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def _jsonl_gz(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def _rows(tag: str, n: int) -> list[dict]:
    return [{"prompt": f"{tag} {i}", "chosen": "a", "rejected": "b"} for i in range(n)]


UF_README = """---
language:
- en
configs:
- config_name: default
  data_files:
  - split: train_prefs
    path: data/train_prefs-*
  - split: train_sft
    path: data/train_sft-*
  - split: test_prefs
    path: data/test_prefs-*
  - split: test_sft
    path: data/test_sft-*
---
# UltraFeedback binarized
"""


@pytest.fixture
def ultrafeedback(tmp_path) -> Path:
    root = tmp_path / "ultrafeedback_binarized"
    for split, n in (("train_prefs", 5), ("train_sft", 7), ("test_prefs", 2), ("test_sft", 3)):
        _parquet(root / "data" / f"{split}-00000-of-00001.parquet", _rows(split, n))
    (root / ".cache" / "huggingface").mkdir(parents=True)
    _parquet(root / ".cache" / "huggingface" / "train-stale.parquet", _rows("stale", 9))  # never read
    return root


def test_readme_configs_pick_the_files_of_a_split(ultrafeedback):
    (ultrafeedback / "README.md").write_text(UF_README)
    src = SourceConfig(path=str(ultrafeedback), split="train_prefs", eval_split="test_prefs")
    rows = read_source("uf", src, "train_prefs").rows
    assert [r["prompt"] for r in rows] == [f"train_prefs {i}" for i in range(5)]
    assert len(read_source("uf", src, "test_prefs").rows) == 2
    assert split_available("uf", src, "test_prefs") and not split_available("uf", src, "test")
    with pytest.raises(DataError) as err:  # the default split name does not exist: the real ones are listed
        read_source("uf", SourceConfig(path=str(ultrafeedback)), "train")
    assert "train_prefs" in str(err.value) and "data.sources.uf.split" in str(err.value)


def test_without_readme_near_split_names_are_listed_not_merged(ultrafeedback):
    with pytest.raises(DataError) as err:
        read_source("uf", SourceConfig(path=str(ultrafeedback)), "train")
    text = str(err.value)
    assert "['train_prefs', 'train_sft']" in text and "data.sources.uf.split=train_prefs" in text
    rows = read_source("uf", SourceConfig(path=str(ultrafeedback), split="train_sft"), "train_sft").rows
    assert len(rows) == 7  # the split named, from the data/ subfolder


def test_several_readme_configs_need_hub_config(tmp_path):
    root = tmp_path / "gsm8k"
    readme = "---\nconfigs:\n"
    for config in ("main", "socratic"):
        readme += f"- config_name: {config}\n  data_files:\n"
        for split, n in (("train", 4), ("test", 2)):
            _parquet(root / config / f"{split}-00000-of-00001.parquet", _rows(f"{config} {split}", n))
            readme += f"  - split: {split}\n    path: {config}/{split}-*\n"
    (root / "README.md").write_text(readme + "---\n")
    with pytest.raises(DataError) as err:
        read_source("gsm", SourceConfig(path=str(root)), "train")
    assert "data.sources.gsm.hub_config=main" in str(err.value) and "socratic" in str(err.value)
    rows = read_source("gsm", SourceConfig(path=str(root), hub_config="socratic"), "test").rows
    assert [r["prompt"] for r in rows] == ["socratic test 0", "socratic test 1"]


def test_hh_rlhf_layout_reads_every_subfolders_gzipped_split(tmp_path):
    root = tmp_path / "hh-rlhf"
    _jsonl_gz(root / "harmless-base" / "train.jsonl.gz", _rows("harmless", 3))
    _jsonl_gz(root / "helpful-base" / "train.jsonl.gz", _rows("helpful", 4))
    _jsonl_gz(root / "helpful-base" / "test.jsonl.gz", _rows("helpful test", 2))
    _jsonl_gz(root / "red-team-attempts" / "red_team_attempts.jsonl.gz", [{"transcript": "x"}])
    out = read_source("hh", SourceConfig(path=str(root)), "train")
    assert sorted(r["prompt"].split()[0] for r in out.rows) == ["harmless"] * 3 + ["helpful"] * 4
    assert out.rows[0]["_origin"].endswith("harmless-base/train.jsonl.gz:1")
    assert len(read_source("hh", SourceConfig(path=str(root)), "test").rows) == 2
    one = read_source("hh", SourceConfig(path=str(root), hub_config="helpful-base"), "train").rows
    assert len(one) == 4


def test_gzipped_single_files(tmp_path):
    _jsonl_gz(tmp_path / "rows.jsonl.gz", _rows("r", 3))
    assert len(read_source("x", SourceConfig(path=str(tmp_path / "rows.jsonl.gz")), "train").rows) == 3
    with gzip.open(tmp_path / "rows.json.gz", "wt") as f:
        json.dump(_rows("j", 2), f)
    assert len(read_source("x", SourceConfig(path=str(tmp_path / "rows.json.gz")), "train").rows) == 2


def test_shards_of_one_split_are_read_together(tmp_path):
    for i in range(2):
        (tmp_path / f"train_{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows(f"s{i}", 2)))
    assert len(read_source("x", SourceConfig(path=str(tmp_path)), "train").rows) == 4


def _uf_messages(tag: str, n: int) -> list[dict]:
    def turn(q, a):
        return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]

    return [
        {"prompt": f"{tag} {i}?", "chosen": turn(f"{tag} {i}?", "yes"), "rejected": turn(f"{tag} {i}?", "no")}
        for i in range(n)
    ]


def test_data_split_options_describe_data_train(tmp_path):
    """`data.train=<downloaded folder> data.split=... data.eval_split=...`: the command-line spelling for a data
    set whose splits are not called train/test; the per-source key is refused with this advice."""
    from omegaconf import OmegaConf

    from rlhf.config.cli import rewrite_argv
    from rlhf.config.preflight import ConfigError, compose_config
    from rlhf.data.check import check_run_data
    from rlhf.data.sources import resolve_data

    root = tmp_path / "ultrafeedback_binarized"
    for split, n in (("train_prefs", 40), ("train_sft", 40), ("test_prefs", 6)):
        _parquet(root / "data" / f"{split}-00000-of-00001.parquet", _uf_messages(split, n))
    (root / "README.md").write_text(UF_README)
    args = ["tracking=none", "algo=dpo", f"data.train={root}"]
    cfg = OmegaConf.to_object(
        compose_config(rewrite_argv([*args, "data.split=train_prefs", "data.eval_split=test_prefs"]))
    )
    src = resolve_data(cfg.data).sources["train"]
    assert (src.split, src.eval_split, src.path) == ("train_prefs", "test_prefs", str(root))
    report = check_run_data(cfg)
    assert [(s.format, s.good) for s in report.sources] == [("ultrafeedback", 40)]
    with pytest.raises(ConfigError) as err:
        compose_config(rewrite_argv([*args, "data.sources.train.split=train_prefs"]))
    assert "data.split=" in str(err.value)
