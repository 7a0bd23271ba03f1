"""The frozen reference role of on-policy RL: log-probs of rollout responses under the initial policy."""

from __future__ import annotations

import time
from dataclasses import replace

from rlhf.types import RolloutBatch
from rlhf.workers.base import RankWorker
from rlhf.workers.spec import RoleSpec


class ReferenceWorker(RankWorker):
    role = "ref"

    def __init__(self, rank: int, world_size: int, spec: RoleSpec):
        super().__init__(rank, world_size)
        self.spec = spec
        self.role_plan = spec.plan.role(self.role)

    def setup(self, master_addr: str, master_port: int) -> dict:
        from rlhf.engines.deepspeed import build_frozen
        from rlhf.models.loading import load_causal_lm

        t0 = time.time()
        plan, rp = self.spec.plan, self.role_plan
        self.init_dist(master_addr, master_port, plan.device)
        cfg = replace(self.spec.model, name_or_path=rp.name_or_path) if rp.name_or_path else self.spec.model
        model = load_causal_lm(cfg, dtype=plan.dtype, device=plan.device, trainable=False)
        self.model = build_frozen(
            model,
            engine=self.spec.engine,
            world_size=self.world_size,
            dtype=plan.dtype,
            micro_batch=rp.micro_batch_per_gpu,
        )
        self.device = next(model.parameters()).device if not hasattr(self.model, "device") else self.model.device
        return {"setup_s": time.time() - t0}

    def logps(self, batch: RolloutBatch):
        import torch

        from rlhf.training.sequences import response_logps

        outs = []
        with torch.no_grad():
            for mb in batch.chunks(self.role_plan.micro_batch_per_gpu):
                mb = mb.to(self.device)
                lp, _, _ = response_logps(
                    self.model, mb.sequences, mb.attention_mask, mb.prompt_len, self.spec.rollout.temperature
                )
                outs.append(lp.float().cpu())
        return torch.cat(outs)
