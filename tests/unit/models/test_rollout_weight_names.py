"""The weights sent to vLLM carry the names and shapes of the model's checkpoint, which vLLM's loaders read.

transformers 5 fuses a Mixtral layer's experts into 3-d parameters (``mlp.experts.gate_up_proj``); its
checkpoints, and vLLM, keep them per expert (``block_sparse_moe.experts.<e>.w1.weight``). A weight sync that
sent the in-memory names failed in vLLM ("no module or parameter named 'layers.0.mlp'").
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from rlhf.rollout.weights import WeightSender, rollout_weights


def _save_and_reload(model, tmp_path):
    model.save_pretrained(tmp_path)
    return load_file(str(tmp_path / "model.safetensors"))


@pytest.mark.parametrize("kind", ["mixtral", "llama"])
def test_sent_weights_are_the_checkpoints_names_shapes_and_values(kind, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM

    torch.manual_seed(0)
    common = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, vocab_size=64)
    if kind == "mixtral":
        model = MixtralForCausalLM(MixtralConfig(**common, num_key_value_heads=2, num_local_experts=4))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2))
    saved = _save_and_reload(model, tmp_path)
    sent = dict(rollout_weights(model, zero3=False))
    # Tied weights aside, what is sent is exactly what the checkpoint holds.
    assert set(sent) == set(saved)
    for name, tensor in saved.items():
        assert torch.equal(sent[name], tensor), name
    if kind == "mixtral":
        assert "model.layers.1.block_sparse_moe.experts.3.w2.weight" in sent
        assert not any(".mlp." in n for n in sent)
    # The separate-engine receiver allocates from the specs: the same names and shapes, in the sent order.
    specs = WeightSender(model, zero3=False, dtype="fp32").specs()
    assert [(n, s) for n, _, s in specs] == [(n, tuple(t.shape)) for n, t in rollout_weights(model, zero3=False)]
