"""The policy (actor) role of on-policy RL: log-probs, the policy update, and the weights it hands to the
rollout engines.

When the policy ranks generate themselves (HF generate, or an in-process vLLM engine per rank with
``placement=colocated``), each holds a ``Generator`` from rlhf/rollout/registry.py and answers ``generate`` and
``sync_weights`` through it. With separate engines, rank 0 broadcasts the weights to them
(``init_weight_sync``, ``broadcast_weights``; rlhf/rollout/weights.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from rlhf.types import MiniBatch, PromptBatch, RolloutBatch
from rlhf.workers.trained import TrainedRole


class PolicyWorker(TrainedRole):
    role = "actor"
    ckpt_name = "policy"

    def setup(self, master_addr: str, master_port: int) -> dict:
        from rlhf.models.loading import load_causal_lm, load_tokenizer
        from rlhf.models.ring_attention import install, setup_ring
        from rlhf.rollout.registry import make_generator, uses_separate_engines
        from rlhf.rollout.weights import WeightSender

        t0 = time.time()
        s, plan = self.spec, self.plan
        with self.phase("dist"):
            self.init_dist(master_addr, master_port, plan.device)
        self.seed_everything(plan.rank_seed(self.role, self.rank))
        with self.phase("model"):
            self.tokenizer = load_tokenizer(s.model, padding_side="left")
            model = load_causal_lm(s.model, dtype=plan.dtype, device=plan.device)
        # Ring attention (model.ring_attn_size): the controller gives the ranks of a ring the same rows; each
        # packed row of the log-prob and training passes is split over them (rlhf/training/packing_rl.py).
        if setup_ring(self.role_plan.ring_attn_size, s.model.ring_head_stride, plan.device) is not None:
            install(model)
        with self.phase("engine"):
            self.engine = self._engine(model)
        self.eos_ids = _eos_ids(self.engine.module, self.tokenizer)
        self.sender = WeightSender(self.engine.module, zero3=s.engine.zero_stage == 3, dtype=plan.dtype)
        info = {"setup_s": time.time() - t0, "params": sum(p.numel() for p in model.parameters())}
        self.generator = None
        if not uses_separate_engines(s.rollout, s.placement_mode):
            t1 = time.time()
            with self.phase("rollout"):
                self.generator = make_generator(self)
            info["rollout_start_s"] = time.time() - t1
        return info

    # ---- generation (when the policy ranks generate) ---------------------------------------------------
    def generate(self, prompts: PromptBatch, seed: int, greedy: bool = False) -> tuple[RolloutBatch, dict]:
        """One response per row of `prompts`, right-padded to rollout.max_new_tokens, and its timings.
        ``greedy`` decodes with temperature 0 (consistency checks)."""
        if self.generator is None:
            raise RuntimeError("generate on a policy rank with separate rollout engines: the fleet generates")
        return self.generator.generate(prompts, seed=seed, greedy=greedy)

    def sync_weights(self) -> dict:
        """Load the current weights into this rank's engine (every rank: ZeRO-3 gathers are collective)."""
        return self.generator.load_weights() if self.generator is not None else {}

    def rollout_sleep(self) -> None:
        if self.generator is not None:
            self.generator.sleep()

    def rollout_wake_up(self) -> None:
        if self.generator is not None:
            self.generator.wake_up()

    # ---- weights for separate engines ------------------------------------------------------------------
    def rollout_weight_specs(self) -> list:
        """(HF name, wire dtype, full shape) of every tensor ``broadcast_weights`` sends, in order."""
        return self.sender.specs()

    def init_weight_sync(self, master_addr: str, port: int, world_size: int, backend: str) -> None:
        """Rank 0 hosts the weight-sync group with the separate rollout engines (blocks until all joined)."""
        self.sender.connect(self.rank, master_addr, port, world_size, backend)

    def broadcast_weights(self) -> dict:
        """Rank 0 broadcasts the current weights; other ranks only join the ZeRO-3 gathers."""
        t0 = time.time()
        sent = self.sender.broadcast(self.rank)
        return {"weight_sync_s": time.time() - t0, "weight_sync_bytes": sent}

    # ---- log-probs and update --------------------------------------------------------------------------
    def logps(self, batch: RolloutBatch):
        """Log-probs [N, R] of the batch's response tokens at rollout.temperature."""
        import torch

        from rlhf.training.packing_rl import scatter_rows

        self.engine.eval()
        micros = self._micro(batch)
        outs = []
        with torch.no_grad():
            for m in micros:
                lp, _, _ = self._forward_logps(m, with_entropy=False)
                outs.append(lp.float())
        self.engine.train()
        # One transfer for the whole pass.
        return scatter_rows(outs, micros, len(batch), batch.action_mask.shape[1]).cpu()

    def _forward_logps(self, m, with_entropy: bool, entropy_grad: bool = False):
        """Log-probs, entropy and router aux loss of one micro-batch (padded or packed)."""
        from rlhf.training.packing_rl import _rows_of, packed_response_logps
        from rlhf.training.sequences import response_logps

        t = self.spec.rollout.temperature
        head = self.engine.head_mode
        if m.packed is not None:
            return packed_response_logps(self.engine, m.packed, t, with_entropy, entropy_grad, head=head)
        b = _rows_of(m.batch)
        return response_logps(
            self.engine,
            b.sequences,
            b.attention_mask,
            b.prompt_len,
            t,
            with_entropy,
            entropy_grad=entropy_grad,
            head=head,
        )

    def score_greedy(self, batch: RolloutBatch) -> dict:
        """Teacher-forced log-probs [N, R] of the batch's response tokens at temperature 1, and the largest
        log-prob [N, R] at each position (equal when the token is the trainer's greedy choice)."""
        import torch

        from rlhf.training.sequences import position_ids

        self.engine.eval()
        chosen, best = [], []
        with torch.no_grad():
            for mb in batch.chunks(self.role_plan.micro_batch_per_gpu):
                mb = mb.to(self.engine.device)
                p = mb.prompt_len
                out = self.engine(
                    input_ids=mb.sequences,
                    attention_mask=mb.attention_mask,
                    position_ids=position_ids(mb.attention_mask),
                    use_cache=False,
                )
                lp = torch.log_softmax(out.logits[:, p - 1 : -1].float(), -1)
                chosen.append(lp.gather(-1, mb.sequences[:, p:].unsqueeze(-1)).squeeze(-1).cpu())
                best.append(lp.max(-1).values.cpu())
        self.engine.train()
        return {"logps": torch.cat(chosen), "top_logps": torch.cat(best)}

    def train(self, minibatches: list[MiniBatch], log_entropy: bool = True) -> dict:
        """One optimizer step per minibatch; each holds this rank's rows and the step's global counts.
        Metrics are this rank's shares of the step means (the driver adds them up over ranks), summed as
        tensors on the device and read back once at the end: no host synchronisation per micro-batch."""
        import torch

        from rlhf.algos.policy_loss import POLICY_LOSSES, entropy_bonus, kl_loss, tis_weights

        a = self.spec.algo
        scale = self.engine.loss_scale
        surrogate = POLICY_LOSSES[getattr(a, "policy_loss", "ppo")]
        tis_cap = getattr(a, "tis_cap", None)
        # Entropy costs a pass over the vocabulary: only for its loss term or when the step logs it.
        need_ent = a.entropy_coef > 0 or log_entropy
        kl_in_loss = a.kl_coef > 0 and a.kl_in == "loss"
        sums: dict = {}

        def add(key, value):
            sums[key] = sums[key] + value if key in sums else value

        info: dict = {}
        t0 = time.time()
        for mini in minibatches:
            norm = mini.norm.kwargs()
            tokens = max(norm["num_tokens"], 1)
            micros = self._micro(mini)
            for i, m in enumerate(micros):
                e = m.batch.exp
                self._boundary(micros, i)
                logp, ent, aux = self._forward_logps(m, need_ent, entropy_grad=a.entropy_coef > 0)
                mask = e.action_mask.float()
                weight = None
                if tis_cap is not None and e.rollout_logps is not None:
                    weight, tis = tis_weights(e.old_logps, e.rollout_logps, mask, cap=tis_cap)
                loss, stats = surrogate(
                    logp,
                    e.old_logps,
                    e.advantages,
                    mask,
                    clip_low=a.clip_low,
                    clip_high=a.clip_high,
                    dual_clip=a.dual_clip,
                    agg=a.loss_agg,
                    weight=weight,
                    **norm,
                )
                add("train/policy_loss", loss.detach())
                if kl_in_loss:
                    kl = kl_loss(logp, e.ref_logps, mask, kind=a.kl_estimator, agg=a.loss_agg, **norm)
                    loss = loss + e.kl_coef * kl
                    add("train/kl_loss", kl.detach())
                if a.entropy_coef > 0:
                    loss = loss + entropy_bonus(ent, mask, coef=a.entropy_coef, agg=a.loss_agg, **norm)
                if aux is not None:
                    coef = getattr(self.engine.module.config, "router_aux_loss_coef", 0.0)
                    loss = loss + coef * aux / scale
                self.engine.backward(loss * scale)
                info = self.engine.step() or info
                # This micro-batch's share of the minibatch's tokens weighs its token means.
                frac = mask.sum() / tokens
                if ent is not None:
                    add("train/entropy", (ent.detach() * mask).sum() / tokens)
                for k in ("clip_frac", "approx_kl"):
                    if k in stats:
                        add(f"train/{k}", stats[k] * frac)
                if weight is not None:
                    add("train/tis_ratio_mean", tis["tis_ratio_mean"] * frac)
                    add("train/tis_clip_frac", tis["tis_clip_frac"] * frac)
        # The ranks of a ring train the same rows, each computing their whole loss: one share per ring.
        n = max(len(minibatches), 1) * self.role_plan.ring_attn_size
        keys = list(sums)
        values = torch.stack([torch.as_tensor(sums[k], dtype=torch.float32).reshape(()) for k in keys]).tolist()
        out = {k: v / n for k, v in zip(keys, values)}
        if self.rank == 0:
            out.update({f"train/{k}": v for k, v in info.items()})
            out["timing/train_policy_s"] = time.time() - t0
        return out

    # ---- export and shutdown ---------------------------------------------------------------------------
    def save_model(self, final_dir: str, run_info: dict) -> Optional[str]:
        self.tokenizer.padding_side = "right"
        path = self.engine.save_hf(Path(final_dir), self.tokenizer, extra_files={"rlhf_run.json": run_info})
        self.tokenizer.padding_side = "left"
        return str(path) if path else None

    def close(self) -> None:
        self.sender.close()
        if self.generator is not None:
            self.generator.close()
            self.generator = None
        super().close()


def _eos_ids(model, tokenizer) -> set[int]:
    ids = set()
    gen = getattr(model, "generation_config", None)
    e = getattr(gen, "eos_token_id", None)
    if isinstance(e, int):
        ids.add(e)
    elif isinstance(e, (list, tuple)):
        ids.update(e)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids
