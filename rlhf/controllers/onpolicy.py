"""The loop of on-policy RL (PPO, REINFORCE++, RLOO, GRPO, Dr.GRPO).

Per step: sample prompts -> generate -> reward -> log-probs (policy, reference, critic) -> advantages ->
policy/critic updates -> (weight sync to rollout engines). The math lives in rlhf/algos; the roles are Ray
actor groups in rlhf/workers; this file only moves batches between them and logs.

Generation: rollout=hf and rollout=vllm with placement=colocated run inside the policy ranks (each on its shard
of the prompts); rollout=vllm with placement=separate runs on the rollout.num_engines engines of an
EngineFleet (rlhf/workers/rollout.py). Every path returns the same batch, so the rest of the step is shared.
With vLLM the run ends with a consistency check: greedy engine outputs against the trainer's own forward.
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
    loop = _Loop(cfg, plan, tokenizer, roles, rewards, kl_ctl, fleet=_connect_fleet(cfg, plan, roles))
    first: dict = {}
    last: dict = {}
    try:
        start = loop.resume(output_dir) if cfg.resume else 0
        # Engines start from the checkpoint on disk; a resumed trainer may hold other weights.
        tracker.log_metrics({"timing/weight_sync_start_s": loop.sync_weights()}, start)
        evals_start = loop.evaluate(eval_ds)
        tracker.log_metrics({k.replace("eval/", "eval/start_"): v for k, v in evals_start.items()}, start)
        bar = tqdm(range(start, total), desc=a.name, disable=not progress, dynamic_ncols=True)
        for step in bar:
            rows = _prompt_rows(train_ds, step, steps_per_epoch, a.prompts_per_step, cfg.seed)
            stats = loop.step(rows, step)
            tracker.log_metrics(stats, step + 1)
            first = first or stats
            last = stats
            bar.set_postfix(reward=f"{stats['rollout/reward_mean']:.3f}", kl=f"{stats.get('rollout/kl', 0):.3g}")
            if a.save_every and (step + 1) % a.save_every == 0 and step + 1 < total:
                loop.save(output_dir, step + 1)
        evals = loop.evaluate(eval_ds)
        if cfg.rollout.backend == "vllm":
            evals.update(loop.check_rollout(eval_ds if len(eval_ds) else train_ds, output_dir))
        if plan.device == "cuda":
            evals.update(_peak_memory(roles))
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
    from rlhf.models.loading import resolve_path
    from rlhf.workers.critic import CriticWorker
    from rlhf.workers.group import ActorGroup, make_placement_group
    from rlhf.workers.policy import PolicyWorker, RoleSpec
    from rlhf.workers.reference import ReferenceWorker
    from rlhf.workers.reward_model import RewardModelWorker
    from rlhf.workers.rollout import RolloutWorker

    spec = RoleSpec(algo=cfg.algo, model=cfg.model, engine=cfg.engine, rollout=cfg.rollout, plan=plan,
                    seed=cfg.seed, output_dir=str(output_dir), resume=cfg.resume, total_updates=total_updates,
                    placement_mode=cfg.placement.mode,
                    max_model_len=cfg.data.prompt_max_len + cfg.rollout.max_new_tokens,
                    sleep_level=cfg.rollout.sleep_level)
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
    if cfg.rollout.backend == "vllm" and cfg.placement.mode == "separate":
        roles["rollout"] = group("rollout", RolloutWorker, (resolve_path(cfg.model.name_or_path),
                                                            _engine_options(cfg, plan)))
    # Set up every role at once: model loading overlaps across processes.
    pending = []
    for name, g in roles.items():
        if name == "rollout":
            pending.append((g, g.submit("ready")))  # the engines start in their constructors
        elif name.startswith("reward."):
            pending.append((g, g.submit("setup")))
        else:
            addr, port = g.run("rendezvous")[0]
            pending.append((g, g.submit("setup", addr, port)))
    for g, refs in pending:
        g.wait(refs, "setup")
    return roles


def _engine_options(cfg, plan: Plan) -> dict:
    """VLLMEngine keyword arguments of a separate rollout engine (its seed is offset by its rank)."""
    ro = cfg.rollout
    return {"dtype": {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[plan.dtype],
            "gpu_memory_utilization": ro.gpu_memory_utilization, "tensor_parallel_size": ro.tensor_parallel_size,
            # Nothing else shares a separate engine's GPU: sleeping would only add wake-up time.
            "enable_sleep": False, "enforce_eager": ro.enforce_eager, "seed": cfg.seed,
            "max_model_len": cfg.data.prompt_max_len + ro.max_new_tokens, "device": plan.device}


def _connect_fleet(cfg, plan: Plan, roles: dict):
    """The separate rollout engines joined to policy rank 0's weight-sync group; None for other placements."""
    if "rollout" not in roles:
        return None
    from rlhf.workers.rollout import EngineFleet

    backend = {"auto": "nccl" if plan.device == "cuda" else "gloo", "nccl": "nccl"}.get(cfg.rollout.sync)
    if backend is None or (backend == "nccl" and plan.device != "cuda"):
        raise ValueError(
            f"rollout.sync={cfg.rollout.sync} with placement=separate on {plan.device}: separate engines take "
            "weights by broadcast; use rollout.sync=auto (nccl on GPUs, gloo on CPU)"
        )
    fleet = EngineFleet(roles["rollout"], roles["actor"], cfg.rollout.tensor_parallel_size, backend)
    fleet.connect()
    return fleet


def _peak_memory(roles: dict) -> dict:
    """Peak torch-allocated GPU memory of each role's processes (the largest rank), GiB. vLLM's own pool
    (sleep-mode allocator) may sit outside torch's counters: compare with nvidia-smi."""
    import ray

    out = {}
    for name, g in roles.items():
        peaks = ray.get([a.__ray_call__.remote(_cuda_peak_gib) for a in g.actors])
        out[f"memory/{name}_peak_alloc_gib"] = max(peaks)
    return out


def _cuda_peak_gib(_worker) -> float:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0


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
    def __init__(self, cfg, plan: Plan, tokenizer, roles: dict, rewards, kl_ctl, fleet=None):
        from rlhf.algos.shaping import RunningMeanStd

        self.cfg, self.plan, self.tok, self.roles, self.rewards, self.kl_ctl = cfg, plan, tokenizer, roles, rewards, kl_ctl
        self.a = cfg.algo
        self.reward_stats = RunningMeanStd()
        self.world = len(roles["actor"])
        self.fleet = fleet  # separate vLLM engines, or None when the policy ranks generate
        self.gen_info: dict = {}  # timings and finish reasons of the last rollout

    def sync_weights(self) -> float:
        """Push the policy's weights into the vLLM engines; returns the seconds it took (0 without vLLM)."""
        if self.cfg.rollout.backend != "vllm":
            return 0.0
        tic = time.time()
        if self.fleet is not None:
            self.fleet.sync()
        else:
            self.roles["actor"].run("sync_weights")
        return time.time() - tic

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
        # The roles run concurrently; each one's finishing time (from the common start) goes to gen_info.
        old = torch.cat(self.roles["actor"].wait(refs["old"], "logps"))
        self.gen_info["timing/logprobs_actor_done_s"] = time.time() - tic
        ref = torch.cat(self.roles["ref"].wait(refs["ref"], "logps")) if "ref" in refs else None
        if ref is not None:
            self.gen_info["timing/logprobs_ref_done_s"] = time.time() - tic
        values = torch.cat(self.roles["critic"].wait(refs["values"], "values")) if "values" in refs else None
        if values is not None:
            self.gen_info["timing/logprobs_critic_done_s"] = time.time() - tic
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
        if self.cfg.rollout.backend == "vllm":
            t["timing/weight_sync_s"] = self.sync_weights()
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
            **self.gen_info,
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

    def _rollout(self, rows: list[dict], n: int, seed: int, greedy: bool = False):
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
        ro = self.cfg.rollout
        if self.fleet is not None:
            batch = self.fleet.generate(
                input_ids, attn, max_new_tokens=ro.max_new_tokens, pad_id=pad,
                temperature=0.0 if greedy else ro.temperature, top_p=ro.top_p, top_k=ro.top_k,
                ignore_eos=ro.ignore_eos, stop_token_ids=None if ro.ignore_eos else [self.tok.eos_token_id],
            )
            outs = [batch]
        else:
            shards = split_rows(prompts, self.world)
            outs = self.roles["actor"].run("generate", per_rank=[(s, seed, greedy) for s in shards])
        info = {"timing/generate_engine_s": max(o.pop("generate_s") for o in outs)}
        if "sleep_wake_s" in outs[0]:
            info["timing/sleep_wake_s"] = max(o.pop("sleep_wake_s") for o in outs)
        batch = cat_rows(outs) if self.fleet is None else batch
        finish = batch.pop("finish_reason")
        info["rollout/truncated_fraction"] = sum(f == "length" for f in finish) / max(len(finish), 1)
        self.gen_info = info
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

    # ---- vLLM consistency ----------------------------------------------------------------------------
    def check_rollout(self, ds, output_dir: Path, limit: int = 8, atol: float = 0.05) -> dict:
        """Greedy engine outputs for up to `limit` prompts against the trainer's forward on the same tokens.

        check/greedy_agreement: fraction of response tokens that are also the trainer's argmax (within `atol`
        in log-prob, so near-ties in low precision count as agreeing); check/logprob_max_abs_diff and
        check/logprob_mean_abs_diff: engine vs trainer log-probs of those tokens. The rows go to
        output_dir/rollout_check.json.
        """
        import json

        from rlhf.algos.logprobs import masked_mean
        from rlhf.training.sequences import split_rows

        k = max(min(limit, len(ds)) // self.world, 1) * self.world
        rows = [ds[i % len(ds)] for i in range(k)]
        batch, _, _ = self._rollout(rows, 1, seed=0, greedy=True)
        outs = self.roles["actor"].run("score_greedy", per_rank=[(s,) for s in split_rows(batch, self.world)])
        trainer = torch.cat([o["logps"] for o in outs])
        top = torch.cat([o["top_logps"] for o in outs])
        mask = batch["action_mask"].float()
        diff = (batch["rollout_logps"] - trainer).abs() * mask
        agree = ((top - trainer) <= atol).float()
        p = batch["prompt_len"]
        records = [{"prompt_ids": s[:p][a[:p].bool()].tolist(), "response_ids": s[p:][m.bool()].tolist(),
                    "engine_logps": lp[m.bool()].tolist(), "trainer_logps": tl[m.bool()].tolist()}
                   for s, a, m, lp, tl in zip(batch["sequences"], batch["attention_mask"], batch["action_mask"],
                                              batch["rollout_logps"], trainer)]
        (Path(output_dir) / "rollout_check.json").write_text(json.dumps(records))
        return {"check/greedy_agreement": float(masked_mean(agree, mask)),
                "check/logprob_max_abs_diff": float(diff.max()),
                "check/logprob_mean_abs_diff": float(masked_mean(diff, mask))}

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save(self, output_dir: Path, step: int) -> Path:
        """Training state of the trained roles plus the driver's adaptive state (rlhf/controllers/rl_state.py)."""
        from rlhf.controllers.rl_state import save_rl_state

        state = {"algo": self.a.name, "kl_coef": self.kl_ctl.value,
                 "reward_stats": [self.reward_stats.count, self.reward_stats.mean, self.reward_stats.m2]}
        return save_rl_state(self.roles, output_dir, step, state, self.a.keep_checkpoints)

    def resume(self, output_dir: Path) -> int:
        """Load the newest checkpoint under output_dir, if any; returns the step to continue from."""
        from rlhf.controllers.rl_state import resume_rl_state

        state = resume_rl_state(self.roles, output_dir, self.a.name)
        if state is None:
            return 0
        self.kl_ctl.value = float(state["kl_coef"])
        self.reward_stats.count, self.reward_stats.mean, self.reward_stats.m2 = state["reward_stats"]
        return int(state["step"])

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
