"""Model FLOPs and MFU (rlhf/bench/flops.py) against hand counts and against the matrices of a real HF model."""

from __future__ import annotations

import pytest

from rlhf.bench.flops import attention_width, forward_flops, matmul_params, mfu, training_flops
from rlhf.models.arch import Arch


def _arch(**kw) -> Arch:
    base = dict(
        model_type="llama",
        hidden_size=4,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=8,
        vocab_size=10,
        params_b=0.0,
    )
    return Arch(**{**base, **kw})


def test_hand_count_of_a_one_layer_model():
    a = _arch()
    # head dim 2: q 4x(2*2)=16, k and v 4x(1*2)=8 each, o (2*2)x4=16 -> 48; SwiGLU 3*4*8 = 96; LM head 10*4 = 40
    assert matmul_params(a) == 48 + 96 + 40
    assert matmul_params(a, lm_head=False) == 48 + 96 + 4  # a value head: d x 1
    assert attention_width(a) == 4
    # T=3: 2*184*3 = 1104 matmul + 4*L*A*T^2 = 4*1*4*9 = 144 attention; T=1: 368 + 16
    assert forward_flops(a, [3]) == 1248.0
    assert forward_flops(a, [3, 1]) == 1248.0 + 384.0
    assert training_flops(a, [3]) == 3 * 1248.0


def test_active_experts_and_router_count():
    a = _arch(num_experts=8, experts_per_token=2)
    # two active SwiGLU experts (2 * 96) plus the router d x E = 32
    assert matmul_params(a) == 48 + 192 + 32 + 40


def test_mfu_formula():
    # 2e15 FLOPs in 2 s on 2 GPUs of 1000 TFLOP/s peak: 2e15 / (2 * 2 * 1e15) = 0.5
    assert mfu(2e15, 2.0, 2, 1000.0) == pytest.approx(0.5)
    assert mfu(2e15, 0.0, 2, 1000.0) == 0.0  # no time measured
    assert mfu(2e15, 2.0, 2, 0.0) == 0.0  # CPU: no peak


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "mixtral"])
def test_matmul_params_equal_the_linear_layers_of_a_real_model(model_type):
    """Every nn.Linear weight a token meets, counted from a randomly initialised transformers model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    kw = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=50,
        tie_word_embeddings=False,
    )
    if model_type == "mixtral":
        kw.update(num_local_experts=4, num_experts_per_tok=2)
    cfg = AutoConfig.for_model(model_type, **kw)
    model = AutoModelForCausalLM.from_config(cfg)
    experts = kw.get("num_local_experts", 1)
    active = kw.get("num_experts_per_tok", 1)
    met = 0.0
    for name, p in model.named_parameters():
        if p.dim() < 2 or "embed_tokens" in name:
            continue  # norms; the input embedding is a lookup
        # Fused expert weights [E, out, in]: a token meets `active` of the E experts.
        met += p.numel() * (active / experts if p.dim() == 3 else 1)
    a = _arch(
        model_type=model_type,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=48,
        vocab_size=50,
        num_experts=experts,
        experts_per_token=active,
    )
    assert matmul_params(a) == met
