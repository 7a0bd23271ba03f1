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


def test_a_dense_model_whose_conversions_change_nothing_is_sent_as_is():
    from transformers import LlamaConfig, LlamaForCausalLM, MixtralConfig, MixtralForCausalLM
    from transformers.conversion_mapping import get_model_conversion_mapping

    from rlhf.rollout.weights import checkpoint_converter, rollout_weights

    common = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4, vocab_size=64)
    dense = LlamaForCausalLM(LlamaConfig(**common, num_key_value_heads=2))
    # As some transformers releases leave after from_pretrained: the legacy renamings kept (LayerNorm.gamma ->
    # LayerNorm.weight, ...), although none applies to a Llama's names.
    dense._weight_conversions = get_model_conversion_mapping(dense, add_legacy=True)
    assert dense._weight_conversions and checkpoint_converter(dense) is None
    assert [n for n, _ in rollout_weights(dense, zero3=False)] == [n for n, _ in dense.named_parameters()]
    moe = MixtralForCausalLM(MixtralConfig(**common, num_key_value_heads=2, num_local_experts=2))
    assert checkpoint_converter(moe) is not None and checkpoint_converter(moe) is checkpoint_converter(moe)
