"""Schema of the `model` group: which weights to load, the architecture numbers the planner needs, and the
model-scale training values a preset suggests.

`name_or_path` alone is enough: architecture numbers left unset (None) are read by the planner from the
model's config.json and safetensors headers (rlhf/models/arch.py): a local folder, the Hugging Face cache, or
the preset of conf/model/ naming the same hub id. Numbers given here (a preset, the command line) win.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

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
class ScaleDefaults:
    """Training values that depend on the model's scale, for one algorithm (None: the rule in rlhf/scale.py).

    A preset keys them by algorithm name (`pretrain`) or by the algorithm's schema (`sft`, `rm`, `dpo` for
    dpo/ipo/cdpo, `kto`, `rl` for every on-policy algorithm). Values in `algo.*` (command line, tuning file)
    win over these.
    """

    lr: Optional[float] = None
    critic_lr: Optional[float] = None
    train_batch_samples: Optional[int] = None
    # The largest micro-batch to try (the planner lowers it to divide the batch over the ranks).
    micro_batch_per_gpu: Optional[int] = None
    # On-policy: rollout samples per step (prompts_per_step x samples_per_prompt).
    rollout_samples: Optional[int] = None


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
    # Ring attention (sequence parallelism, rlhf/models/ring_attention.py): each packed row of the trained model
    # is split over this many consecutive ranks, which see the same samples (data-parallel ranks = processes /
    # ring_attn_size). 1: no split. ring_head_stride: key/value heads gathered at a time (divides their count).
    ring_attn_size: int = 1
    ring_head_stride: int = 1
    lora: LoraConfig = field(default_factory=LoraConfig)
    # Architecture numbers for the planner (memory estimate), as in the model's HF config.json; None: read from
    # the model (rlhf/models/arch.py). model_type is that file's `model_type` (llama, qwen2, mixtral): it lets
    # tools rebuild the architecture offline (benchmarks/memory_check.py).
    model_type: Optional[str] = None
    # The LM head shares the embedding matrix (Qwen2.5 up to 3B): one vocab x hidden matrix instead of two.
    tie_word_embeddings: Optional[bool] = None
    params_b: Optional[float] = None
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    num_kv_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    vocab_size: Optional[int] = None
    num_experts: Optional[int] = None
    experts_per_token: Optional[int] = None
    max_position_embeddings: Optional[int] = None
    # Model-scale training values by algorithm (see ScaleDefaults); empty: rlhf/scale.py's rule by size.
    train_defaults: Dict[str, ScaleDefaults] = field(default_factory=dict)


@dataclass
class RoleModelConfig:
    """The weights of a critic or reference model when they differ from the actor's (`critic.name_or_path=...`).

    name_or_path: None for the actor's own model; a preset of conf/model (`llama3_8b`), a local Hugging Face
    folder or a hub id. Its architecture is read like the actor's (preset numbers, config.json, safetensors).
    """

    name_or_path: Optional[str] = None
    trust_remote_code: bool = False
