"""The frozen reference role of on-policy RL: log-probs of rollout responses under the initial policy."""

from __future__ import annotations

import time

from rlhf.workers.policy import RoleSpec
from rlhf.workers.base import RankWorker


class ReferenceWorker(RankWorker):
    def __init__(self, rank: int, world_size: int, spec: RoleSpec):
        super().__init__(rank, world_size)
        self.spec = spec

    def setup(self, master_addr: str, master_port: int) -> dict:
        from rlhf.engines.deepspeed import build_frozen
        from rlhf.models.loading import load_causal_lm

        t0 = time.time()
        plan = self.spec.plan
        self.init_dist(master_addr, master_port, plan.device)
        model = load_causal_lm(self.spec.model, dtype=plan.dtype, device=plan.device, trainable=False)
        self.model = build_frozen(model, engine=self.spec.engine, world_size=self.world_size, dtype=plan.dtype,
                                  micro_batch=plan.micro_batch_per_gpu)
        self.device = next(model.parameters()).device if not hasattr(self.model, "device") else self.model.device
        return {"setup_s": time.time() - t0}

    def logps(self, batch: dict):
        import torch

        from rlhf.training.sequences import response_logps, split_rows

        n = len(batch["sequences"])
        m = min(self.spec.plan.micro_batch_per_gpu, n)
        parts = split_rows(batch, n // m) if n % m == 0 else [batch]
        outs = []
        with torch.no_grad():
            for mb in parts:
                lp, _, _ = response_logps(self.model, mb["sequences"].to(self.device),
                                          mb["attention_mask"].to(self.device), mb["prompt_len"],
                                          self.spec.rollout.temperature)
                outs.append(lp.float().cpu())
        return torch.cat(outs)
