"""Model FLOPs of the passes of a training step, and MFU. Pure arithmetic on the architecture numbers
(``rlhf.models.arch.Arch``): imports without torch.

Convention (PaLM, Chowdhery et al. 2022, appendix B; the one MFU figures quote), per sequence of T real tokens:

    N   = matmul parameters a token meets: per layer  d*(H*hd) + 2*d*(K*hd) + (H*hd)*d   (q, k, v, o)
                                                    + 3*d*I*k_act (+ d*E router)       (SwiGLU, active experts)
          plus the output projection V*d (counted once, tied or not; the input embedding is a lookup, 0 FLOPs)
    forward   F(T) = 2*N*T + 4*L*A*T^2        with A = H*hd (attention width): QK^T and AV, 2*T*A each per token
    training  3*F(T) = 6*N*T + 12*L*A*T^2     (backward = 2 x forward)

The attention term counts the full T x T score matrix (no causal halving), as PaLM does. Gradient
checkpointing's recomputed forward is not counted (that would be hardware FLOPs, not model FLOPs), nor is
generation. A critic or reward model's forward replaces the V*d output projection by d*1.

    MFU = model FLOPs of the pass / (seconds of the pass x GPUs x hw.peak_tflops x 1e12)
"""

from __future__ import annotations

from collections.abc import Iterable


def matmul_params(arch, lm_head: bool = True) -> int:
    """N above: the parameters of the matrix products one token passes through (active experts only)."""
    d, h, k = arch.hidden_size, arch.num_heads, arch.num_kv_heads
    hd = d // h
    attn = d * h * hd + 2 * d * k * hd + h * hd * d
    mlp = 3 * d * arch.intermediate_size * arch.experts_per_token
    router = d * arch.num_experts if arch.num_experts > 1 else 0
    head = arch.vocab_size * d if lm_head else d
    return arch.num_layers * (attn + mlp + router) + head


def attention_width(arch) -> int:
    """A above: heads x head dimension."""
    return arch.num_heads * (arch.hidden_size // arch.num_heads)


def forward_flops(arch, lengths: Iterable[int], lm_head: bool = True) -> float:
    """F summed over sequences of the given real lengths: sum_i 2*N*T_i + 4*L*A*T_i^2."""
    n, la = matmul_params(arch, lm_head), arch.num_layers * attention_width(arch)
    return float(sum(2 * n * t + 4 * la * t * t for t in lengths))


def training_flops(arch, lengths: Iterable[int], lm_head: bool = True) -> float:
    """Forward plus backward over the sequences: 3 x forward_flops (6*N*T + 12*L*A*T^2 each)."""
    return 3.0 * forward_flops(arch, lengths, lm_head)


def mfu(flops: float, seconds: float, gpus: int, peak_tflops: float) -> float:
    """Model FLOPs utilisation of a pass; 0 when the peak or the time is unknown (CPU runs)."""
    if peak_tflops <= 0 or seconds <= 0 or gpus <= 0:
        return 0.0
    return flops / (seconds * gpus * peak_tflops * 1e12)
