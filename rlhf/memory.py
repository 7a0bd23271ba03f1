"""Per-GPU memory estimates for training and inference roles (pure arithmetic, no torch).

Training with mixed precision (Rajbhandari et al. 2020, ZeRO): bf16 weights 2P, bf16 gradients 2P, fp32
master weights + Adam moments 12P (pure fp32 training: weights 4P, gradients 4P, Adam moments 8P, no master
copy). ZeRO stage 1 partitions the optimizer states over the N data-parallel ranks, stage 2 also the gradients,
stage 3 also the weights; offload moves the optimizer states (and with stage 3 and offload_params the weights)
to host memory. The gradients are counted on the GPU even with offload, which overstates offloaded runs a
little (DeepSpeed streams gradient partitions to the host in buckets).

Activations follow Korthikanti et al. 2022 with flash/SDPA attention (no s^2 term), for 16-bit activations:
about 34*h bytes per token per layer without checkpointing; with full checkpointing each layer keeps only its
2*h-byte input and one layer's 34*h is live during recomputation. fp32 doubles both. The LM head's logits cost
about 10 bytes per token per vocabulary entry (bf16 logits, their fp32 upcast and its gradient) unless the
log-prob computation chunks them, which leaves about 3 (bf16 logits and a small fp32 chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
# CUDA context, NCCL buffers, allocator fragmentation: measured 1.5-3 GiB on H100s; 2.5 keeps a margin.
FRAMEWORK_OVERHEAD_GIB = 2.5


@dataclass(frozen=True)
class ModelShape:
    params_b: float
    hidden_size: int
    num_layers: int
    vocab_size: int
    num_kv_heads: int
    num_heads: int
    num_experts: int = 1
    experts_per_token: int = 1

    @property
    def params(self) -> float:
        return self.params_b * 1e9

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class MemoryEstimate:
    role: str
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    other_gib: float
    # Host memory needed for offloaded states, GiB per GPU.
    host_gib: float = 0.0

    @property
    def total_gib(self) -> float:
        return self.weights_gib + self.grads_gib + self.optimizer_gib + self.activations_gib + self.other_gib


def training_memory(
    role: str,
    shape: ModelShape,
    *,
    dp_size: int,
    zero_stage: int,
    micro_batch: int,
    seq_len: int,
    gradient_checkpointing: bool,
    offload_optimizer: bool = False,
    offload_params: bool = False,
    bytes_per_param: int = 2,
    lora_fraction: float = 1.0,
    base_bytes_per_param: float | None = None,
    chunked_logits: bool = True,
) -> MemoryEstimate:
    """Peak bytes on one GPU of a role trained with DeepSpeed.

    lora_fraction: trainable share of the parameters (1.0 for full fine-tuning); base_bytes_per_param: bytes of
    a frozen base weight (0.5 plus scales for 4-bit QLoRA); chunked_logits: the log-prob path computes the
    vocabulary softmax in row chunks, so only the bf16 logits and one chunk's fp32 copy are live.
    """
    p = shape.params
    trainable = p * lora_fraction
    n = max(dp_size, 1)
    if base_bytes_per_param is None:
        base_bytes_per_param = bytes_per_param
    frozen = p - trainable
    weights = trainable * bytes_per_param + frozen * base_bytes_per_param
    grads = trainable * bytes_per_param
    # Adam's two fp32 moments (8 bytes), plus an fp32 master copy (4) when the weights are 16-bit.
    optimizer = trainable * (12 if bytes_per_param < 4 else 8)
    if zero_stage >= 1:
        optimizer /= n
    if zero_stage >= 2:
        grads /= n
    if zero_stage >= 3:
        weights /= n
    host = 0.0
    if offload_optimizer:
        host += optimizer
        optimizer = 0.0
    if offload_params and zero_stage >= 3:
        host += weights
        weights = 0.0
    tokens = micro_batch * seq_len
    h = shape.hidden_size
    # The 34 and 2 bytes per hidden unit are for 16-bit activations; fp32 doubles them.
    act_scale = bytes_per_param / 2
    if gradient_checkpointing:
        acts = tokens * (shape.num_layers * 2 * h + 34 * h) * act_scale
    else:
        acts = tokens * shape.num_layers * 34 * h * act_scale
    logits_bytes = 2 + (1 if chunked_logits else 8)
    logits = tokens * shape.vocab_size * logits_bytes
    return MemoryEstimate(
        role=role,
        weights_gib=weights / GIB,
        grads_gib=grads / GIB,
        optimizer_gib=optimizer / GIB,
        activations_gib=(acts + logits) / GIB,
        other_gib=FRAMEWORK_OVERHEAD_GIB,
        host_gib=host / GIB,
    )


def inference_memory(
    role: str,
    shape: ModelShape,
    *,
    shards: int,
    micro_batch: int,
    seq_len: int,
    bytes_per_param: int = 2,
    with_lm_head: bool = True,
) -> MemoryEstimate:
    """Peak bytes on one GPU of a frozen model (reference, reward) sharded over `shards` GPUs (ZeRO-3)."""
    weights = shape.params * bytes_per_param / max(shards, 1)
    tokens = micro_batch * seq_len
    # No autograd graph: only a few hidden-size buffers per token are live (residual, attention and MLP
    # outputs), about four 16-bit ones.
    acts = tokens * shape.hidden_size * 4 * bytes_per_param
    logits = tokens * shape.vocab_size * 3 if with_lm_head else 0
    return MemoryEstimate(role, weights / GIB, 0.0, 0.0, (acts + logits) / GIB, FRAMEWORK_OVERHEAD_GIB)


def kv_cache_bytes_per_token(shape: ModelShape, bytes_per_value: int = 2) -> float:
    """K and V for every layer: 2 * layers * kv_heads * head_dim values."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * bytes_per_value


def rollout_memory(
    shape: ModelShape,
    *,
    gpu_memory_gb: float,
    gpu_memory_utilization: float,
    tensor_parallel_size: int,
    concurrent_tokens: int,
) -> tuple[MemoryEstimate, float]:
    """A vLLM engine's reservation on one GPU and the KV-cache tokens it leaves room for.

    vLLM reserves gpu_memory_utilization of the GPU; the weights (sharded by tensor parallelism) come out of
    that reservation and the rest is KV cache. Returns (estimate, kv_tokens_capacity); a capacity below
    concurrent_tokens means sequences wait (slower), not an error.
    """
    reserved = gpu_memory_gb * GIB * gpu_memory_utilization
    weights = shape.params * 2 / max(tensor_parallel_size, 1)
    # About 1 GiB of the reservation goes to vLLM's activation workspace and CUDA graphs.
    kv_free = max(reserved - weights - 1.0 * GIB, 0.0)
    per_token = kv_cache_bytes_per_token(shape) / max(tensor_parallel_size, 1)
    capacity = kv_free / per_token if per_token else float("inf")
    est = MemoryEstimate("rollout", weights / GIB, 0.0, 0.0, kv_free / GIB, 1.0)
    return est, capacity
