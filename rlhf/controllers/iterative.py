"""Rounds of sampling from the current policy, scoring and offline training: rejection sampling and iterative DPO.

  python -m rlhf.run algo=rejection_sampling algo.rounds=2                       # CPU: best-of-4 SFT, 2 rounds
  python -m rlhf.run algo=iterative_dpo algo.iterations=3 hw=h100x1             # one GPU (vLLM when installed)
  srun --gpus=8 python -m rlhf.run algo=iterative_dpo model=llama3_8b hw=h100x8 reward=model \
      reward.sources.rm.path=<rm>                                               # Slurm

Each round k:
  1. sample algo.samples_per_prompt responses for each of algo.prompts_per_round training prompts from the
     current policy (rlhf/evaluation/generation.py: HF generate on CPU, vLLM on a GPU when installed);
  2. score them with the `reward` sources (functions, remote servers, reward models loaded in this process);
  3. rejection sampling keeps each prompt's best response (when its reward reaches algo.threshold); iterative
     DPO pairs each prompt's best and worst (when they differ by algo.min_margin);
  4. train algo.round_algo (sft or dpo, rlhf/algos/registry.py) on those rows with the offline loop
     (rlhf/controllers/offline.py), from the previous round's model; iterative DPO's reference is the previous
     round's policy when algo.refresh_reference, else the initial model.
Every round is a child MLflow run (its data, training curve and round metrics); the parent run gets the round
metrics at step k + 1 and the final held-out evaluation (eval/reward_mean) of the last round's model.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Optional

from rlhf.plan import Plan
from rlhf.types import RunResult


def select_best(rewards: list[float], n: int, threshold: Optional[float]) -> list[Optional[int]]:
    """Rejection sampling: for each prompt (n consecutive samples) the index of its best sample, None when the
    best reward is below `threshold`. Ties go to the first sample."""
    out: list[Optional[int]] = []
    for p in range(len(rewards) // n):
        group = rewards[p * n : (p + 1) * n]
        best = max(range(n), key=lambda i: (group[i], -i))
        out.append(p * n + best if threshold is None or group[best] >= threshold else None)
    return out


def select_pairs(rewards: list[float], n: int, min_margin: float) -> list[Optional[tuple[int, int]]]:
    """Iterative DPO: for each prompt (chosen, rejected) = (best, worst) sample indices, None when their rewards
    differ by less than `min_margin`. Ties go to the first sample for the best and the last for the worst."""
    out: list[Optional[tuple[int, int]]] = []
    for p in range(len(rewards) // n):
        group = rewards[p * n : (p + 1) * n]
        best = max(range(n), key=lambda i: (group[i], -i))
        worst = min(range(n), key=lambda i: (group[i], -i))
        out.append((p * n + best, p * n + worst) if group[best] - group[worst] >= min_margin else None)
    return out


class _ChildRun:
    """An MLflow run nested under the parent (tag mlflow.parentRunId), written through the client API so that
    the parent stays the active run."""

    def __init__(self, parent, name: str):
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(parent.uri)
        self.uri = parent.uri
        run = self.client.create_run(
            parent.experiment_id, run_name=name, tags={"mlflow.parentRunId": parent.run_id, "round": name}
        )
        self.run_id = run.info.run_id

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        from rlhf.tracking.mlflow_tracker import flatten

        items = [Param(k, str(v)[:6000]) for k, v in flatten(params).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if isinstance(v, (int, float))]
        if items:
            self.client.log_batch(self.run_id, metrics=items)

    def log_text(self, text: str, name: str) -> None:
        self.client.log_text(self.run_id, text, name)

    def log_dict(self, d: dict, name: str) -> None:
        self.client.log_dict(self.run_id, d, name)

    def set_tags(self, tags: dict) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifacts(self, path: str, name: Optional[str] = None) -> None:
        self.client.log_artifacts(self.run_id, path, name)

    def log_inputs(self, digests: list, weights: dict) -> None: ...

    def end(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status)


def _child(tracker, name: str):
    from rlhf.tracking.mlflow_tracker import NullTracker

    return NullTracker() if isinstance(tracker, NullTracker) else _ChildRun(tracker, name)


def _round_algo(cfg, kind: str, ref: Optional[str], train_batch: int):
    """The offline algorithm config of one round: the outer config's training (and DPO) fields."""
    from rlhf.config.algo import DPOConfig, SFTConfig

    cls = SFTConfig if kind == "sft" else DPOConfig
    names = {f.name for f in dataclasses.fields(cls)} - {"name"}
    fields = {k: copy.deepcopy(getattr(cfg.algo, k)) for k in names if hasattr(cfg.algo, k)}
    fields["train_batch_samples"] = train_batch
    if kind == "dpo":
        fields["ref_name_or_path"] = ref
    return cls(name=kind, **fields)


def _round_data(cfg, path: Path, fmt: str):
    """The round's rows as a data set: prompts are already rendered (chat template applied), no held-out part."""
    from rlhf.config.data import DataConfig, SourceConfig
    from rlhf.data.sources import resolve_data

    src = SourceConfig(path=str(path), format=fmt, eval_split=None)
    return resolve_data(
        DataConfig(
            sources={path.parent.name: src},
            apply_chat_template=False,
            eval_fraction=0.0,
            max_len=cfg.data.max_len,
            prompt_max_len=cfg.data.prompt_max_len,
            shuffle_seed=cfg.data.shuffle_seed,
        )
    )


def _with_model(cfg, path: str):
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, name_or_path=path))


def _sample(cfg, policy: str, rows: list[dict], tokenizer, seed: int):
    from rlhf.evaluation.driver import Sampling
    from rlhf.evaluation.generation import build_generate

    a = cfg.algo
    gen = build_generate(_with_model(cfg, policy), tokenizer, cfg.generate.backend, batch_size=cfg.generate.batch_size)
    sampling = Sampling(
        n=a.samples_per_prompt,
        temperature=a.temperature,
        top_p=a.top_p,
        max_new_tokens=a.max_new_tokens or cfg.rollout.max_new_tokens,
        seed=seed,
    )
    try:
        return gen(rows, sampling)
    finally:
        if hasattr(gen, "close"):
            gen.close()


def run_iterative(cfg, plan: Plan, tracker, output_dir: Path, progress: bool = True) -> RunResult:
    from rlhf.algos.registry import get_algo
    from rlhf.controllers.offline import run_offline
    from rlhf.evaluation.driver import _repeat_fields, score
    from rlhf.evaluation.entry import reward_sources
    from rlhf.evaluation.prompts import preset_rows
    from rlhf.models.loading import load_tokenizer
    from rlhf.plan import resolve_plan

    t0 = time.time()
    a = cfg.algo
    spec = get_algo(a.name)
    kind = spec.round_algo
    dpo = kind == "dpo"
    rounds = a.iterations if dpo else a.rounds
    n = a.samples_per_prompt
    if rounds < 1 or n < (2 if dpo else 1):
        key = "algo.iterations" if dpo else "algo.rounds"
        raise ValueError(
            f"{key}={rounds}, algo.samples_per_prompt={n}: need at least one round and "
            f"{'2 samples (a best and a worst)' if dpo else '1 sample'} per prompt; raise them (conf/algo/{a.name}.yaml)"
        )
    tokenizer = load_tokenizer(cfg.model, padding_side="left")
    prompts = preset_rows(cfg.data, tokenizer, "train", seed=cfg.seed)
    per_round = min(a.prompts_per_round or len(prompts), len(prompts))
    rewards = reward_sources(cfg)
    initial = policy = cfg.model.name_or_path
    unit = plan.micro_batch_per_gpu * plan.world_size
    first: dict = {}
    last: dict = {}
    steps = 0
    for k in range(rounds):
        name = f"round_{k + 1}"
        out = output_dir / name
        out.mkdir(parents=True, exist_ok=True)
        child = _child(tracker, name)
        status = "FAILED"
        try:
            start = (k * per_round) % len(prompts)
            rows = [prompts[(start + i) % len(prompts)] for i in range(per_round)]
            gens = _sample(cfg, policy, rows, tokenizer, seed=cfg.seed + k)
            texts = [c.text for g in gens for c in g]
            prompt_texts = [r["text"] for r in rows for _ in range(n)]
            total, _ = score(rewards, prompt_texts, texts, _repeat_fields(rows, n))
            if dpo:
                pairs = select_pairs(total, n, a.min_margin)
                kept = [
                    {"prompt": prompt_texts[c], "chosen": texts[c], "rejected": texts[r]}
                    for c, r in (p for p in pairs if p is not None)
                ]
                best = [total[p[0]] for p in pairs if p is not None]
            else:
                picks = select_best(total, n, a.threshold)
                kept = [{"prompt": prompt_texts[i], "response": texts[i]} for i in picks if i is not None]
                best = [total[i] for i in picks if i is not None]
            data_file = out / "data.jsonl"
            data_file.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
            stats = {
                "rollout/reward_mean": sum(total) / len(total),
                "rollout/kept_reward_mean": sum(best) / len(best) if best else 0.0,
                "rollout/kept": float(len(kept)),
                "rollout/kept_fraction": len(kept) / len(rows),
            }
            child.log_params({"round": k + 1, "policy": policy, "prompts": len(rows), "samples_per_prompt": n})
            child.log_text(data_file.read_text()[:1_000_000], "round_data.jsonl")
            batch = min(plan.train_batch_samples, len(kept) // unit * unit)
            print(
                f"{name}/{rounds}: {len(rows)} prompts x {n} samples, reward mean {stats['rollout/reward_mean']:.3f}; "
                f"kept {len(kept)} {'pairs' if dpo else 'responses'}" + ("" if batch else ", too few to train")
            )
            if batch:
                ref = (policy if a.refresh_reference else initial) if dpo else None
                rcfg = dataclasses.replace(
                    copy.deepcopy(_with_model(cfg, policy)),
                    algo=_round_algo(cfg, kind, ref, batch),
                    data=_round_data(cfg, data_file, "pairs" if dpo else "prompt_response"),
                    resume=False,
                )
                result = run_offline(rcfg, resolve_plan(rcfg), child, out, progress=progress)
                policy = result.model_dir or policy
                steps += result.steps
                stats.update({k2: v for k2, v in result.last.items() if k2.startswith("train/")})
            child.log_metrics(stats, k + 1)
            tracker.log_metrics(stats, k + 1)
            first = first or stats
            last = stats
            status = "FINISHED"
        finally:
            child.end(status)
    evals = _final_eval(cfg, policy, tokenizer, rewards)
    tracker.log_metrics(evals, rounds)
    rewards.close()
    metric = spec.metric
    return RunResult(
        algo=a.name,
        steps=steps,
        model_dir=policy if policy != initial else None,
        first=first,
        last=last,
        eval=evals,
        wall_s=time.time() - t0,
        objective=(metric, evals[metric]) if metric in evals else None,
    )


def _final_eval(cfg, policy: str, tokenizer, rewards) -> dict[str, Any]:
    """eval/reward_mean (and accuracy, when a source measures it) of the last model on held-out prompts."""
    from rlhf.evaluation.driver import evaluate
    from rlhf.evaluation.generation import build_generate
    from rlhf.evaluation.prompts import preset_rows

    rows = preset_rows(cfg.data, tokenizer, "eval", seed=cfg.seed) if _has_eval(cfg) else []
    rows = rows[: cfg.eval.max_prompts] if cfg.eval.max_prompts else rows
    if not rows:
        return {}
    gen = build_generate(_with_model(cfg, policy), tokenizer, cfg.generate.backend, batch_size=cfg.generate.batch_size)
    try:
        return evaluate(rows, gen, rewards, cfg.eval, max_new_tokens=cfg.rollout.max_new_tokens).metrics
    finally:
        if hasattr(gen, "close"):
            gen.close()


def _has_eval(cfg) -> bool:
    return any(s.eval_split or s.eval_path for s in cfg.data.sources.values()) or cfg.data.eval_fraction > 0
