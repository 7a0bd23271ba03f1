"""The evaluation driver: generate for a list of prompt rows, score with the run's reward sources, aggregate.

One function serves `rlhf.eval` (a saved model, generating in this process) and a training run (the policy
ranks generating between steps): each passes a `GenerateFn`, so a number logged during training is the one
`rlhf.eval` gives for the saved model with the same settings.

Rows are the prompt rows of `rlhf.data.datasets.build_dataset("prompt", ...)`: {"input_ids": [int],
"text": rendered prompt, "fields": {label column: value}}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from rlhf.config.evaluation import EvalConfig
from rlhf.evaluation import metrics as M


@dataclass(frozen=True)
class Sampling:
    """How to sample: n responses per prompt; temperature 0 decodes greedily (then n must be 1)."""

    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 64
    seed: int = 0

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class Completion:
    text: str
    # Generated tokens, the end-of-sequence token included when the response stopped on it.
    num_tokens: int
    finish_reason: str = "stop"  # or "length"


# rows, sampling -> for each row its `sampling.n` completions.
GenerateFn = Callable[[Sequence[dict], Sampling], list[list[Completion]]]


@dataclass
class Evaluation:
    metrics: dict[str, float]
    # One record a prompt: prompt, fields, greedy response and its scores, sampled responses and theirs.
    records: list[dict] = field(default_factory=list)


def accuracy_source(source_names: Sequence[str], eval_cfg: EvalConfig) -> Optional[str]:
    """The reward source whose score says a response is correct: eval.accuracy_source, else `exact_match`,
    else the only source; None when none qualifies (no accuracy metrics then)."""
    if eval_cfg.accuracy_source is not None:
        if eval_cfg.accuracy_source not in source_names:
            raise ValueError(
                f"eval.accuracy_source={eval_cfg.accuracy_source!r} is not a reward source; choose one "
                f"of {list(source_names)} (reward.sources) or null"
            )
        return eval_cfg.accuracy_source
    if "exact_match" in source_names:
        return "exact_match"
    return source_names[0] if len(source_names) == 1 else None


def score(
    rewards, prompts: list[str], responses: list[str], fields: dict[str, list]
) -> tuple[list[float], dict[str, list[float]]]:
    """Combined reward of each response and each source's own score (rlhf.rewards.sources.RewardSources)."""
    from rlhf.rewards.combine import combine_rewards

    named = {name: fn(prompts, responses, fields) for name, fn in rewards.sources.items()}
    rule = rewards.cfg.combine
    combined, _ = combine_rewards(named, rule=rule, weights=rewards.weights if rule == "weighted" else None)
    return combined.tolist(), {name: [float(v) for v in t] for name, t in named.items()}


def load_extractor(path: str) -> Callable[[str], Any]:
    """`module:function` (or `file.py:function`) mapping a response to its final answer, None when it has none."""
    import importlib
    import importlib.util
    from pathlib import Path

    module, sep, name = path.rpartition(":")
    if not sep or not module or not name:
        raise ValueError(f"eval.answer_extractor={path!r}: write it as `module:function` or `file.py:function`")
    if module.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(module).stem, module)
        if spec is None or not Path(module).is_file():
            raise ValueError(f"eval.answer_extractor={path!r}: {module} does not exist")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    else:
        mod = importlib.import_module(module)
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ValueError(f"eval.answer_extractor={path!r}: {module} has no function {name!r}")
    return fn


def _repeat_fields(rows: Sequence[dict], n: int) -> dict[str, list]:
    names = sorted(set().union(*[set(r.get("fields") or {}) for r in rows])) if rows else []
    return {k: [(r.get("fields") or {}).get(k) for r in rows for _ in range(n)] for k in names}


def _prompt_text(row: dict) -> str:
    return row.get("text") or ""


def evaluate(
    rows: Sequence[dict],
    generate: GenerateFn,
    rewards,
    cfg: EvalConfig,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = -1,
    prefix: str = "eval/",
) -> Evaluation:
    """Greedy and/or sampled responses for `rows`, scored and aggregated into `<prefix>...` metrics.

    Greedy (cfg.greedy): reward_mean, accuracy, <source>_mean, response_len_mean. Sampled (cfg.n_samples > 0):
    sampled_reward_mean, sampled_accuracy, pass_at_<k> and maj_at_<k> for each k of cfg.k. The sampling
    settings are cfg's where set, else the keyword arguments (the run's rollout settings).
    """
    if not rows:
        return Evaluation({})
    names = list(rewards.sources)
    acc_name = accuracy_source(names, cfg)
    threshold = cfg.correct_threshold
    new_tokens = cfg.max_new_tokens or max_new_tokens
    out: dict[str, float] = {}
    records = [{"prompt": _prompt_text(r), **{k: v for k, v in (r.get("fields") or {}).items()}} for r in rows]
    prompts1 = [_prompt_text(r) for r in rows]
    if cfg.greedy:
        gens = generate(rows, Sampling(n=1, temperature=0.0, max_new_tokens=new_tokens, seed=cfg.seed))
        texts = [g[0].text for g in gens]
        total, per_source = score(rewards, prompts1, texts, _repeat_fields(rows, 1))
        out[f"{prefix}reward_mean"] = sum(total) / len(total)
        out[f"{prefix}response_len_mean"] = sum(g[0].num_tokens for g in gens) / len(gens)
        for name, vals in per_source.items():
            out[f"{prefix}{name}_mean"] = sum(vals) / len(vals)
        if acc_name is not None:
            out[f"{prefix}accuracy"] = M.accuracy([v >= threshold for v in per_source[acc_name]])
        for i, rec in enumerate(records):
            rec["response"] = texts[i]
            rec["reward"] = total[i]
            if acc_name is not None:
                rec["correct"] = per_source[acc_name][i] >= threshold
    if cfg.n_samples > 0:
        n = cfg.n_samples
        sampling = Sampling(
            n=n,
            temperature=temperature if cfg.temperature is None else cfg.temperature,
            top_p=top_p if cfg.top_p is None else cfg.top_p,
            top_k=top_k if cfg.top_k is None else cfg.top_k,
            max_new_tokens=new_tokens,
            seed=cfg.seed,
        )
        gens = generate(rows, sampling)
        texts = [c.text for g in gens for c in g]
        prompts = [p for p in prompts1 for _ in range(n)]
        total, per_source = score(rewards, prompts, texts, _repeat_fields(rows, n))
        out[f"{prefix}sampled_reward_mean"] = sum(total) / len(total)
        for i, rec in enumerate(records):
            rec["samples"] = texts[i * n : (i + 1) * n]
            rec["sample_rewards"] = total[i * n : (i + 1) * n]
        if acc_name is not None:
            correct = [v >= threshold for v in per_source[acc_name]]
            per_prompt = [correct[i * n : (i + 1) * n] for i in range(len(rows))]
            out[f"{prefix}sampled_accuracy"] = M.accuracy(correct)
            extract = load_extractor(cfg.answer_extractor)
            answers = [_hashable(extract(t)) for t in texts]
            per_prompt_answers = [answers[i * n : (i + 1) * n] for i in range(len(rows))]
            for k in cfg.k:
                out[f"{prefix}pass_at_{k}"] = M.mean_pass_at_k(per_prompt, k)
                out[f"{prefix}maj_at_{k}"] = M.mean_maj_at_k(per_prompt_answers, per_prompt, k)
            for i, rec in enumerate(records):
                rec["sample_correct"] = per_prompt[i]
                rec["sample_answers"] = [None if a is None else str(a) for a in per_prompt_answers[i]]
    return Evaluation(out, records)


def _hashable(answer: Any):
    if answer is None:
        return None
    try:
        hash(answer)
        return answer
    except TypeError:
        return str(answer)
