"""Data digests: equal exactly when the bytes a reader sees are equal."""

from __future__ import annotations

import hashlib

from rlhf.config.data import DataConfig, SourceConfig
from rlhf.tracking.datasets import DIGEST_CHARS, digest_path, source_digests


def test_file_digest_is_sha256_prefix_of_its_bytes(tmp_path):
    f = tmp_path / "a.jsonl"
    f.write_bytes(b'{"prompt": "1+1"}\n')
    digest, n_files, n_bytes = digest_path(f)
    assert digest == hashlib.sha256(b'{"prompt": "1+1"}\n').hexdigest()[:DIGEST_CHARS]
    assert (n_files, n_bytes) == (1, 18)  # 17 characters of JSON + newline


def test_directory_digest_depends_on_content_and_names_not_on_creation_order(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "train.jsonl").write_text("x\n")
    (a / "test.jsonl").write_text("y\n")
    (b / "test.jsonl").write_text("y\n")  # same files, written in the other order
    (b / "train.jsonl").write_text("x\n")
    assert digest_path(a) == digest_path(b)
    (b / "train.jsonl").rename(b / "extra.jsonl")  # same bytes under another split name
    assert digest_path(a)[0] != digest_path(b)[0]
    (b / "extra.jsonl").rename(b / "train.jsonl")
    (b / "train.jsonl").write_text("x \n")
    assert digest_path(a)[0] != digest_path(b)[0]


def test_source_digests_cover_local_shipped_and_hub_sources(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "hi"}\n')
    cfg = DataConfig(
        sources={
            "mine": SourceConfig(path=str(f)),
            "shipped": SourceConfig(path="asset:prompts"),
            "hub": SourceConfig(path="org/name"),
        }
    )
    got = {d.name: d for d in source_digests(cfg)}
    assert got["mine"].digest == digest_path(f)[0]
    assert got["shipped"].location.endswith("prompts") and got["shipped"].n_files == 2  # train + test
    assert got["hub"].location is None and got["hub"].digest == "hub:org/name"
