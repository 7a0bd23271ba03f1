"""The trained module's weights as vLLM loads them: Hugging Face names, one decoder layer at a time.

Gathered layer by layer under ZeRO-3, and with LoRA merged on the fly (W + scale * B @ A; the trained
parameters are left untouched). ``WeightSender`` is trainer rank 0's end of the broadcast to separate engines.
"""

from __future__ import annotations

import weakref


class WeightSender:
    """Policy rank 0's side of the weight-sync group with separate engines (rlhf/workers/rollout.py)."""

    def __init__(self, module, *, zero3: bool, dtype: str):
        self.module, self.zero3, self.dtype = module, zero3, dtype
        self.group = None

    def specs(self) -> list:
        """(HF name, wire dtype, full shape) of every tensor ``broadcast`` sends, in order."""
        from rlhf.models.loading import torch_dtype

        wire = str(torch_dtype(self.dtype)).removeprefix("torch.")
        convert = checkpoint_converter(self.module)
        out = []
        for group in _layer_groups(rollout_params(self.module)):
            # The shapes as sent: fused experts split per expert.
            named = _meta(group)
            out += [(name, wire, tuple(t.shape)) for name, t in (convert(named) if convert else named)]
        return out

    def connect(self, rank: int, master_addr: str, port: int, world_size: int, backend: str) -> None:
        from rlhf.engines.vllm_engine import WeightSyncGroup

        if rank != 0:
            raise RuntimeError(f"init_weight_sync on policy rank {rank}: only rank 0 sends weights")
        self.group = WeightSyncGroup(master_addr, port, 0, world_size, backend)

    def broadcast(self, rank: int) -> int:
        """Rank 0 broadcasts the current weights (returns the bytes sent); other ranks only join the ZeRO-3
        gathers (every rank must call this)."""
        from rlhf.engines.vllm_engine import broadcast_weights
        from rlhf.models.loading import torch_dtype

        weights = rollout_weights(self.module, self.zero3)
        if rank != 0:
            for _ in weights:  # drive the generator: its ZeRO-3 gathers need every rank
                pass
            return 0
        if self.group is None:
            raise RuntimeError("broadcast_weights before init_weight_sync: the driver must connect the engines")
        return broadcast_weights(self.group, weights, dtype=torch_dtype(self.dtype))

    def close(self) -> None:
        if self.group is not None:
            self.group.close()
            self.group = None


def rollout_params(module) -> list:
    """(HF name, parameter, LoRA layer or None) of each weight vLLM loads, in a fixed order.

    Plain models: ``named_parameters()`` (tied weights once). PEFT models: the base model's parameters,
    ``...q_proj.base_layer.weight`` renamed ``...q_proj.weight`` and paired with its LoRA layer (merged when
    sent); the adapters themselves are not sent.
    """
    if not hasattr(module, "peft_config"):
        return [(name, p, None) for name, p in module.named_parameters()]
    from peft.tuners.lora import LoraLayer

    base = module.get_base_model()
    lora = {name: m for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    out = []
    for name, p in base.named_parameters():
        if ".lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".base_layer.")
        if owner and owner in lora:
            out.append((f"{owner}.{leaf}", p, lora[owner] if leaf == "weight" else None))
        else:
            out.append((name, p, None))
    return out


def checkpoint_converter(module):
    """None, or a function from one layer's (in-memory name, tensor) pairs to those of the model's checkpoint
    format, which vLLM loads: transformers 5 fuses a MoE layer's experts into 3-d parameters
    (``mlp.experts.gate_up_proj``) that its checkpoints, and vLLM's loaders, keep per expert
    (``block_sparse_moe.experts.<e>.w1.weight``). transformers' own reverse conversion (what save_pretrained
    applies) does the mapping; models without conversions (dense Llama, Qwen2) pass unchanged."""
    if module in _CONVERTERS:
        return _CONVERTERS[module]
    _CONVERTERS[module] = convert = _checkpoint_converter(module)
    return convert


def _checkpoint_converter(module):
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers 4: in-memory names are the checkpoint's
        return None
    base = module.get_base_model() if hasattr(module, "peft_config") else module
    conversions = getattr(base, "_weight_conversions", None)
    if conversions is None:
        conversions = get_model_conversion_mapping(base, add_legacy=False) or []
        conversions = [c for c in conversions if type(c).__name__ != "PrefixChange"]
        if conversions:
            base._weight_conversions = conversions  # what save_pretrained computes; computed once, not per layer
    if not conversions:
        return None

    def convert(named):
        return list(dict(revert_weight_conversion(base, dict(named))).items())

    # Only a conversion that changes names or shapes is applied: some transformers releases keep every
    # conversion they tried at load (legacy renamings too), also for dense models whose names need none.
    for group in _layer_groups(rollout_params(module)):
        named = _meta(group)
        if sorted((n, tuple(t.shape)) for n, t in convert(named)) != sorted((n, tuple(t.shape)) for n, t in named):
            return convert
    return None


# module -> its converter (or None), computed on the first sync: the mapping and the check cost a pass over
# every layer's names.
_CONVERTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _meta(group) -> list:
    """(name, meta tensor of the parameter's full shape) for rollout_params entries: shapes without memory."""
    import torch

    return [(n, torch.empty(tuple(getattr(p, "ds_shape", p.shape)), device="meta")) for n, p, _ in group]


def _layer_groups(entries):
    """`entries` ((name, ...) tuples, in order) grouped by decoder layer."""
    import itertools

    return [list(g) for _, g in itertools.groupby(entries, key=lambda e: _layer_key(e[0]))]


def _layer_key(name: str) -> str:
    """The decoder layer a parameter belongs to ("model.layers.3" for "model.layers.3.mlp.up_proj.weight");
    parameters outside numbered layers are their own group."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return name


def _merged(param, layer):
    """W + sum of the active adapters' deltas (scale * B @ A) for a LoRA layer's base weight."""
    weight = param.detach()
    if layer is None:
        return weight
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            weight = weight + layer.get_delta_weight(adapter).to(weight.dtype)
    return weight


def rollout_weights(module, zero3: bool):
    """Yield (HF name, tensor) for vLLM, one decoder layer at a time.

    Under ZeRO-3 each layer's parameters (adapters included) are gathered for the duration of that layer and
    the yielded tensors are copies: vLLM may hold a layer's tensors until the layer is complete, and the
    gathered storage is released on leaving the context. Every rank must run this generator to the end.
    """
    entries = rollout_params(module)
    convert = checkpoint_converter(module)
    if not zero3:
        if convert is None:
            for name, p, layer in entries:
                yield name, _merged(p, layer)
            return
        for group in _layer_groups(entries):
            yield from convert([(name, _merged(p, layer)) for name, p, layer in group])
        return
    import deepspeed

    for group in _layer_groups(entries):
        params = [p for _, p, _ in group]
        for _, _, layer in group:
            if layer is not None:
                params.extend(q for n, q in layer.named_parameters() if "lora_" in n)
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            named = [(name, _merged(p, layer).clone()) for name, p, layer in group]
        yield from (convert(named) if convert else named)
