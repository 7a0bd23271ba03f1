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
        with self.phase("dist"):
            self.init_dist(master_addr, master_port, plan.device)
        cfg = replace(self.spec.model, name_or_path=rp.name_or_path) if rp.name_or_path else self.spec.model
        with self.phase("model"):
            model = load_causal_lm(cfg, dtype=plan.dtype, device=plan.device, trainable=False)
        with self.phase("engine"):
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
        """Log-probs [N, R] of the batch's response tokens; micro-batched like the policy's passes (fixed
        chunks, or token-budget bins, padded or packed: rlhf/training/packing_rl.py)."""
        import torch

        from rlhf.training.packing_rl import micro_batches, packed_response_logps, scatter_rows
        from rlhf.training.sequences import HeadMode, response_logps

        a, t = self.spec.algo, self.spec.rollout.temperature
        head = HeadMode.of(self.spec.engine, self.spec.plan.device)
        micros = micro_batches(
            batch,
            micro_rows=self.role_plan.micro_batch_per_gpu,
            max_tokens=getattr(a, "max_tokens_per_micro", None),
            packed=bool(getattr(a, "pack_sequences", False)),
            device=self.device,
        )
        outs = []
        with torch.no_grad():
            for m in micros:
                if m.packed is not None:
                    lp, _, _ = packed_response_logps(self.model, m.packed, t, head=head)
                else:
                    b = m.batch
                    lp, _, _ = response_logps(self.model, b.sequences, b.attention_mask, b.prompt_len, t, head=head)
                outs.append(lp.float())
        return scatter_rows(outs, micros, len(batch), batch.action_mask.shape[1]).cpu()
