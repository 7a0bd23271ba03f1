"""DeepSpeed configs that DeepSpeed itself accepts: every ZeRO stage with bf16 weights starts an engine.

The engines start in a fresh process: DeepSpeed caches its process groups in module state, which another
test's torch.distributed group (created and destroyed earlier in the same pytest process) would leave stale.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

from rlhf.config.engine import EngineConfig
from rlhf.engines.deepspeed import ds_config

SCRIPT = textwrap.dedent(
    """
    import torch, deepspeed
    from rlhf.config.engine import EngineConfig
    from rlhf.engines.deepspeed import ds_config
    from rlhf.engines.dist import free_port, init_distributed

    init_distributed(0, 1, "127.0.0.1", free_port(), "cpu")
    for stage in (0, 1, 2):
        cfg = ds_config(EngineConfig(zero_stage=stage), micro_batch=2, grad_accum=2, world_size=1, dtype="bf16",
                        max_grad_norm=1.0)
        model = torch.nn.Linear(4, 4).to(torch.bfloat16)
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-3),
                                          config=cfg)
        for _ in range(6):  # three accumulation cycles: two micro-batches, one optimizer step each
            loss = engine(torch.ones(2, 4, dtype=torch.bfloat16)).float().pow(2).mean()
            engine.backward(loss)
            engine.step()
        assert engine.global_steps == 3
        assert all(torch.isfinite(p.float()).all() for p in engine.module.parameters())
        # The throughput timer (a device sync per forward and step from its third step on) never ran.
        assert engine.tput_timer.global_step_count == 0 and not engine.tput_timer.started
        print(f"stage {stage} ok", flush=True)
    """
)


def test_bf16_keeps_fp32_accumulation_only_where_zero_supports_it() -> None:
    for stage in (0, 1, 2, 3):
        cfg = ds_config(
            EngineConfig(zero_stage=stage), micro_batch=2, grad_accum=2, world_size=1, dtype="bf16", max_grad_norm=1.0
        )
        assert cfg.get("data_types") == ({"grad_accum_dtype": "fp32"} if stage > 0 else None), stage
    fp32 = ds_config(
        EngineConfig(zero_stage=2), micro_batch=2, grad_accum=2, world_size=1, dtype="fp32", max_grad_norm=1.0
    )
    assert "data_types" not in fp32


def test_bf16_config_starts_an_engine_at_every_stage() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line for line in proc.stdout.splitlines() if line.endswith(" ok")] == [
        "stage 0 ok",
        "stage 1 ok",
        "stage 2 ok",
    ], proc.stdout[-2000:]
