"""Schema of the `engine` group: how a training role builds its DeepSpeed engine.

Fields left None are chosen by the planner (rlhf/plan.py) from the memory estimate: the fastest setting that
fits, in the order ZeRO-2, ZeRO-3, ZeRO-2 + CPU Adam, ZeRO-3 + CPU Adam, ZeRO-3 + CPU Adam + offloaded weights.
A value given in an option file (engine=zero3), a tuning file or on the command line is kept as given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class EngineConfig:
    # ZeRO stage 0-3 (None: the planner's choice).
    zero_stage: Optional[int] = None
    # auto: bf16 on GPUs that support it, fp32 on CPU.
    dtype: str = "auto"
    # None: on for GPU runs (every OpenRLHF example script passes --gradient_checkpointing), off on CPU.
    gradient_checkpointing: Optional[bool] = None
    # Keep optimizer states (and the Adam step) on the CPU: DeepSpeed CPU Adam (None: only when needed to fit).
    offload_optimizer: Optional[bool] = None
    # ZeRO-3 only: keep parameters on the CPU between uses (None: only when needed to fit).
    offload_params: Optional[bool] = None
    # RL log-prob and training passes: the LM head runs inside the log-prob computation, chunk by chunk, so no
    # [tokens, vocabulary] logits are kept for backward (models whose head is a plain linear layer; others keep
    # the logits path: rlhf/training/sequences.py PLAIN_HEAD_MODEL_TYPES).
    fused_lm_head: bool = True
    # On GPUs, the fused head's per-chunk math goes through torch.compile (one fused kernel per pass over a
    # chunk's logits instead of one per operation).
    compile_lm_head: bool = True
    # Extra entries merged into the generated DeepSpeed config (expert use).
    deepspeed_overrides: Dict[str, Any] = field(default_factory=dict)
