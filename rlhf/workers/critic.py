"""The critic role of PPO: per-token values and the clipped value-loss update."""

from __future__ import annotations

import time
from collections import defaultdict

from rlhf.workers.policy import TrainedRole


class CriticWorker(TrainedRole):
    ckpt_name = "critic"

    def setup(self, master_addr: str, master_port: int) -> dict:
        from transformers import AutoModelForTokenClassification

        from rlhf.engines.deepspeed import TrainEngine
        from rlhf.models.loading import _common_kwargs, resolve_path

        t0 = time.time()
        s, plan = self.spec, self.plan
        self.init_dist(master_addr, master_port, plan.device)
        self.seed_everything(s.seed + 7919 + self.rank)
        # A one-label token classifier on the policy's backbone: a value for every position.
        kw = _common_kwargs(s.model, plan.dtype, plan.device)
        kw.pop("quantization_config", None)
        model = AutoModelForTokenClassification.from_pretrained(resolve_path(s.model.name_or_path), num_labels=1, **kw)
        model.config.use_cache = False
        self.engine = TrainEngine(
            model, train=s.algo, engine=s.engine, micro_batch=plan.micro_batch_per_gpu,
            grad_accum=plan.grad_accum, world_size=plan.world_size, dtype=plan.dtype,
            total_steps=s.total_updates, lr=s.algo.critic_lr,
        )
        return {"setup_s": time.time() - t0}

    def values(self, batch: dict):
        import torch

        from rlhf.training.sequences import response_values

        self.engine.eval()
        outs = []
        with torch.no_grad():
            for mb in self._micro(batch):
                mb = self._device_batch(mb)
                outs.append(response_values(self.engine, mb["sequences"], mb["attention_mask"], mb["prompt_len"]).cpu())
        self.engine.train()
        return torch.cat(outs)

    def train(self, minibatches: list[dict]) -> dict:
        from rlhf.algos.value_loss import value_loss
        from rlhf.training.sequences import response_values

        a = self.spec.algo
        scale = self.plan.grad_accum * self.plan.world_size
        sums: dict[str, float] = defaultdict(float)
        t0 = time.time()
        for mini in minibatches:
            norm = dict(num_tokens=mini["num_tokens"], num_seqs=mini["num_seqs"], max_len=mini["max_len"])
            for mb in self._micro(mini):
                mb = self._device_batch(mb)
                v = response_values(self.engine, mb["sequences"], mb["attention_mask"], mb["prompt_len"])
                loss, stats = value_loss(v, mb["old_values"], mb["returns"], mb["action_mask"].float(),
                                         clip=a.value_clip, agg=a.loss_agg, **norm)
                self.engine.backward(loss * scale)
                self.engine.step()
                sums["train/value_loss"] += float(loss.detach())
        n = max(len(minibatches), 1)
        out = {k: v / n for k, v in sums.items()}
        if self.rank == 0:
            out["timing/train_critic_s"] = time.time() - t0
        return out
