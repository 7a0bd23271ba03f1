"""Plan-time checks of run control (algo.max_time, max_steps, epochs, save_every, eval_every) and of the
`eval` / `generate` nodes: each problem names the key, what it holds, what is allowed and what to do.
`resolve_plan` adds these to its own list, so every problem of a configuration is reported at once."""

from __future__ import annotations

import re
from typing import Any, Optional

_CLOCK = re.compile(r"^(?:(?P<d>\d+)-)?(?:(?:(?P<h>\d+):)?(?P<m>\d+):)?(?P<s>\d+(?:\.\d*)?)$")


def parse_duration(value: Any) -> Optional[float]:
    """Seconds of a wall-time budget: a number of seconds (600, "600", "90.5") or a clock "HH:MM:SS", "MM:SS",
    "D-HH:MM:SS" (Slurm's --time forms). None for None; ValueError for anything else or a negative value."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            m = _CLOCK.match(text)
            if m is None:
                raise ValueError(f"{value!r} is not a duration") from None
            seconds = int(m["d"] or 0) * 86400 + int(m["h"] or 0) * 3600 + int(m["m"] or 0) * 60 + float(m["s"])
    if seconds < 0:
        raise ValueError(f"{value!r} is negative")
    return seconds


def run_control_problems(cfg) -> list[str]:
    """Problems of the run-control fields of cfg.algo and of cfg.eval / cfg.generate (empty when all is well)."""
    problems: list[str] = []
    a = cfg.algo
    max_time = getattr(a, "max_time", None)
    try:
        parse_duration(max_time)
    except ValueError:
        problems.append(
            f"algo.max_time={max_time!r} is not a wall-time budget: give seconds (algo.max_time=3600) "
            "or a clock (algo.max_time=01:00:00, or D-HH:MM:SS), >= 0; null means no limit"
        )
    if a.max_steps is not None and a.max_steps < 1:
        problems.append(f"algo.max_steps={a.max_steps} must be >= 1 (null: run all algo.epochs)")
    if a.epochs < 1:
        problems.append(f"algo.epochs={a.epochs} must be >= 1")
    if a.save_every < 0:
        problems.append(f"algo.save_every={a.save_every} must be >= 0 (0: only the final model)")
    if a.eval_every < 0:
        problems.append(f"algo.eval_every={a.eval_every} must be >= 0 (0: evaluate at the start and end only)")
    if a.keep_checkpoints < 1:
        problems.append(f"algo.keep_checkpoints={a.keep_checkpoints} must be >= 1")
    stall = getattr(cfg, "stall_timeout_s", 300.0)
    if not stall or stall < 5:
        problems.append(
            f"stall_timeout_s={stall} must be >= 5 seconds (ranks beat every second; default 300): set "
            "stall_timeout_s=300, or more if a call can block a rank's Python for minutes"
        )
    profile = getattr(cfg, "profile_step", None)
    if profile is not None and profile < 1:
        problems.append(f"profile_step={profile} must be >= 1 (the logged step number; null: no profiling)")
    problems += optimizer_problems(a)
    if hasattr(a, "samples_per_prompt"):  # the on-policy family samples with cfg.rollout
        problems += sampling_problems(cfg.rollout, a.samples_per_prompt)
    problems += eval_problems(cfg.eval)
    problems += generate_problems(cfg.generate)
    return problems


def optimizer_problems(a) -> list[str]:
    """Learning rates and schedule values no optimizer accepts (found before any process starts, not by the
    optimizer inside a rank)."""
    problems = []
    for key in ("lr", "critic_lr"):
        value = getattr(a, key, None)
        if value is not None and value < 0:
            problems.append(f"algo.{key}={value} must be >= 0 (null: the planner's value for the model's size)")
    if not 0.0 <= a.warmup_ratio <= 1.0:
        problems.append(f"algo.warmup_ratio={a.warmup_ratio} must be in [0, 1] (the share of steps that warm up)")
    if not 0.0 <= a.min_lr_ratio <= 1.0:
        problems.append(f"algo.min_lr_ratio={a.min_lr_ratio} must be in [0, 1]")
    if a.weight_decay < 0:
        problems.append(f"algo.weight_decay={a.weight_decay} must be >= 0")
    if a.max_grad_norm <= 0:
        problems.append(f"algo.max_grad_norm={a.max_grad_norm} must be > 0 (a large value such as 1e6 clips nothing)")
    return problems


def sampling_problems(ro, samples_per_prompt: int) -> list[str]:
    """Rollout sampling settings an on-policy run cannot learn from."""
    problems = []
    if ro.max_new_tokens < 1:
        problems.append(f"rollout.max_new_tokens={ro.max_new_tokens} must be >= 1 (the response length limit)")
    if ro.temperature < 0:
        problems.append(f"rollout.temperature={ro.temperature} must be >= 0")
    elif ro.temperature == 0 and samples_per_prompt > 1:
        problems.append(
            f"rollout.temperature=0 decodes greedily: the algo.samples_per_prompt={samples_per_prompt} responses of "
            "a prompt would all be the same, so their advantages are 0; use rollout.temperature=1.0 (or "
            "algo.samples_per_prompt=1 for greedy rollouts)"
        )
    if not 0.0 < ro.top_p <= 1.0:
        problems.append(f"rollout.top_p={ro.top_p} must be in (0, 1] (1: no nucleus cut)")
    if ro.top_k < -1:
        problems.append(f"rollout.top_k={ro.top_k} must be -1 or 0 (no cut), or >= 1")
    return problems


def eval_problems(e) -> list[str]:
    problems = []
    if e.max_prompts is not None and e.max_prompts < 1:
        problems.append(f"eval.max_prompts={e.max_prompts} must be >= 1 (null: every held-out prompt)")
    if e.n_samples < 0:
        problems.append(f"eval.n_samples={e.n_samples} must be >= 0 (0: no sampled evaluation)")
    if not e.greedy and e.n_samples == 0:
        problems.append(
            "eval.greedy=false with eval.n_samples=0 evaluates nothing; set eval.n_samples >= 1 or eval.greedy=true"
        )
    if e.n_samples > 0:
        bad = [k for k in e.k if not 1 <= k <= e.n_samples]
        if bad or not e.k:
            problems.append(
                f"eval.k={list(e.k)}: each k of pass@k / maj@k must lie in 1..eval.n_samples="
                f"{e.n_samples}; raise eval.n_samples or drop {bad}"
            )
        if e.temperature is not None and e.temperature == 0 and e.n_samples > 1:
            problems.append(
                f"eval.temperature=0 with eval.n_samples={e.n_samples} gives identical samples, so "
                "pass@k equals greedy accuracy; use eval.temperature > 0 (e.g. 1.0)"
            )
    if e.temperature is not None and e.temperature < 0:
        problems.append(f"eval.temperature={e.temperature} must be >= 0")
    if e.top_p is not None and not 0 < e.top_p <= 1:
        problems.append(f"eval.top_p={e.top_p} must lie in (0, 1]")
    if e.max_new_tokens is not None and e.max_new_tokens < 1:
        problems.append(f"eval.max_new_tokens={e.max_new_tokens} must be >= 1 (null: rollout.max_new_tokens)")
    if ":" not in e.answer_extractor:
        problems.append(
            f"eval.answer_extractor={e.answer_extractor!r}: write it as module:function, e.g. "
            "rlhf.rewards.functions:extract_answer"
        )
    return problems


def generate_problems(g) -> list[str]:
    from rlhf.evaluation.generation import BACKENDS

    problems = []
    if g.n < 1:
        problems.append(f"generate.n={g.n} must be >= 1")
    if g.temperature < 0:
        problems.append(f"generate.temperature={g.temperature} must be >= 0 (0: greedy)")
    elif g.temperature == 0 and g.n > 1:
        problems.append(
            f"generate.n={g.n} with generate.temperature=0 (greedy) gives {g.n} identical responses; "
            "set generate.temperature > 0 (e.g. 1.0) or generate.n=1"
        )
    if not 0 < g.top_p <= 1:
        problems.append(f"generate.top_p={g.top_p} must lie in (0, 1]")
    if g.max_new_tokens is not None and g.max_new_tokens < 1:
        problems.append(f"generate.max_new_tokens={g.max_new_tokens} must be >= 1 (null: rollout.max_new_tokens)")
    if g.max_prompts is not None and g.max_prompts < 1:
        problems.append(f"generate.max_prompts={g.max_prompts} must be >= 1 (null: every prompt)")
    if g.backend not in BACKENDS:
        problems.append(f"generate.backend={g.backend!r}: choose one of {list(BACKENDS)}")
    if g.batch_size < 1:
        problems.append(f"generate.batch_size={g.batch_size} must be >= 1")
    return problems


# Offline objectives whose loss reads only per-token log-probs or the reward model's score (what a ring split
# gathers back); PRM reads logits at placeholders and KD whole-vocabulary logits: not split.
RING_OBJECTIVES = ("sft", "dpo", "kto", "reward_model")


def ring_attn_problems(cfg, spec, processes: int) -> list[str]:
    """Problems of model.ring_attn_size / model.ring_head_stride for `spec` (an AlgoSpec) trained over
    `processes` ranks (GPUs, or CPU processes)."""
    m = cfg.model
    size, stride = m.ring_attn_size, m.ring_head_stride
    problems: list[str] = []
    if size < 1:
        problems.append(f"model.ring_attn_size={size} must be >= 1 (1: sequences are not split over ranks)")
    if stride < 1:
        problems.append(f"model.ring_head_stride={stride} must be >= 1 (key/value heads gathered at a time)")
    if size <= 1 or stride < 1:
        return problems
    if processes % size:
        ok = [d for d in range(1, processes + 1) if processes % d == 0]
        problems.append(
            f"model.ring_attn_size={size} must divide the {processes} rank(s) of the trained model (hw={cfg.hw.name}); "
            f"use model.ring_attn_size in {ok}"
        )
    kv = m.num_kv_heads or m.num_heads
    if kv and kv % stride:
        ok = [d for d in range(1, kv + 1) if kv % d == 0]
        problems.append(
            f"model.ring_head_stride={stride} must divide the model's {kv} key/value heads; use one of {ok}"
        )
    if m.moe_aux_loss_coef > 0:
        problems.append(
            f"model.ring_attn_size={size} with model.moe_aux_loss_coef={m.moe_aux_loss_coef}: the router loss is "
            "not additive over a row's chunks; set model.moe_aux_loss_coef=0 or model.ring_attn_size=1"
        )
    if spec.family == "onpolicy":
        if not getattr(cfg.algo, "pack_sequences", False):
            problems.append(
                f"model.ring_attn_size={size} splits packed rows: set algo.pack_sequences=true (the policy's "
                "log-prob and training passes then run one packed row per micro-batch)"
            )
    elif spec.objective not in RING_OBJECTIVES:
        problems.append(
            f"model.ring_attn_size={size} is not supported with algo={spec.name} (its {spec.objective} loss reads "
            f"whole-row logits); ring attention trains {', '.join(RING_OBJECTIVES)} objectives: set "
            "model.ring_attn_size=1"
        )
    elif not spec.sequence_classifier and not cfg.data.packing:
        problems.append(f"model.ring_attn_size={size} splits packed rows: set data.packing=true")
    return problems
