"""A LoRA run says how many parameters it trains."""

from __future__ import annotations

from rlhf.config.model import LoraConfig, ModelConfig
from rlhf.models.loading import load_causal_lm


def test_lora_prints_the_trainable_parameter_count(capsys):
    cfg = ModelConfig(name_or_path="tiny:llama", lora=LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]))
    model = load_causal_lm(cfg, dtype="fp32", device="cpu")
    line = [x for x in capsys.readouterr().out.splitlines() if x.startswith("lora:")]
    # Tiny llama: hidden 128, 4 heads, 2 KV heads of 32 -> q_proj 128x128, v_proj 128x64, 4 layers.
    # Per layer r*(in+out): q 4*(128+128) = 1024, v 4*(128+64) = 768 -> 1792; x4 layers = 7168.
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert trainable == 7168
    assert line == [
        f"lora: r=4 on [q_proj, v_proj]: 7,168 of {total:,} parameters trainable ({100 * 7168 / total:.2f}%)"
    ]
