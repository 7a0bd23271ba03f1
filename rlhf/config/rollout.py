"""Schema of the `rollout` group: how responses are generated for on-policy algorithms."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class RolloutConfig:
    # hf: transformers generate inside the actor (CPU and small GPUs); vllm: vLLM engines as Ray actors.
    backend: str = "hf"
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    # Keep generating past EOS (fixed-length responses, for benchmarks).
    ignore_eos: bool = False
    # HF backend: rows generated at once per policy rank. None: the planner's choice (64 on CPU; on GPUs the
    # largest up to 64 whose KV cache and kept logits fit beside the training states).
    generate_batch: Optional[int] = None
    # vLLM backend; None: chosen by the planner (engines cover the rollout GPUs, the smallest tensor-parallel
    # size whose weights leave room for KV cache, the memory fraction the training states leave free).
    num_engines: Optional[int] = None
    tensor_parallel_size: Optional[int] = None
    gpu_memory_utilization: Optional[float] = None
    # Free the engine's weights and KV cache while training runs on the same GPUs. None: the planner's choice (a
    # colocated vLLM engine sleeps, and stays awake for algo.async_rollout where it fits; the plan says whether
    # staying awake would keep the training setting: rlhf/plan.py _fill_sleep_engine_and_micro).
    enable_sleep: Optional[bool] = None
    # 1 keeps a host copy of the weights while asleep; 2 drops them (each update replaces them anyway).
    sleep_level: int = 2
    enforce_eager: bool = False
    # false: no torch.compile in the engine (it starts sooner; on small models compilation is most of the start),
    # CUDA graphs still capture whole decode steps (vLLM's FULL_DECODE_ONLY). enforce_eager=true drops both.
    compile: bool = True
    # Weight sync: auto picks in-process/IPC when colocated and NCCL broadcast when separate.
    sync: str = "auto"
