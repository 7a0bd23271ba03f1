"""Per-GPU memory estimates for training and inference roles (pure arithmetic, no torch).

Training with mixed precision (Rajbhandari et al. 2020, ZeRO): bf16 weights 2P, bf16 gradients 2P, fp32
master weights + Adam moments 12P (pure fp32 training: weights 4P, gradients 4P, Adam moments 8P, no master
copy). ZeRO stage 1 partitions the optimizer states over the N data-parallel ranks, stage 2 also the gradients,
stage 3 also the weights; offload moves the optimizer states (and with stage 3 and offload_params the weights)
to host memory, where CPU Adam also keeps an fp32 gradient partition; with ZeRO-2/3 the GPU then holds one
reduce bucket of gradients instead of a partition (offload is not yet checked against a measurement).

DeepSpeed (0.15-0.19) adds working buffers: ZeRO-1/2 reduce gradients through a bucket of `reduce_bucket_size`
(5e8 elements, 16-bit: about 1 GiB) and, at the optimizer step, copy this rank's gradient partition to fp32
(4P/N, transient, after the activations are freed). ZeRO-3 accumulates its gradient partition in fp32 (the
engine asks for `grad_accum_dtype: fp32`; stage 3 honours it, stages 1-2 keep 16-bit partitions) and keeps up
to `stage3_max_live_parameters` (1e9) gathered 16-bit parameters live, plus a 5e7-element prefetch bucket.
Measured on one H100 (benchmarks/memory_check.py; Qwen2.5-0.5B and 1.5B shapes; SFT, DPO with its reference,
GRPO actor; ZeRO-2 and 3; 4 x 1024 tokens checkpointed, 2 x 2048 not): the estimate less the framework overhead
is within -4% to +11% of torch.cuda.max_memory_allocated.

Activations are counted tensor by tensor for the Hugging Face Llama/Qwen2/Mixtral layers with flash or SDPA
attention (no s^2 term; Korthikanti et al. 2022 derive the same kind of sum for GPT), per token per layer, 16-bit:
two RMSNorms (fp32 upcast 4h, normalized 2h, scaled output 2h: 8h each), query 2h, key and value 2*kv each,
attention output 2h and the o_proj input 2h, and the SwiGLU MLP's gate, up, SiLU(gate) and product (2I each, for
each of the k experts a token is routed to): 22h + 4kv + 8Ik bytes. With full checkpointing each layer keeps
only its 2h-byte input and one layer's activations are live during recomputation. fp32 doubles both. The LM
head's logits cost 4 bytes per token per vocabulary entry when the log-prob path works in row chunks (the bf16
logits kept for backward and their bf16 gradient), about 10 when it upcasts the whole tensor to fp32.
"""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1024**3
# CUDA context, NCCL buffers, allocator fragmentation: measured 1.5-3 GiB on H100s; 2.5 keeps a margin.
FRAMEWORK_OVERHEAD_GIB = 2.5
# DeepSpeed's default reduce_bucket_size (elements) for ZeRO-1/2 gradient reduction.
REDUCE_BUCKET_ELEMENTS = 5e8
# DeepSpeed's ZeRO-3 defaults: most gathered parameters live at once, and the prefetch bucket (elements).
STAGE3_MAX_LIVE_PARAMETERS = 1e9
STAGE3_PREFETCH_ELEMENTS = 5e7


def zero3_gathered_bytes(params: float, bytes_per_param: float = 2) -> float:
    """Gathered (unpartitioned) 16-bit parameters a ZeRO-3 engine may hold at once, plus its prefetch bucket."""
    return (min(params, STAGE3_MAX_LIVE_PARAMETERS) + STAGE3_PREFETCH_ELEMENTS) * bytes_per_param


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
    # SwiGLU width (per expert); 0 means unknown and is taken as 8/3 of the hidden size (the Llama ratio).
    intermediate_size: int = 0

    @property
    def params(self) -> float:
        return self.params_b * 1e9

    @property
    def ffn(self) -> int:
        return self.intermediate_size or (8 * self.hidden_size) // 3

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def layer_params(self) -> float:
        """Parameters of one decoder layer (attention with grouped KV heads, every expert's SwiGLU)."""
        h = self.hidden_size
        return 2 * h * h + 2 * h * self.kv_dim + 3 * h * self.ffn * self.num_experts

    def activation_bytes_per_token_layer(self) -> float:
        """16-bit activations one decoder layer keeps for backward, per token (see the module docstring)."""
        h = self.hidden_size
        return 22 * h + 4 * self.kv_dim + 8 * self.ffn * self.experts_per_token

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
    with_lm_head: bool = True,
    head_rows: int | None = None,
) -> MemoryEstimate:
    """Peak bytes on one GPU of a role trained with DeepSpeed.

    lora_fraction: trainable share of the parameters (1.0 for full fine-tuning); base_bytes_per_param: bytes of
    a frozen base weight (0.5 plus scales for 4-bit QLoRA); chunked_logits: the log-prob path computes the
    vocabulary softmax in row chunks, so only the bf16 logits and their gradient are live; with_lm_head: False
    for a critic (a value head of width 1 replaces the vocabulary logits); head_rows: the LM head runs fused with
    the log-probs in chunks of this many rows (engine.fused_lm_head), so only one chunk's logits exist at a time.

    The activations column holds the larger of the two transient peaks: the backward pass's live activations
    and logits, or the optimizer step's fp32 copy of the gradient partition (the activations are freed by then).
    """
    p = shape.params
    trainable = p * lora_fraction
    n = max(dp_size, 1)
    if base_bytes_per_param is None:
        base_bytes_per_param = bytes_per_param
    frozen = p - trainable
    mixed = bytes_per_param < 4
    weights = trainable * bytes_per_param + frozen * base_bytes_per_param
    # ZeRO-3 accumulates gradient partitions in fp32 when the weights are 16-bit.
    grads = trainable * (4 if zero_stage >= 3 and mixed else bytes_per_param)
    # Adam's two fp32 moments (8 bytes), plus an fp32 master copy (4) when the weights are 16-bit.
    optimizer = trainable * (12 if mixed else 8)
    # ZeRO-0/1/2 upcast the 16-bit gradient partition to fp32 for the step (ZeRO-3's is fp32 already).
    step_grads = trainable * 4 if mixed and zero_stage < 3 else 0.0
    if zero_stage >= 1:
        optimizer /= n
        step_grads /= n
    if zero_stage >= 2:
        grads /= n
    if zero_stage >= 3:
        weights /= n
    host = 0.0
    offload_buckets = 0.0
    if offload_optimizer:
        # CPU Adam: master weights, moments and an fp32 gradient partition live on the host. ZeRO-2/3 stream
        # reduced gradients there bucket by bucket, so the GPU keeps one reduce bucket, not a partition.
        host += optimizer + trainable * 4 / (n if zero_stage >= 1 else 1)
        optimizer = step_grads = 0.0
        if zero_stage >= 2:
            offload_buckets = min(trainable, REDUCE_BUCKET_ELEMENTS) * bytes_per_param
            grads = 0.0
    if offload_params and zero_stage >= 3:
        host += weights
        weights = 0.0
    buffers = 0.0
    if zero_stage in (1, 2) and trainable > 0:
        buffers += min(trainable, REDUCE_BUCKET_ELEMENTS) * bytes_per_param
    if zero_stage >= 3:
        buffers += zero3_gathered_bytes(p, bytes_per_param) + offload_buckets
    tokens = micro_batch * seq_len
    h = shape.hidden_size
    per_layer = shape.activation_bytes_per_token_layer()
    # The per-layer sum is for 16-bit activations; fp32 doubles it.
    act_scale = bytes_per_param / 2
    if gradient_checkpointing:
        acts = tokens * (shape.num_layers * 2 * h + per_layer) * act_scale
    else:
        acts = tokens * shape.num_layers * per_layer * act_scale
    # The final norm (8h) and the LM head's input.
    acts += tokens * 10 * h * act_scale
    logits = 0.0
    if with_lm_head and head_rows:
        logits = fused_head_bytes(min(tokens, head_rows), shape.vocab_size, bytes_per_param, backward=True)
    elif with_lm_head:
        logits = tokens * shape.vocab_size * (4 if chunked_logits else 10) * act_scale
    transient = max(acts + logits, step_grads)
    return MemoryEstimate(
        role=role,
        weights_gib=weights / GIB,
        grads_gib=grads / GIB,
        optimizer_gib=optimizer / GIB,
        activations_gib=transient / GIB,
        other_gib=FRAMEWORK_OVERHEAD_GIB + buffers / GIB,
        host_gib=host / GIB,
    )


def fused_head_bytes(rows: int, vocab: int, bytes_per_value: float, backward: bool) -> float:
    """Peak bytes of the fused LM head's chunk of `rows` (rlhf/algos/logprobs.py ``_HeadLogps``): the chunk's
    logits in the model's dtype and about three fp32 working copies (the upcast, the softmax, a product), plus
    in backward the logits' gradient in the model's dtype."""
    per = bytes_per_value + 12 + (bytes_per_value if backward else 0)
    return rows * vocab * per


def inference_memory(
    role: str,
    shape: ModelShape,
    *,
    shards: int,
    micro_batch: int,
    seq_len: int,
    bytes_per_param: int = 2,
    with_lm_head: bool = True,
    zero3: bool = False,
    head_rows: int | None = None,
) -> MemoryEstimate:
    """Peak bytes on one GPU of a frozen model (reference, reward) sharded over `shards` GPUs.

    zero3: the model is a ZeRO-3 engine (its own gathered-parameter buffers, even on one GPU); head_rows: as for
    ``training_memory``.
    """
    weights = shape.params * bytes_per_param / max(shards, 1)
    tokens = micro_batch * seq_len
    # No autograd graph: only a few hidden-size buffers per token are live (residual, attention and MLP
    # outputs), about four 16-bit ones.
    acts = tokens * shape.hidden_size * 4 * bytes_per_param
    if with_lm_head and head_rows:
        logits = fused_head_bytes(min(tokens, head_rows), shape.vocab_size, bytes_per_param, backward=False)
    else:
        logits = tokens * shape.vocab_size * 3 if with_lm_head else 0
    other = FRAMEWORK_OVERHEAD_GIB + (zero3_gathered_bytes(shape.params, bytes_per_param) / GIB if zero3 else 0.0)
    return MemoryEstimate(role, weights / GIB, 0.0, 0.0, (acts + logits) / GIB, other)


def kv_cache_bytes_per_token(shape: ModelShape, bytes_per_value: int = 2) -> float:
    """K and V for every layer: 2 * layers * kv_heads * head_dim values."""
    return 2 * shape.num_layers * shape.num_kv_heads * shape.head_dim * bytes_per_value


def hf_generation_bytes(
    shape: ModelShape, *, batch: int, prompt_len: int, new_tokens: int, bytes_per_value: int = 2
) -> float:
    """HF generate inside a policy rank (rollout=hf), one batch of ``rollout.generate_batch`` rows: the KV
    cache of whole sequences, the fp32 logits of every new token that the rollout keeps for its log-probs
    (rlhf/rollout/hf.py), and one step's full-width forward logits and log-softmax. It runs between training
    passes, so it competes with the training transient, not with it."""
    kv = batch * (prompt_len + new_tokens) * kv_cache_bytes_per_token(shape, bytes_per_value)
    kept = batch * new_tokens * shape.vocab_size * 4
    prefill = batch * prompt_len * shape.vocab_size * bytes_per_value  # the prompt's forward, before slicing
    step = batch * shape.vocab_size * 4 * 2
    return kv + kept + max(prefill, step)


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
