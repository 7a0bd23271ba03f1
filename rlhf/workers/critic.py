"""The critic role of PPO: per-token values and the clipped value-loss update, on the critic's own ranks
(its batch arithmetic is ``plan.role("critic")``'s, not the actor's)."""

from __future__ import annotations

import time

from rlhf.types import MiniBatch, RolloutBatch
from rlhf.workers.trained import TrainedRole


class CriticWorker(TrainedRole):
    role = "critic"
    ckpt_name = "critic"

    def setup(self, master_addr: str, master_port: int) -> dict:
        import torch
        from transformers import AutoModelForTokenClassification

        from rlhf.models.loading import _common_kwargs, resolve_path

        t0 = time.time()
        s, plan = self.spec, self.plan
        with self.phase("dist"):
            self.init_dist(master_addr, master_port, plan.device)
        self.seed_everything(plan.rank_seed(self.role, self.rank))
        # A one-label token classifier on the policy's backbone (or the plan's critic model): a value for every
        # position.
        kw = _common_kwargs(s.model, plan.dtype, plan.device)
        kw.pop("quantization_config", None)
        path = resolve_path(self.role_plan.name_or_path or s.model.name_or_path)
        with self.phase("model"):
            model = AutoModelForTokenClassification.from_pretrained(path, num_labels=1, **kw)
        # No dropout (transformers puts 0.1 before the value head): the loss must train the function `values`
        # computed, and random masks would make the update depend on how rows meet ranks.
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        model.config.use_cache = False
        with self.phase("engine"):
            self.engine = self._engine(model, lr=s.algo.critic_lr)
        return {"setup_s": time.time() - t0}

    def values(self, batch: RolloutBatch):
        import torch

        from rlhf.training.packing_rl import scatter_rows

        self.engine.eval()
        micros = self._micro(batch)
        with torch.no_grad():
            outs = [self._forward_values(m) for m in micros]
        self.engine.train()
        return scatter_rows(outs, micros, len(batch), batch.action_mask.shape[1]).cpu()

    def _forward_values(self, m):
        from rlhf.training.packing_rl import _rows_of, packed_response_values
        from rlhf.training.sequences import response_values

        if m.packed is not None:
            return packed_response_values(self.engine, m.packed)
        b = _rows_of(m.batch)
        return response_values(self.engine, b.sequences, b.attention_mask, b.prompt_len)

    def train(self, minibatches: list[MiniBatch]) -> dict:
        """One optimizer step per minibatch (this rank's shard); metrics are this rank's shares of the means,
        summed on the device and read back once."""
        import torch

        from rlhf.algos.value_loss import value_loss

        a = self.spec.algo
        scale = self.engine.loss_scale
        total = None
        info: dict = {}
        t0 = time.time()
        for mini in minibatches:
            norm = mini.norm.kwargs()
            micros = self._micro(mini)
            for i, m in enumerate(micros):
                e = m.batch.exp
                self._boundary(micros, i)
                v = self._forward_values(m)
                loss, _ = value_loss(
                    v, e.old_values, e.returns, e.action_mask.float(), clip=a.value_clip, agg=a.loss_agg, **norm
                )
                self.engine.backward(loss * scale)
                info = self.engine.step() or info
                total = loss.detach() if total is None else total + loss.detach()
        n = max(len(minibatches), 1)
        out = {} if total is None else {"train/value_loss": float(torch.as_tensor(total)) / n}
        if self.rank == 0:
            out.update({f"train/critic_{k}": v for k, v in info.items()})
            out["timing/train_critic_s"] = time.time() - t0
        return out
