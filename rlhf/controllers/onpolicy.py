"""The loop of on-policy RL (PPO, REINFORCE++, RLOO, GRPO, Dr.GRPO).

Per step: sample prompts -> generate -> reward -> log-probs (policy, reference, critic) -> advantages ->
policy/critic updates -> (weight sync to rollout engines). The math lives in rlhf/algos; the roles are Ray
actor groups in rlhf/workers; this file only moves batches between them and logs.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from rlhf.plan import Plan
from rlhf.types import RunResult


def run_onpolicy(cfg, plan: Plan, tracker, output_dir: Path, progress: bool = True) -> RunResult:
    from tqdm import tqdm

    from rlhf.algos.kl import build_kl_controller
    from rlhf.data.datasets import build_dataset
    from rlhf.models.loading import load_tokenizer
    from rlhf.workers.cluster import ensure_ray

    t0 = time.time()
    a = cfg.algo
    ensure_ray(num_gpus=plan.total_gpus, cpu_processes=sum(r.num_workers for r in plan.roles))
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    train_ds = build_dataset("prompt", cfg.data, tokenizer, "train", seed=cfg.seed)
    eval_ds = build_dataset("prompt", cfg.data, tokenizer, "eval", seed=cfg.seed)
    print(f"data: {train_ds.summary()}")
    steps_per_epoch = len(train_ds) // a.prompts_per_step
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_ds)} prompts are fewer than algo.prompts_per_step={a.prompts_per_step}")
    total = steps_per_epoch * a.epochs
    if a.max_steps:
        total = min(total, a.max_steps)
    roles = _start_roles(cfg, plan, total * plan.updates_per_step, output_dir)
    rewards = _reward_sources(cfg, roles)
    kl_ctl = build_kl_controller("adaptive" if a.kl_target else "fixed", coef=a.kl_coef, target=a.kl_target,
                                 horizon=a.kl_horizon)
    loop = _Loop(cfg, plan, tokenizer, roles, rewards, kl_ctl)
    first: dict = {}
    last: dict = {}
    try:
        evals_start = loop.evaluate(eval_ds)
        tracker.log_metrics({k.replace("eval/", "eval/start_"): v for k, v in evals_start.items()}, 0)
        bar = tqdm(range(total), desc=a.name, disable=not progress, dynamic_ncols=True)
        for step in bar:
            rows = _prompt_rows(train_ds, step, steps_per_epoch, a.prompts_per_step, cfg.seed)
            stats = loop.step(rows, step)
            tracker.log_metrics(stats, step + 1)
            first = first or stats
            last = stats
            bar.set_postfix(reward=f"{stats['rollout/reward_mean']:.3f}", kl=f"{stats.get('rollout/kl', 0):.3g}")
        evals = loop.evaluate(eval_ds)
        tracker.log_metrics(evals, total)
        evals_all = {**{k.replace("eval/", "eval/start_"): v for k, v in evals_start.items()}, **evals}
        run_info = {"algo": a.name, "steps": total, "model": cfg.model.name_or_path, "mlflow_run_id": tracker.run_id,
                    "mlflow_tracking_uri": tracker.uri}
        model_dir = roles["actor"].run("save_model", str(output_dir / "final"), run_info)[0]
        for g in roles.values():
            g.run("close")
    finally:
        rewards.close()
        for g in roles.values():
            g.shutdown()
    return RunResult(
        algo=a.name, steps=total, model_dir=model_dir, first=first, last=last, eval=evals_all,
        wall_s=time.time() - t0, objective=("eval/reward_mean", evals.get("eval/reward_mean", 0.0)),
    )


def _prompt_rows(ds, step: int, steps_per_epoch: int, n: int, seed: int) -> list[dict]:
    epoch, s = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 1000003 + epoch)
    perm = torch.randperm(len(ds), generator=g).tolist()
    return [ds[i] for i in perm[s * n:(s + 1) * n]]


def _start_roles(cfg, plan: Plan, total_updates: int, output_dir: Path) -> dict:
    from rlhf.workers.critic import CriticWorker
    from rlhf.workers.group import ActorGroup, make_placement_group
    from rlhf.workers.policy import PolicyWorker, RoleSpec
    from rlhf.workers.reference import ReferenceWorker
    from rlhf.workers.reward_model import RewardModelWorker

    spec = RoleSpec(algo=cfg.algo, model=cfg.model, engine=cfg.engine, rollout=cfg.rollout, plan=plan,
                    seed=cfg.seed, output_dir=str(output_dir), resume=cfg.resume, total_updates=total_updates)
    pools: dict = {}

    def group(role_name, cls, args):
        rp = plan.role(role_name)
        pg = None
        if plan.device == "cuda":
            if rp.pool not in pools:
                pools[rp.pool] = make_placement_group(rp.num_workers, 1.0)
            pg = pools[rp.pool]
        return ActorGroup(role_name, cls, rp.num_workers, gpus_per_worker=rp.gpus_per_worker, args=args,
                          placement_group=pg)

    roles = {"actor": group("actor", PolicyWorker, (spec,))}
    if plan.reference:
        roles["ref"] = group("ref", ReferenceWorker, (spec,))
    if plan.critic:
        roles["critic"] = group("critic", CriticWorker, (spec,))
    for name, src in cfg.reward.sources.items():
        if src.kind == "model":
            roles[f"reward.{name}"] = group(
                f"reward.{name}", RewardModelWorker,
                (cfg.model, src.path, plan.dtype, plan.device, src.batch_size),
            )
    # Set up every role at once: model loading overlaps across processes.
    pending = []
    for name, g in roles.items():
        if name.startswith("reward."):
            pending.append((g, g.submit("setup")))
        else:
            addr, port = g.run("rendezvous")[0]
            pending.append((g, g.submit("setup", addr, port)))
    for g, refs in pending:
        g.wait(refs, "setup")
    return roles


def _reward_sources(cfg, roles: dict):
    from rlhf.rewards.sources import RewardSources

    scorers = {}
    for name, g in roles.items():
        if name.startswith("reward."):
            scorers[name.split(".", 1)[1]] = _GroupScorer(g)
    return RewardSources(cfg.reward, scorers)


class _GroupScorer:
    def __init__(self, group):
        self.group = group

    def __call__(self, texts: list[str]) -> torch.Tensor:
        n = len(self.group)
        size = -(-len(texts) // n)
        parts = [texts[i * size:(i + 1) * size] for i in range(n)]
        outs = self.group.run("score", per_rank=[(p,) for p in parts])
        return torch.cat(outs)


class _Loop:
    def __init__(self, cfg, plan: Plan, tokenizer, roles: dict, rewards, kl_ctl):
        from rlhf.algos.shaping import RunningMeanStd

        self.cfg, self.plan, self.tok, self.roles, self.rewards, self.kl_ctl = cfg, plan, tokenizer, roles, rewards, kl_ctl
        self.a = cfg.algo
        self.reward_stats = RunningMeanStd()
        self.world = len(roles["actor"])

    # ---- one RL step ---------------------------------------------------------------------------------
    def step(self, rows: list[dict], step: int) -> dict:
        from rlhf.algos.advantages import compute_advantages
        from rlhf.algos.kl import kl_penalty
        from rlhf.algos.logprobs import masked_mean
        from rlhf.training.sequences import cat_rows, split_rows

        a, t = self.a, {}
        tic = time.time()
        batch, prompts, fields = self._rollout(rows, a.samples_per_prompt, seed=self.cfg.seed * 7 + step)
        t["timing/generate_s"] = time.time() - tic
        mask = batch["action_mask"].float()
        responses = self.tok.batch_decode(
            [s[batch["prompt_len"]:][m.bool()] for s, m in zip(batch["sequences"], batch["action_mask"])],
            skip_special_tokens=True,
        )
        tic = time.time()
        raw, reward_metrics = self.rewards(prompts, responses, fields)
        t["timing/reward_s"] = time.time() - tic
        scores = self._shape(raw.float(), mask)

        tic = time.time()
        shards = split_rows(batch, self.world)
        refs = {"old": self.roles["actor"].submit("logps", per_rank=[(s,) for s in shards])}
        if "ref" in self.roles:
            refs["ref"] = self.roles["ref"].submit("logps", per_rank=[(s,) for s in split_rows(batch, len(self.roles["ref"]))])
        if "critic" in self.roles:
            refs["values"] = self.roles["critic"].submit("values", per_rank=[(s,) for s in split_rows(batch, len(self.roles["critic"]))])
        old = torch.cat(self.roles["actor"].wait(refs["old"], "logps"))
        ref = torch.cat(self.roles["ref"].wait(refs["ref"], "logps")) if "ref" in refs else None
        values = torch.cat(self.roles["critic"].wait(refs["values"], "values")) if "values" in refs else None
        t["timing/logprobs_s"] = time.time() - tic

        keep = torch.ones_like(scores, dtype=torch.bool)
        if a.dynamic_filtering:
            from rlhf.algos.shaping import equal_reward_groups, keep_mask_for_groups

            keep = keep_mask_for_groups(~equal_reward_groups(scores, a.samples_per_prompt), a.samples_per_prompt)
        train_mask = mask * keep.unsqueeze(1).float()
        kl = kl_penalty(old, ref, kind=a.kl_estimator) * mask if ref is not None else None
        coef = self.kl_ctl.value
        adv, ret = compute_advantages(
            a.advantage, scores=scores, mask=train_mask, kl=kl if a.kl_in == "reward" else None,
            kl_coef=coef if a.kl_in == "reward" else 0.0, values=values, group_size=a.samples_per_prompt,
            gamma=a.gamma, lam=a.lam,
        )
        exp = dict(batch)
        exp.update(action_mask=train_mask.long(), old_logps=old, advantages=adv * train_mask, returns=ret,
                   kl_coef=coef)
        if ref is not None:
            exp["ref_logps"] = ref
        if values is not None:
            exp["old_values"] = values

        tic = time.time()
        stats = self._train(exp, step)
        t["timing/train_s"] = time.time() - tic
        kl_mean = float(masked_mean(kl, mask)) if kl is not None else 0.0
        self.kl_ctl.update(kl_mean, len(scores))

        lengths = mask.sum(-1)
        mism = (batch["rollout_logps"] - old).abs()
        out = {
            "rollout/reward_mean": float(raw.mean()),
            "rollout/reward_std": float(raw.std()) if len(raw) > 1 else 0.0,
            "rollout/score_mean": float(scores.mean()),
            "rollout/response_len_mean": float(lengths.mean()),
            "rollout/response_len_max": float(lengths.max()),
            "rollout/kl": kl_mean,
            "rollout/kl_coef": coef,
            "rollout/advantage_mean": float(masked_mean(adv, train_mask)) if train_mask.sum() else 0.0,
            "rollout/advantage_std": float(adv[train_mask.bool()].std()) if train_mask.sum() > 1 else 0.0,
            "rollout/kept_fraction": float(keep.float().mean()),
            "rollout/logprob_mismatch": float(masked_mean(mism, mask)),
            **{k: float(v) for k, v in reward_metrics.items()},
            **stats,
            **t,
        }
        total_tokens = float(mask.sum()) + batch["prompt_len"] * len(scores)
        out["timing/step_s"] = sum(v for k, v in t.items())
        out["perf/tokens_per_s"] = total_tokens / max(out["timing/step_s"], 1e-9)
        if out["rollout/logprob_mismatch"] > a.logprob_mismatch_warn:
            import warnings

            warnings.warn(
                f"step {step}: rollout and trainer log-probs differ by {out['rollout/logprob_mismatch']:.3g} per "
                f"token (threshold algo.logprob_mismatch_warn={a.logprob_mismatch_warn}); check weight sync, "
                "sampling settings and precision",
                stacklevel=1,
            )
        return out

    def _shape(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from rlhf.algos.shaping import clip_rewards, normalize_scores, overlong_penalty

        a = self.a
        if a.overlong_buffer > 0:
            scores = scores + overlong_penalty(mask.sum(-1), self.cfg.rollout.max_new_tokens, a.overlong_buffer,
                                               a.overlong_penalty)
        if a.reward_clip is not None:
            scores = clip_rewards(scores, -a.reward_clip, a.reward_clip)
        if a.normalize_reward:
            self.reward_stats.update(scores)
            scores = normalize_scores(scores, self.reward_stats.mean, self.reward_stats.std)
        return scores

    def _rollout(self, rows: list[dict], n: int, seed: int):
        """Generate n samples per prompt row; returns the batch, prompt texts and label fields (repeated)."""
        from rlhf.training.sequences import cat_rows, split_rows

        ids = [r["input_ids"] for r in rows for _ in range(n)]
        p = max(len(x) for x in ids)
        pad = self.tok.pad_token_id
        input_ids = torch.full((len(ids), p), pad, dtype=torch.long)
        attn = torch.zeros((len(ids), p), dtype=torch.long)
        for i, x in enumerate(ids):
            input_ids[i, p - len(x):] = torch.tensor(x)
            attn[i, p - len(x):] = 1
        prompts = {"input_ids": input_ids, "attention_mask": attn}
        shards = split_rows(prompts, self.world)
        outs = self.roles["actor"].run("generate", per_rank=[(s, seed) for s in shards])
        gen_s = max(o.pop("generate_s") for o in outs)
        batch = cat_rows(outs)
        batch["prompt_len"] = p
        # Trim the response width to the longest real response (less work in every later pass).
        r = int(batch["action_mask"].sum(-1).max().item()) or 1
        batch["sequences"] = batch["sequences"][:, :p + r]
        batch["attention_mask"] = batch["attention_mask"][:, :p + r]
        batch["action_mask"] = batch["action_mask"][:, :r]
        batch["rollout_logps"] = batch["rollout_logps"][:, :r]
        texts = [r.get("text") or self.tok.decode(r["input_ids"], skip_special_tokens=False) for r in rows for _ in range(n)]
        field_names = set().union(*[set(r.get("fields", {}) or {}) for r in rows]) if rows else set()
        fields = {k: [(r.get("fields") or {}).get(k) for r in rows for _ in range(n)] for k in field_names}
        return batch, texts, fields

    def _train(self, exp: dict, step: int) -> dict:
        """Split the rollout into optimizer-step minibatches (shuffled), each sharded over the ranks."""
        from rlhf.training.sequences import split_rows

        a, plan = self.a, self.plan
        n = len(exp["sequences"])
        g = torch.Generator().manual_seed(self.cfg.seed * 31 + step)
        per_rank: list[list[dict]] = [[] for _ in range(self.world)]
        crit_rank: list[list[dict]] = [[] for _ in range(len(self.roles.get("critic", [])) or 1)]
        r_len = exp["action_mask"].shape[1]
        for _ in range(a.update_epochs):
            perm = torch.randperm(n, generator=g)
            for i in range(0, n, plan.train_batch_samples):
                idx = perm[i:i + plan.train_batch_samples]
                mini = {k: (v[idx] if isinstance(v, torch.Tensor) and v.dim() > 0 and len(v) == n else v)
                        for k, v in exp.items()}
                mini["num_tokens"] = float(mini["action_mask"].sum().clamp(min=1))
                mini["num_seqs"] = float(len(idx))
                mini["max_len"] = float(self.cfg.rollout.max_new_tokens if a.loss_agg == "seq_mean_token_sum_norm" else r_len)
                for r, shard in enumerate(split_rows(mini, self.world)):
                    per_rank[r].append(shard)
                if "critic" in self.roles:
                    for r, shard in enumerate(split_rows(mini, len(self.roles["critic"]))):
                        crit_rank[r].append(shard)
        refs = {"actor": self.roles["actor"].submit("train", per_rank=[(m,) for m in per_rank])}
        if "critic" in self.roles:
            refs["critic"] = self.roles["critic"].submit("train", per_rank=[(m,) for m in crit_rank])
        stats: dict = {}
        for name, r in refs.items():
            outs = self.roles[name].wait(r, "train")
            for d in outs:
                for k, v in d.items():
                    stats[k] = stats.get(k, 0.0) + (v if not k.startswith(("timing/", "train/lr", "train/grad")) else 0)
            for k, v in outs[0].items():
                if k.startswith(("timing/", "train/lr", "train/grad")):
                    stats[k] = v
        return stats

    # ---- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, eval_ds, limit: int = 64) -> dict:
        """Mean reward of one sampled response for up to `limit` held-out prompts."""
        if len(eval_ds) == 0:
            return {}
        k = min(limit, len(eval_ds))
        k -= k % self.world
        if k == 0:
            return {}
        rows = [eval_ds[i] for i in range(k)]
        batch, prompts, fields = self._rollout(rows, 1, seed=12345)
        responses = self.tok.batch_decode(
            [s[batch["prompt_len"]:][m.bool()] for s, m in zip(batch["sequences"], batch["action_mask"])],
            skip_special_tokens=True,
        )
        raw, metrics = self.rewards(prompts, responses, fields)
        out = {"eval/reward_mean": float(raw.mean()),
               "eval/response_len_mean": float(batch["action_mask"].sum(-1).float().mean())}
        out.update({"eval/" + k.split("/", 1)[1]: float(v) for k, v in metrics.items() if k.endswith("_mean")})
        return out
