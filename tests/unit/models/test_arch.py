"""rlhf/models/arch.py: architecture from config.json and safetensors headers, hub ids, presets, missing paths."""

from __future__ import annotations

import json
import struct

import pytest

from rlhf.models.arch import ArchError, find_arch, from_config_json, looks_like_path, safetensors_params


def _safetensors(path, shapes: dict) -> None:
    """A safetensors file whose header lists `shapes` (its data bytes are never read by the count)."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, shape in shapes.items():
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * offset)


def test_parameter_count_is_summed_from_every_shard_header(tmp_path):
    # 10 x 20 + 20 = 220 in one shard, 5 x 5 x 4 = 100 in the other: 320.
    _safetensors(tmp_path / "model-00001-of-00002.safetensors", {"a.weight": [10, 20], "a.bias": [20]})
    _safetensors(tmp_path / "model-00002-of-00002.safetensors", {"b.weight": [5, 5, 4]})
    assert safetensors_params(tmp_path) == 320
    assert safetensors_params(tmp_path / "nothing") is None


def test_a_broken_header_is_named(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 40))
    with pytest.raises(ArchError, match="damaged or not safetensors"):
        safetensors_params(tmp_path)


def test_config_json_of_a_mixture_of_experts():
    # Mixtral-8x7B's config.json fields; without weights the count comes from the shape:
    # 32 x (2 x 4096^2 + 2 x 4096 x 1024 + 3 x 4096 x 14336 x 8) + 2 x 32000 x 4096 = 46.70e9.
    cfg = {
        "model_type": "mixtral",
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 32000,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "max_position_embeddings": 32768,
    }
    a = from_config_json(cfg, None, "test")
    assert (a.num_experts, a.experts_per_token, a.num_kv_heads, a.tie_word_embeddings) == (8, 2, 8, False)
    expected = 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336 * 8) + 2 * 32000 * 4096
    assert a.params_b == pytest.approx(expected / 1e9)


def test_lookup_order_and_messages(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # A preset by file name or by its hub id.
    assert find_arch("llama3_8b").hidden_size == find_arch("meta-llama/Meta-Llama-3-8B").hidden_size == 4096
    with pytest.raises(ArchError, match="unknown offline.*huggingface-cli download someone/unknown"):
        find_arch("someone/unknown")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArchError, match=f"not found: {tmp_path}/mymodel does not exist"):
        find_arch("./mymodel")
    assert looks_like_path("/x/y") and looks_like_path("./m") and not looks_like_path("org/name")


def test_a_hub_id_in_the_hf_cache_is_read_offline(tmp_path, monkeypatch):
    """The cache layout huggingface_hub uses: models--org--name/snapshots/<rev>/ and refs/main."""
    root = tmp_path / "hf" / "hub" / "models--someone--small"
    snap = root / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text("abc123")
    (snap / "config.json").write_text(
        json.dumps(
            {
                "model_type": "llama",
                "hidden_size": 8,
                "num_hidden_layers": 1,
                "num_attention_heads": 2,
                "vocab_size": 10,
            }
        )
    )
    _safetensors(snap / "model.safetensors", {"w": [10, 8]})
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    a = find_arch("someone/small")
    assert a.params_b * 1e9 == pytest.approx(80) and "Hugging Face cache" in a.source
