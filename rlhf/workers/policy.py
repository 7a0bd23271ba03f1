"""The policy (actor) role of on-policy RL: generation (HF backend), log-probs, and the policy update."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from rlhf.config.algo import RLConfig
from rlhf.config.engine import EngineConfig
from rlhf.config.model import ModelConfig
from rlhf.config.rollout import RolloutConfig
from rlhf.plan import Plan
from rlhf.workers.base import RankWorker


@dataclass
class RoleSpec:
    """Typed slices an on-policy role needs."""

    algo: RLConfig
    model: ModelConfig
    engine: EngineConfig
    rollout: RolloutConfig
    plan: Plan
    seed: int
    output_dir: str
    resume: bool
    # Optimizer steps over the whole run (for the learning-rate schedule).
    total_updates: int = 1


class TrainedRole(RankWorker):
    """Shared by the policy and the critic: a DeepSpeed engine, micro-batched passes, state save/resume."""

    ckpt_name = "policy"

    def __init__(self, rank: int, world_size: int, spec: RoleSpec):
        super().__init__(rank, world_size)
        self.spec = spec
        self.plan = spec.plan

    def _device_batch(self, batch: dict) -> dict:
        dev = self.engine.device
        return {k: (v.to(dev) if hasattr(v, "to") else v) for k, v in batch.items()}

    def _micro(self, batch: dict):
        from rlhf.training.sequences import split_rows

        n = len(batch["sequences"])
        m = min(self.plan.micro_batch_per_gpu, n)
        return split_rows(batch, n // m) if n % m == 0 else [batch]

    def save_state(self, step: int) -> None:
        """Each trained role writes its shards into checkpoints/step_N/<role> (published by the driver)."""
        from rlhf.engines import checkpoint as ck

        tmp = ck.temp_sibling(Path(self.spec.output_dir) / "checkpoints" / ck.step_dir_name(step)) / self.ckpt_name
        tmp.mkdir(parents=True, exist_ok=True)
        self.engine.save_state(tmp)

    def load_state(self, ckpt_dir: str) -> None:
        self.engine.load_state(Path(ckpt_dir) / self.ckpt_name)


class PolicyWorker(TrainedRole):
    ckpt_name = "policy"

    def setup(self, master_addr: str, master_port: int) -> dict:
        from rlhf.engines.deepspeed import TrainEngine
        from rlhf.models.loading import load_causal_lm, load_tokenizer

        t0 = time.time()
        s, plan = self.spec, self.plan
        self.init_dist(master_addr, master_port, plan.device)
        self.seed_everything(s.seed + self.rank)
        self.tokenizer = load_tokenizer(s.model, padding_side="left")
        model = load_causal_lm(s.model, dtype=plan.dtype, device=plan.device)
        self.engine = TrainEngine(
            model, train=s.algo, engine=s.engine, micro_batch=plan.micro_batch_per_gpu,
            grad_accum=plan.grad_accum, world_size=plan.world_size, dtype=plan.dtype, total_steps=s.total_updates,
        )
        self.eos_ids = _eos_ids(self.engine.module, self.tokenizer)
        self.vllm = None
        return {"setup_s": time.time() - t0, "params": sum(p.numel() for p in model.parameters())}

    # ---- generation (HF backend) ------------------------------------------------------------------
    def generate(self, prompts: dict, seed: int) -> dict:
        """Sample one response per row of `prompts` (rows already repeated samples_per_prompt times).

        prompts: input_ids [N, P] left-padded, attention_mask [N, P]. Returns sequences [N, P+R] with R =
        rollout.max_new_tokens (right-padded), action_mask [N, R], rollout_logps [N, R] (temperature-scaled,
        from the generation's own logits).
        """
        import torch

        from rlhf.training.sequences import action_mask_from

        ro = self.spec.rollout
        module = self.engine.module
        module.eval()
        torch.manual_seed(seed + self.rank)
        ids, am = prompts["input_ids"], prompts["attention_mask"]
        seqs, masks, logps = [], [], []
        pad = self.tokenizer.pad_token_id
        t0 = time.time()
        for i in range(0, len(ids), ro.generate_batch):
            x = ids[i:i + ro.generate_batch].to(self.engine.device)
            a = am[i:i + ro.generate_batch].to(self.engine.device)
            with torch.no_grad():
                out = module.generate(
                    input_ids=x, attention_mask=a, do_sample=ro.temperature > 0,
                    temperature=max(ro.temperature, 1e-5), top_p=ro.top_p, top_k=ro.top_k if ro.top_k > 0 else 0,
                    max_new_tokens=ro.max_new_tokens, min_new_tokens=ro.max_new_tokens if ro.ignore_eos else 0,
                    pad_token_id=pad, eos_token_id=sorted(self.eos_ids), use_cache=True,
                    return_dict_in_generate=True, output_logits=True,
                )
            resp = out.sequences[:, x.shape[1]:]
            logits = torch.stack(out.logits, dim=1).float()
            lp = torch.log_softmax(logits / max(ro.temperature, 1e-5), -1).gather(-1, resp.unsqueeze(-1)).squeeze(-1)
            r = resp.shape[1]
            if r < ro.max_new_tokens:
                fill = ro.max_new_tokens - r
                resp = torch.nn.functional.pad(resp, (0, fill), value=pad)
                lp = torch.nn.functional.pad(lp, (0, fill), value=0.0)
            mask = action_mask_from(resp, set() if ro.ignore_eos else self.eos_ids, pad)
            seqs.append(torch.cat([x, resp], 1).cpu())
            masks.append(mask.cpu())
            logps.append((lp * mask).cpu())
        module.train()
        action_mask = torch.cat(masks)
        sequences = torch.cat(seqs)
        p = ids.shape[1]
        attention = torch.cat([am, action_mask], 1)
        return {
            "sequences": sequences, "attention_mask": attention, "action_mask": action_mask,
            "rollout_logps": torch.cat(logps), "prompt_len": p, "generate_s": time.time() - t0,
        }

    # ---- log-probs and update -------------------------------------------------------------------------
    def logps(self, batch: dict) -> "torch.Tensor":
        import torch

        from rlhf.training.sequences import response_logps

        self.engine.eval()
        outs = []
        with torch.no_grad():
            for mb in self._micro(batch):
                mb = self._device_batch(mb)
                lp, _, _ = response_logps(self.engine, mb["sequences"], mb["attention_mask"], mb["prompt_len"],
                                          self.spec.rollout.temperature)
                outs.append(lp.float().cpu())
        self.engine.train()
        return torch.cat(outs)

    def train(self, minibatches: list[dict]) -> dict:
        """One optimizer step per minibatch; each holds this rank's rows and the step's global counts."""
        from rlhf.algos.policy_loss import entropy_bonus, kl_loss, ppo_policy_loss
        from rlhf.training.sequences import response_logps

        a = self.spec.algo
        scale = self.plan.grad_accum * self.plan.world_size
        sums: dict[str, float] = defaultdict(float)
        info: dict = {}
        t0 = time.time()
        for mini in minibatches:
            norm = dict(num_tokens=mini["num_tokens"], num_seqs=mini["num_seqs"], max_len=mini["max_len"])
            for mb in self._micro(mini):
                mb = self._device_batch(mb)
                need_ent = a.entropy_coef > 0 or True
                logp, ent, aux = response_logps(self.engine, mb["sequences"], mb["attention_mask"], mb["prompt_len"],
                                                self.spec.rollout.temperature, with_entropy=need_ent)
                mask = mb["action_mask"].float()
                loss, stats = ppo_policy_loss(
                    logp, mb["old_logps"], mb["advantages"], mask, clip_low=a.clip_low, clip_high=a.clip_high,
                    dual_clip=a.dual_clip, agg=a.loss_agg, **norm,
                )
                sums["train/policy_loss"] += float(loss)
                if a.kl_coef > 0 and a.kl_in == "loss":
                    kl = kl_loss(logp, mb["ref_logps"], mask, kind=a.kl_estimator, agg=a.loss_agg, **norm)
                    loss = loss + mb["kl_coef"] * kl
                    sums["train/kl_loss"] += float(kl)
                if a.entropy_coef > 0:
                    loss = loss + entropy_bonus(ent, mask, coef=a.entropy_coef, agg=a.loss_agg, **norm)
                if aux is not None:
                    coef = getattr(self.engine.module.config, "router_aux_loss_coef", 0.0)
                    loss = loss + coef * aux / scale
                self.engine.backward(loss * scale)
                info = self.engine.step() or info
                frac = mask.sum().item() / max(norm["num_tokens"], 1)
                sums["train/entropy"] += float((ent * mask).sum() / max(norm["num_tokens"], 1))
                for k in ("clip_frac", "approx_kl"):
                    if k in stats:
                        sums[f"train/{k}"] += float(stats[k]) * frac
        n = max(len(minibatches), 1)
        out = {k: v / n for k, v in sums.items()}
        if self.rank == 0:
            out.update({f"train/{k}": v for k, v in info.items()})
            out["timing/train_policy_s"] = time.time() - t0
        return out

    # ---- export --------------------------------------------------------------------------------------
    def save_model(self, final_dir: str, run_info: dict) -> Optional[str]:
        self.tokenizer.padding_side = "right"
        path = self.engine.save_hf(Path(final_dir), self.tokenizer, extra_files={"rlhf_run.json": run_info})
        self.tokenizer.padding_side = "left"
        return str(path) if path else None


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
