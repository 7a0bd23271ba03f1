"""Schema of the `engine` group: how a training role builds its DeepSpeed engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict


@dataclass
class EngineConfig:
    # ZeRO stage 0-3.
    zero_stage: int = 2
    # auto: bf16 on GPUs that support it, fp32 on CPU.
    dtype: str = "auto"
    gradient_checkpointing: bool = False
    # Keep optimizer states (and the Adam step) on the CPU: DeepSpeed CPU Adam.
    offload_optimizer: bool = False
    # ZeRO-3 only: keep parameters on the CPU between uses.
    offload_params: bool = False
    # Extra entries merged into the generated DeepSpeed config (expert use).
    deepspeed_overrides: Dict[str, Any] = field(default_factory=dict)
