"""The loop of on-policy RL (PPO, REINFORCE++, RLOO, GRPO, Dr.GRPO).

Per step: sample prompts -> generate -> reward -> log-probs (policy, reference, critic) -> advantages ->
policy/critic updates -> (weight sync to rollout engines). The math lives in rlhf/algos; the roles are Ray
actor groups in rlhf/workers; this file only moves batches between them and logs.

Generation goes through one interface (rlhf/rollout): the policy ranks generate (HF generate, or an
in-process vLLM engine per rank), or separate engines do; the loop only asks it for a RolloutBatch and for
weight syncs. Engines with their own copy of the weights end the run with a consistency check: greedy engine
outputs against the trainer's own forward. Batches are the typed containers of rlhf/types.py.
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
    from rlhf.controllers.budget import WallClock, describe, total_steps
    from rlhf.data.datasets import build_dataset
    from rlhf.models.loading import load_tokenizer
    from rlhf.rollout.registry import build_rollout
    from rlhf.training.steps import step_counts
    from rlhf.workers.cluster import ensure_ray

    t0 = time.time()
    a = cfg.algo
    ensure_ray(num_gpus=plan.total_gpus, cpu_processes=sum(r.num_workers for r in plan.roles))
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    train_ds = build_dataset("prompt", cfg.data, tokenizer, "train", seed=cfg.seed)
    eval_ds = build_dataset("prompt", cfg.data, tokenizer, "eval", seed=cfg.seed)
    print(f"data: {train_ds.summary()}")
    steps_per_epoch, _ = step_counts(
        len(train_ds), a.prompts_per_step, a.epochs, a.max_steps, key="algo.prompts_per_step", what="prompts"
    )
    total, note = total_steps(steps_per_epoch, a.epochs, a.max_steps, f"{len(train_ds)} prompts")
    clock = WallClock(a.max_time, started=t0)
    eval_prompts = len(eval_ds) if cfg.eval.max_prompts is None else min(cfg.eval.max_prompts, len(eval_ds))
    print(
        describe(
            total,
            f"{a.prompts_per_step} prompts x {a.samples_per_prompt} samples",
            steps_per_epoch,
            clock,
            a.eval_every,
            eval_prompts,
        )
    )
    if note:
        print(f"note: {note}")
    roles = _start_roles(cfg, plan, total * plan.updates_per_step, output_dir)
    rewards = _reward_sources(cfg, roles)
    kl_ctl = build_kl_controller(
        "adaptive" if a.kl_target else "fixed", coef=a.kl_coef, target=a.kl_target, horizon=a.kl_horizon
    )
    loop = _Loop(cfg, plan, tokenizer, roles, rewards, kl_ctl, rollout=build_rollout(cfg, plan, roles, tokenizer))
    first: dict = {}
    last: dict = {}
    try:
        start = loop.resume(output_dir) if cfg.resume else 0
        # Engines start from the checkpoint on disk; a resumed trainer may hold other weights.
        tracker.log_metrics({"timing/weight_sync_start_s": loop.sync_weights()}, start)
        tic = time.time()
        evals_start = loop.evaluate(eval_ds)
        clock.reserve = time.time() - tic
        tracker.log_metrics({k.replace("eval/", "eval/start_"): v for k, v in evals_start.items()}, start)
        bar = tqdm(range(start, total), desc=a.name, disable=not progress, dynamic_ncols=True)
        done = start
        for step in bar:
            if step > start and clock.out_of_time():
                print(clock.stop_message(done, total))
                break
            rows = _prompt_rows(train_ds, step, steps_per_epoch, a.prompts_per_step, cfg.seed)
            tic = time.time()
            stats = loop.step(rows, step)
            clock.record(time.time() - tic)
            if step == start and total - start > 1:
                print(
                    f"step {step + 1} took {clock.slowest_step:.1f}s: about {clock.slowest_step * (total - done - 1):.0f}s "
                    "of training to go"
                )
            done = step + 1
            tracker.log_metrics(stats, step + 1)
            first = first or stats
            last = stats
            bar.set_postfix(reward=f"{stats['rollout/reward_mean']:.3f}", kl=f"{stats.get('rollout/kl', 0):.3g}")
            if a.save_every and (step + 1) % a.save_every == 0 and step + 1 < total:
                loop.save(output_dir, step + 1)
            if a.eval_every and done % a.eval_every == 0 and done < total:
                tracker.log_metrics(loop.evaluate(eval_ds), done)
        planned = total
        if done < planned:
            if not (a.save_every and done % a.save_every == 0):
                loop.save(output_dir, done)  # resumable: a later run with this output_dir continues from here
            tracker.set_tags({"stopped_early": f"algo.max_time after step {done} of {planned}"})
        total = done
        evals = loop.evaluate(eval_ds)
        evals["run/planned_steps"] = float(planned)
        if loop.rollout.checks_consistency:
            evals.update(loop.check_rollout(eval_ds if len(eval_ds) else train_ds, output_dir))
        if plan.device == "cuda":
            evals.update(_peak_memory(roles))
        tracker.log_metrics(evals, total)
        evals_all = {**{k.replace("eval/", "eval/start_"): v for k, v in evals_start.items()}, **evals}
        run_info = {
            "algo": a.name,
            "steps": total,
            "model": cfg.model.name_or_path,
            "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": tracker.uri,
        }
        model_dir = roles["actor"].run("save_model", str(output_dir / "final"), run_info)[0]
        for g in roles.values():
            g.run("close")
    finally:
        rewards.close()
        loop.rollout.shutdown()
        for g in roles.values():
            g.shutdown()
    return RunResult(
        algo=a.name,
        steps=total,
        model_dir=model_dir,
        first=first,
        last=last,
        eval=evals_all,
        wall_s=time.time() - t0,
        objective=("eval/reward_mean", evals.get("eval/reward_mean", 0.0)),
    )


def _prompt_rows(ds, step: int, steps_per_epoch: int, n: int, seed: int) -> list[dict]:
    from rlhf.training.steps import step_items

    return [ds[i] for i in step_items(len(ds), n, steps_per_epoch, seed, step)]


def _start_roles(cfg, plan: Plan, total_updates: int, output_dir: Path) -> dict:
    from rlhf.models.loading import resolve_path
    from rlhf.rollout.registry import separate_worker_class, uses_separate_engines
    from rlhf.rollout.vllm import engine_options
    from rlhf.workers.critic import CriticWorker
    from rlhf.workers.group import ActorGroup, make_placement_group
    from rlhf.workers.policy import PolicyWorker
    from rlhf.workers.reference import ReferenceWorker
    from rlhf.workers.reward_model import RewardModelWorker
    from rlhf.workers.spec import RoleSpec

    spec = RoleSpec(
        algo=cfg.algo,
        model=cfg.model,
        engine=cfg.engine,
        rollout=cfg.rollout,
        plan=plan,
        output_dir=str(output_dir),
        total_updates=total_updates,
        placement_mode=cfg.placement.mode,
    )
    pools: dict = {}

    def group(role_name, cls, args):
        rp = plan.role(role_name)
        pg = None
        if plan.device == "cuda":
            if rp.pool not in pools:
                pools[rp.pool] = make_placement_group(rp.num_workers, 1.0)
            pg = pools[rp.pool]
        return ActorGroup(
            role_name, cls, rp.num_workers, gpus_per_worker=rp.gpus_per_worker, args=args, placement_group=pg
        )

    roles = {"actor": group("actor", PolicyWorker, (spec,))}
    if plan.reference:
        roles["ref"] = group("ref", ReferenceWorker, (spec,))
    if plan.critic:
        roles["critic"] = group("critic", CriticWorker, (spec,))
    for name, src in cfg.reward.sources.items():
        if src.kind == "model":
            roles[f"reward.{name}"] = group(
                f"reward.{name}",
                RewardModelWorker,
                (cfg.model, src.path, plan.dtype, plan.device, src.batch_size),
            )
    if uses_separate_engines(cfg.rollout, cfg.placement.mode):
        # Nothing else shares a separate engine's GPU: sleeping would only add wake-up time. Each engine
        # offsets the seed by its rank.
        options = engine_options(
            plan,
            cfg.rollout,
            seed=plan.rank_seed("rollout", 0),
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            enable_sleep=False,
        )
        roles["rollout"] = group(
            "rollout", separate_worker_class(cfg.rollout), (resolve_path(cfg.model.name_or_path), options)
        )
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
        parts = [texts[i * size : (i + 1) * size] for i in range(n)]
        outs = self.group.run("score", per_rank=[(p,) for p in parts])
        return torch.cat(outs)


class _Timer:
    """Wall seconds of named phases: ``with t("timing/train_s"): ...``; ``t.times`` holds them."""

    def __init__(self):
        self.times: dict[str, float] = {}

    def __call__(self, key: str):
        from contextlib import contextmanager

        @contextmanager
        def phase():
            tic = time.time()
            yield
            self.times[key] = time.time() - tic

        return phase()


class _Loop:
    def __init__(self, cfg, plan: Plan, tokenizer, roles: dict, rewards, kl_ctl, rollout):
        from rlhf.algos.shaping import RunningMeanStd

        self.cfg, self.plan, self.tok, self.roles, self.rewards, self.kl_ctl = (
            cfg,
            plan,
            tokenizer,
            roles,
            rewards,
            kl_ctl,
        )
        self.a = cfg.algo
        self.reward_stats = RunningMeanStd()
        self.world = len(roles["actor"])
        self.rollout = rollout  # rlhf/rollout: the policy ranks or separate engines
        self.gen_info: dict = {}  # timings and finish reasons of the last rollout

    def sync_weights(self) -> float:
        """Push the policy's weights into the rollout engines; returns the seconds it took (0 when the
        engines generate from the trained module itself)."""
        return self.rollout.sync_weights().get("timing/weight_sync_s", 0.0)

    # ---- one RL step ---------------------------------------------------------------------------------
    def step(self, rows: list[dict], step: int) -> dict:
        a, t = self.a, _Timer()
        with t("timing/generate_s"):
            batch, prompts, fields = self._rollout(rows, a.samples_per_prompt, seed=self.cfg.seed * 7 + step)
        with t("timing/reward_s"):
            raw, reward_metrics = self.rewards(prompts, self._decode(batch), fields)
        scores = self._shape(raw.float(), batch.action_mask.float())
        with t("timing/logprobs_s"):
            old, ref, values = self._logprobs(batch)
        exp, adv_stats = self._advantages(batch, scores, old, ref, values)
        with t("timing/train_s"):
            stats = self._train(exp, step)
        if self.rollout.checks_consistency:
            t.times["timing/weight_sync_s"] = self.sync_weights()
        self.kl_ctl.update(adv_stats["rollout/kl"], len(scores))
        return self._metrics(step, batch, raw, scores, old, adv_stats, {**reward_metrics, **stats}, t.times)

    def _decode(self, batch) -> list[str]:
        return self.tok.batch_decode(batch.responses(), skip_special_tokens=True)

    def _shape(self, scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        from rlhf.algos.shaping import clip_rewards, normalize_scores, overlong_penalty

        a = self.a
        if a.overlong_buffer > 0:
            scores = scores + overlong_penalty(
                mask.sum(-1), self.cfg.rollout.max_new_tokens, a.overlong_buffer, a.overlong_penalty
            )
        if a.reward_clip is not None:
            scores = clip_rewards(scores, -a.reward_clip, a.reward_clip)
        if a.normalize_reward:
            self.reward_stats.update(scores)
            scores = normalize_scores(scores, self.reward_stats.mean, self.reward_stats.std)
        return scores

    def _logprobs(self, batch):
        """Policy, reference and critic passes over the rollout, run concurrently, each role on its own ranks.
        Returns old log-probs [N, R], reference log-probs [N, R] or None, values [N, R] or None."""
        tic = time.time()
        calls = [
            (name, method)
            for name, method in (("actor", "logps"), ("ref", "logps"), ("critic", "values"))
            if name in self.roles
        ]
        refs = {
            name: self.roles[name].submit(method, per_rank=[(s,) for s in batch.split(len(self.roles[name]))])
            for name, method in calls
        }
        out = {}
        for name, method in calls:
            out[name] = torch.cat(self.roles[name].wait(refs[name], method))
            # Each role's finishing time from the common start.
            self.gen_info[f"timing/logprobs_{name}_done_s"] = time.time() - tic
        return out["actor"], out.get("ref"), out.get("critic")

    def _advantages(self, batch, scores, old, ref, values):
        """The Experience of the step (advantages, returns, the filtered mask) and its rollout statistics."""
        from rlhf.algos.advantages import compute_advantages
        from rlhf.algos.kl import kl_penalty
        from rlhf.algos.logprobs import masked_mean
        from rlhf.types import Experience

        a = self.a
        mask = batch.action_mask.float()
        keep = torch.ones_like(scores, dtype=torch.bool)
        if a.dynamic_filtering:
            from rlhf.algos.shaping import equal_reward_groups, keep_mask_for_groups

            keep = keep_mask_for_groups(~equal_reward_groups(scores, a.samples_per_prompt), a.samples_per_prompt)
        train_mask = mask * keep.unsqueeze(1).float()
        kl = kl_penalty(old, ref, kind=a.kl_estimator) * mask if ref is not None else None
        coef = self.kl_ctl.value
        in_reward = a.kl_in == "reward"
        adv, ret = compute_advantages(
            a.advantage,
            scores=scores,
            mask=train_mask,
            kl=kl if in_reward else None,
            kl_coef=coef if in_reward else 0.0,
            values=values,
            group_size=a.samples_per_prompt,
            gamma=a.gamma,
            lam=a.lam,
        )
        exp = Experience(
            sequences=batch.sequences,
            attention_mask=batch.attention_mask,
            action_mask=train_mask.long(),
            old_logps=old,
            advantages=adv * train_mask,
            returns=ret,
            prompt_len=batch.prompt_len,
            kl_coef=coef,
            ref_logps=ref,
            old_values=values,
            rollout_logps=batch.rollout_logps,
        )
        stats = {
            "rollout/kl": float(masked_mean(kl, mask)) if kl is not None else 0.0,
            "rollout/kl_coef": coef,
            "rollout/advantage_mean": float(masked_mean(adv, train_mask)) if train_mask.sum() else 0.0,
            "rollout/advantage_std": float(adv[train_mask.bool()].std()) if train_mask.sum() > 1 else 0.0,
            "rollout/kept_fraction": float(keep.float().mean()),
        }
        return exp, stats

    def _train(self, exp, step: int) -> dict:
        """The rollout's optimizer-step minibatches (shuffled), each sharded over every trained role's ranks;
        the roles train concurrently and their rank metrics are combined by one rule."""
        from rlhf.training.experience import minibatches, per_rank
        from rlhf.training.metrics import combine_rank_metrics

        a = self.a
        max_len = self.cfg.rollout.max_new_tokens if a.loss_agg == "seq_mean_token_sum_norm" else None
        minis = minibatches(
            exp,
            train_batch_samples=self.plan.train_batch_samples,
            update_epochs=a.update_epochs,
            seed=self.cfg.seed * 31 + step,
            max_len=max_len,
        )
        # Entropy is a pass over the vocabulary: logged every algo.log_every steps (always part of its loss).
        log_entropy = a.log_every <= 1 or (step + 1) % a.log_every == 0
        refs = {
            "actor": self.roles["actor"].submit(
                "train", per_rank=[(m, log_entropy) for m in per_rank(minis, len(self.roles["actor"]))]
            )
        }
        if "critic" in self.roles:
            refs["critic"] = self.roles["critic"].submit(
                "train", per_rank=[(m,) for m in per_rank(minis, len(self.roles["critic"]))]
            )
        stats: dict = {}
        for name, r in refs.items():
            stats.update(combine_rank_metrics(self.roles[name].wait(r, "train")))
        return stats

    def _metrics(self, step: int, batch, raw, scores, old, adv_stats: dict, more: dict, times: dict) -> dict:
        from rlhf.algos.logprobs import masked_mean

        a = self.a
        mask = batch.action_mask.float()
        lengths = mask.sum(-1)
        mism = (batch.rollout_logps - old).abs()
        out = {
            "rollout/reward_mean": float(raw.mean()),
            "rollout/reward_std": float(raw.std()) if len(raw) > 1 else 0.0,
            "rollout/score_mean": float(scores.mean()),
            "rollout/response_len_mean": float(lengths.mean()),
            "rollout/response_len_max": float(lengths.max()),
            **adv_stats,
            "rollout/logprob_mismatch": float(masked_mean(mism, mask)),
            **self.gen_info,
            **{k: float(v) for k, v in more.items()},
            **times,
        }
        total_tokens = float(mask.sum()) + batch.prompt_len * len(scores)
        out["timing/step_s"] = sum(times.values())
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

    def _rollout(self, rows: list[dict], n: int, seed: int, greedy: bool = False):
        """Generate n samples per prompt row; returns the RolloutBatch (response width trimmed to the longest
        real response), the prompt texts and the label fields (both repeated n times). Its timings and
        finish reasons go to gen_info."""
        from rlhf.types import PromptBatch

        prompts = PromptBatch.left_padded([r["input_ids"] for r in rows for _ in range(n)], self.tok.pad_token_id)
        batch, info = self.rollout.generate(prompts, seed=seed, greedy=greedy)
        info["rollout/truncated_fraction"] = sum(f == "length" for f in batch.finish_reason) / max(len(batch), 1)
        self.gen_info = info
        texts = [
            r.get("text") or self.tok.decode(r["input_ids"], skip_special_tokens=False) for r in rows for _ in range(n)
        ]
        field_names = set().union(*[set(r.get("fields", {}) or {}) for r in rows]) if rows else set()
        fields = {k: [(r.get("fields") or {}).get(k) for r in rows for _ in range(n)] for k in field_names}
        return batch.trimmed(), texts, fields

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

        k = max(min(limit, len(ds)) // self.world, 1) * self.world
        rows = [ds[i % len(ds)] for i in range(k)]
        batch, _, _ = self._rollout(rows, 1, seed=0, greedy=True)
        outs = self.roles["actor"].run("score_greedy", per_rank=[(s,) for s in batch.split(self.world)])
        trainer = torch.cat([o["logps"] for o in outs])
        top = torch.cat([o["top_logps"] for o in outs])
        mask = batch.action_mask.float()
        diff = (batch.rollout_logps - trainer).abs() * mask
        agree = ((top - trainer) <= atol).float()
        p = batch.prompt_len
        records = [
            {
                "prompt_ids": s[:p][a[:p].bool()].tolist(),
                "response_ids": s[p:][m.bool()].tolist(),
                "engine_logps": lp[m.bool()].tolist(),
                "trainer_logps": tl[m.bool()].tolist(),
            }
            for s, a, m, lp, tl in zip(
                batch.sequences, batch.attention_mask, batch.action_mask, batch.rollout_logps, trainer
            )
        ]
        (Path(output_dir) / "rollout_check.json").write_text(json.dumps(records))
        return {
            "check/greedy_agreement": float(masked_mean(agree, mask)),
            "check/logprob_max_abs_diff": float(diff.max()),
            "check/logprob_mean_abs_diff": float(masked_mean(diff, mask)),
        }

    # ---- checkpoints ---------------------------------------------------------------------------------
    def save(self, output_dir: Path, step: int) -> Path:
        """Training state of the trained roles plus the driver's adaptive state (rlhf/controllers/checkpoints.py)."""
        from rlhf.controllers.checkpoints import save_checkpoint

        state = {
            "kl_coef": self.kl_ctl.value,
            "reward_stats": [self.reward_stats.count, self.reward_stats.mean, self.reward_stats.m2],
        }
        return save_checkpoint(
            self.roles,
            output_dir,
            step,
            algo=self.a.name,
            model=self.cfg.model.name_or_path,
            state=state,
            keep=self.a.keep_checkpoints,
        )

    def resume(self, output_dir: Path) -> int:
        """Load the newest checkpoint under output_dir, if any; returns the step to continue from."""
        from rlhf.controllers.checkpoints import resume_checkpoint

        state = resume_checkpoint(self.roles, output_dir, algo=self.a.name, model=self.cfg.model.name_or_path)
        if state is None:
            return 0
        self.kl_ctl.value = float(state["kl_coef"])
        self.reward_stats.count, self.reward_stats.mean, self.reward_stats.m2 = state["reward_stats"]
        return int(state["step"])

    # ---- evaluation ----------------------------------------------------------------------------------
    def evaluate(self, eval_ds) -> dict:
        """Held-out evaluation by the driver rlhf.eval uses (rlhf/evaluation/driver.py) on the first
        eval.max_prompts prompts (a multiple of the policy ranks): greedy reward and accuracy, and pass@k / maj@k
        when eval.n_samples > 0. The policy ranks sample with the rollout's temperature and response length."""
        from rlhf.evaluation.driver import Completion, evaluate

        e, ro = self.cfg.eval, self.cfg.rollout
        k = len(eval_ds) if e.max_prompts is None else min(e.max_prompts, len(eval_ds))
        k -= k % self.world
        if k == 0:
            return {}
        rows = [eval_ds[i] for i in range(k)]

        def generate(rows, sampling):
            batch, _, _ = self._rollout(rows, sampling.n, seed=sampling.seed, greedy=sampling.greedy)
            lengths = batch.action_mask.sum(-1).tolist()
            done = [Completion(t, int(n), f) for t, n, f in zip(self._decode(batch), lengths, batch.finish_reason)]
            return [done[i * sampling.n : (i + 1) * sampling.n] for i in range(len(rows))]

        return evaluate(
            rows,
            generate,
            self.rewards,
            e,
            max_new_tokens=ro.max_new_tokens,
            temperature=ro.temperature,
            top_p=ro.top_p,
            top_k=ro.top_k,
        ).metrics
