"""Schema of the `model` group: which weights to load and the architecture numbers the planner needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

from omegaconf import MISSING


@dataclass
class LoraConfig:
    # rank 0 disables LoRA (full fine-tuning).
    rank: int = 0
    alpha: int = 16
    dropout: float = 0.0
    target_modules: List[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    # QLoRA: load the frozen base in 4 bits with bitsandbytes (needs the `quant` extra).
    load_in_4bit: bool = False


@dataclass
class ModelConfig:
    # A Hugging Face name or local path, or `tiny:<arch>` (llama, qwen2, mixtral) for a model built offline.
    name_or_path: str = MISSING
    # Tokenizer to use when it differs from the model's.
    tokenizer: Optional[str] = None
    # A Jinja chat template overriding the tokenizer's own.
    chat_template: Optional[str] = None
    trust_remote_code: bool = False
    # auto: flash_attention_2 when installed and on GPU, else sdpa.
    attn_implementation: str = "auto"
    # Mixture-of-experts router load-balancing loss coefficient (0 disables; Mixtral uses 0.02).
    moe_aux_loss_coef: float = 0.0
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Architecture numbers for the planner (memory estimate); filled by each preset from the model's HF
    # config.json. model_type is that file's `model_type` (llama, qwen2, mixtral): it lets tools rebuild the
    # architecture offline (benchmarks/memory_check.py).
    model_type: str = "llama"
    # The LM head shares the embedding matrix (Qwen2.5 up to 3B): one vocab x hidden matrix instead of two.
    tie_word_embeddings: bool = False
    params_b: float = MISSING
    hidden_size: int = MISSING
    num_layers: int = MISSING
    num_heads: int = MISSING
    num_kv_heads: int = MISSING
    intermediate_size: int = MISSING
    vocab_size: int = MISSING
    num_experts: int = 1
    experts_per_token: int = 1
    max_position_embeddings: int = 4096
