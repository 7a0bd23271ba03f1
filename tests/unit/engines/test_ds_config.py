"""DeepSpeed configs that DeepSpeed itself accepts: every ZeRO stage with bf16 weights starts an engine."""

from __future__ import annotations

import pytest
import torch

from rlhf.config.engine import EngineConfig
from rlhf.engines.deepspeed import ds_config


@pytest.fixture(scope="module")
def dist_world_of_one():
    from rlhf.engines.dist import destroy_distributed, free_port, init_distributed

    init_distributed(0, 1, "127.0.0.1", free_port(), "cpu")
    yield
    destroy_distributed()


@pytest.mark.parametrize("stage", [0, 1, 2])
def test_bf16_config_starts_an_engine_at_every_stage(dist_world_of_one, stage: int) -> None:
    import deepspeed

    cfg = ds_config(EngineConfig(zero_stage=stage), micro_batch=2, grad_accum=2, world_size=1, dtype="bf16",
                    max_grad_norm=1.0)
    # fp32 accumulation where DeepSpeed has an optimizer for it (ZeRO >= 1), bf16 data parallel at ZeRO-0.
    assert ("data_types" in cfg) == (stage > 0)
    model = torch.nn.Linear(4, 4).to(torch.bfloat16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=cfg)
    loss = engine(torch.ones(2, 4, dtype=torch.bfloat16)).float().pow(2).mean()
    engine.backward(loss)
    engine.step()
    engine(torch.ones(2, 4, dtype=torch.bfloat16)).float().pow(2).mean()
    assert all(torch.isfinite(p.float()).all() for p in engine.module.parameters())
