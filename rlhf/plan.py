"""resolve_plan(config) -> Plan: every derived number computed once, checked, and frozen.

Batch arithmetic (per-GPU micro-batches, accumulation), the Ray actor layout of each role, the precision and
a per-GPU memory estimate (rlhf/memory.py). Bad combinations are all reported together in one PlanError before
anything starts, each naming the config key, its value, and what to change; a configuration that does not fit
in memory comes with the estimate of each usual remedy (ZeRO-3, offload, LoRA, QLoRA) on the same hardware.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import json
import math
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from rlhf.algos.registry import AlgoSpec, get_algo
from rlhf.config.run import RunConfig
from rlhf.memory import (
    FRAMEWORK_OVERHEAD_GIB,
    GIB,
    MemoryEstimate,
    ModelShape,
    hf_generation_bytes,
    inference_memory,
    rollout_memory,
    training_memory,
)
from rlhf.rollout.backends import BACKENDS, has_engines


class PlanError(ValueError):
    """One or more impossible settings, each with the key at fault and what to do."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"the configuration cannot run ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class RolePlan:
    role: str
    num_workers: int
    # GPUs each Ray actor asks for: 1 on its own GPU, a fraction when roles share GPUs, 0 on CPU.
    gpus_per_worker: float
    # Placement-group bundle set the role's actors land on ("shared" for colocated roles).
    pool: str
    # Roles living inside another role's process (e.g. the DPO reference inside the actor).
    hosted_in: Optional[str] = None
    # The weights this role loads (None: the actor's model, cfg.model.name_or_path).
    name_or_path: Optional[str] = None
    # Data-parallel ranks of the role: its trained replicas, or the shards of a frozen role (0: none of its own).
    dp_ranks: int = 0
    # Sequences one rank runs through a forward(/backward) pass at once (pairs count 1 each).
    micro_batch_per_gpu: int = 0
    # Trained roles only (0 for frozen ones): train_batch_samples = micro_batch_per_gpu x grad_accum x dp_ranks.
    grad_accum: int = 0
    train_batch_samples: int = 0
    # Added to the run seed, with the rank: rank r of this role seeds with `seed + seed_offset + r`.
    seed_offset: int = 0
    # Ranks that split one sequence (model.ring_attn_size; the trained actor and the reference inside it): the
    # role's processes are dp_ranks x ring_attn_size, and the ranks of one ring see the same samples.
    ring_attn_size: int = 1

    @property
    def processes(self) -> int:
        """The role's data-parallel ranks times the ranks of each ring (what DeepSpeed averages over)."""
        return self.dp_ranks * self.ring_attn_size

    @property
    def trained(self) -> bool:
        return self.grad_accum > 0


@dataclass(frozen=True)
class Plan:
    algo: str
    family: str
    objective: str
    task: str
    device: str
    dtype: str
    total_gpus: int
    # Data-parallel ranks of the trained model.
    world_size: int
    micro_batch_per_gpu: int
    grad_accum: int
    train_batch_samples: int
    zero_stage: int
    reference: bool
    critic: bool
    roles: tuple[RolePlan, ...]
    memory: tuple[MemoryEstimate, ...]
    gpu_memory_gb: float
    # On-policy only.
    rollout_samples: int = 0
    updates_per_step: int = 0
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The conf/tuning/ file applied (its name), None when no file matched this algo, model and hardware.
    tuning: Optional[str] = None
    # The hardware in words: GPU, GPUs per node x nodes, links.
    machine: str = ""
    # Tokens of one training sequence: prompt_max_len + max_new_tokens on-policy, data.max_len offline.
    seq_len: int = 0
    # The run seed; rank r of a role seeds with seed + role.seed_offset + r (SEED_FORMULA).
    seed: int = 0
    seed_formula: str = ""
    # What the planner chose for the values left unset, and why ("engine: zero3 (zero2 needs 93 GiB of 79)").
    chosen: tuple[str, ...] = field(default_factory=tuple)

    def role(self, name: str) -> Optional[RolePlan]:
        return next((r for r in self.roles if r.role == name), None)

    def rank_seed(self, role: str, rank: int) -> int:
        r = self.role(role)
        return self.seed + (r.seed_offset if r is not None else 0) + rank

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = [dict(asdict(m), total_gib=m.total_gib) for m in self.memory]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def table(self) -> str:
        unit = "per GPU" if self.total_gpus else "per rank"
        lines = [
            f"algo            {self.algo} ({self.family}, objective {self.objective}, data task {self.task})",
            f"device          {f'{self.device} x {self.total_gpus}' if self.total_gpus else self.device}  "
            f"dtype {self.dtype}  ZeRO-{self.zero_stage}" + (f"  ({self.machine})" if self.machine else ""),
            f"tuning          {f'conf/tuning/{self.tuning}.yaml' if self.tuning else 'none'}",
            f"batch           {self.train_batch_samples} samples/step = {self.micro_batch_per_gpu} {unit} "
            f"x {self.world_size} ranks x {self.grad_accum} accumulation; sequences of {self.seq_len} tokens",
        ]
        for r in self.roles:
            if r.trained and r.role != "actor":
                lines.append(
                    f"batch {r.role:<9} {r.train_batch_samples} samples/step = {r.micro_batch_per_gpu} {unit} "
                    f"x {r.dp_ranks} ranks x {r.grad_accum} accumulation"
                )
        if self.family == "onpolicy":
            lines.append(
                f"rollout         {self.rollout_samples} samples/step -> {self.updates_per_step} optimizer "
                "update(s) per step"
            )
        lines.append("roles           " + "; ".join(_role_line(r) for r in self.roles))
        if self.memory:
            width = max(10, *(len(m.role) for m in self.memory))
            lines.append(f"memory (GiB per GPU, budget {self.gpu_memory_gb:.1f}; rows joined by + share a GPU)")
            lines.append(f"  {'role':<{width}}  weights  grads  optim  activ  other  total  host")
            for m in self.memory:
                lines.append(
                    f"  {m.role:<{width}} {m.weights_gib:8.2f} {m.grads_gib:6.2f} {m.optimizer_gib:6.2f} "
                    f"{m.activations_gib:6.2f} {m.other_gib:6.2f} {m.total_gib:6.2f} {m.host_gib:5.1f}"
                )
        for c in self.chosen:
            lines.append(f"chosen          {c}")
        for n in self.notes:
            lines.append(f"note            {n}")
        return "\n".join(lines)


def _role_line(r: RolePlan) -> str:
    if r.hosted_in:
        return f"{r.role} (in {r.hosted_in})"
    gpus = f"{r.gpus_per_worker:g} GPU" if r.gpus_per_worker else "CPU"
    return f"{r.role} {r.num_workers}x[{gpus}] pool={r.pool}"


def _choice(problems: list[str], key: str, value, allowed) -> None:
    if value in allowed:
        return
    msg = f"{key}={value!r} is not one of {sorted(allowed)}"
    if isinstance(value, str):
        close = difflib.get_close_matches(value, [a for a in allowed if isinstance(a, str)], n=1)
        if close:
            msg += f"; did you mean {key}={close[0]}?"
    problems.append(msg)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _shape(cfg: RunConfig) -> ModelShape:
    m = cfg.model
    return ModelShape(
        params_b=m.params_b,
        hidden_size=m.hidden_size,
        num_layers=m.num_layers,
        vocab_size=m.vocab_size,
        num_kv_heads=m.num_kv_heads,
        num_heads=m.num_heads,
        num_experts=m.num_experts,
        experts_per_token=m.experts_per_token,
        intermediate_size=m.intermediate_size,
    )


def _machine(hw) -> str:
    if hw.nodes * hw.gpus_per_node == 0:
        return ""
    links = hw.interconnect if hw.nodes == 1 else f"{hw.interconnect} in a node, {hw.network} between nodes"
    return f"{hw.gpu}, {hw.gpus_per_node} per node x {hw.nodes} node(s), {links}"


def resolve_plan(cfg: RunConfig) -> Plan:
    """Check the configuration and compute the plan; raises PlanError listing every problem found."""
    problems: list[str] = []
    notes: list[str] = []
    try:
        spec = get_algo(cfg.algo.name)
    except ValueError as e:
        raise PlanError([str(e)]) from None
    algo = cfg.algo
    hw = cfg.hw
    total_gpus = hw.nodes * hw.gpus_per_node
    device = "cuda" if total_gpus > 0 else "cpu"
    chosen: list[str] = []
    # Architecture numbers first: every later choice depends on the model's size.
    models = _fill_models(cfg, spec, problems, chosen)
    if models is None:
        raise PlanError(problems)
    _check_positions(cfg, spec, problems)
    _check_choices(cfg, spec, problems)
    problems += __import__("rlhf.config.validate", fromlist=["_"]).run_control_problems(cfg)  # run control, eval
    dtype = cfg.engine.dtype
    if dtype == "auto":
        dtype = "bf16" if (device == "cuda" and hw.bf16) else "fp32"
    if device == "cpu" and dtype in ("bf16", "fp16"):
        problems.append(f"engine.dtype={dtype} on hw={hw.name}: CPU training runs in fp32; use engine.dtype=auto")
    if device == "cuda" and dtype == "bf16" and not hw.bf16:
        problems.append(
            f"engine.dtype=bf16 but the {hw.gpu} GPUs of hw={hw.name} have no bf16 (hw.bf16=false); use "
            "engine.dtype=fp16 or engine.dtype=auto"
        )

    onpolicy = spec.family == "onpolicy"
    reference = spec.reference or (onpolicy and algo.kl_coef > 0)
    critic = onpolicy and algo.advantage in _critic_estimators()
    _fill_layout(cfg, spec, total_gpus, critic, reference, chosen)
    roles, actor_gpus = _roles(cfg, spec, total_gpus, reference, critic, problems, notes)
    world = actor_gpus if device == "cuda" else max(hw.cpu_workers, 1)
    ring_problems = __import__("rlhf.config.validate", fromlist=["_"]).ring_attn_problems(cfg, spec, world)
    problems += ring_problems
    ring = cfg.model.ring_attn_size if not ring_problems and cfg.model.ring_attn_size > 1 else 1
    world //= ring  # data-parallel ranks: the ranks of one ring see the same samples
    roles = [replace(r, name_or_path=models.get(r.role.split(".")[0])) for r in roles]
    _fill_scale(cfg, spec, world, chosen)
    if device == "cuda":
        _fill_sleep_engine_and_micro(cfg, spec, roles, world, reference, critic, dtype, chosen)
    else:
        _fill_cpu(cfg, world, chosen)
    _fill_generate_batch(cfg, spec, roles, world, reference, critic, dtype, chosen)

    micro = algo.micro_batch_per_gpu
    tbs = algo.train_batch_samples
    grad_accum = 0
    if micro is None or tbs is None:
        problems.append("algo.micro_batch_per_gpu and algo.train_batch_samples could not be chosen; set them")
        micro = micro or 0
    elif micro < 1 or tbs < 1:
        problems.append(f"algo.micro_batch_per_gpu={micro} and algo.train_batch_samples={tbs} must both be >= 1")
    elif tbs % (micro * world):
        problems.append(_batch_problem(tbs, micro, world))
    else:
        grad_accum = tbs // (micro * world)

    rollout_samples = updates = 0
    if onpolicy:
        rollout_samples, updates = _check_rollout(cfg, micro, world, problems)
    if grad_accum:
        roles = _with_batches(roles, micro, grad_accum, tbs, world, problems)
        if ring > 1:
            roles = [replace(r, ring_attn_size=ring) if "actor" in (r.role, r.hosted_in) else r for r in roles]
            notes.append(f"ring attention: each packed row split over {ring} ranks, {world} data-parallel rank(s)")

    if grad_accum and onpolicy and device == "cuda" and ring == 1 and algo.max_tokens_per_micro is None:
        _fill_token_budget(cfg, spec, roles, chosen)

    memory: tuple[MemoryEstimate, ...] = ()
    if device == "cuda" and micro >= 1:
        estimates, pools = _memory(cfg, spec, roles, world, reference, critic, dtype)
        memory = tuple(estimates)
        for est, members in pools:
            if est.total_gib <= hw.gpu_memory_gb:
                continue
            if members == ["rollout"]:
                problems.append(
                    f"out of GPU memory: a vLLM engine needs about {est.total_gib:.1f} GiB per GPU for "
                    f"{cfg.model.name_or_path} with rollout.tensor_parallel_size={cfg.rollout.tensor_parallel_size} "
                    f"but hw={hw.name} has {hw.gpu_memory_gb:g} GiB per GPU; raise rollout.tensor_parallel_size"
                )
            else:
                problems.append(_oom_advice(cfg, spec, roles, world, reference, critic, dtype, est, members))
        host = _host_gib_per_node(cfg, estimates, roles)
        if host > hw.cpu_memory_gb:
            problems.append(
                f"offloaded states need about {host:.0f} GiB of host memory per node (engine.offload_optimizer="
                f"{cfg.engine.offload_optimizer}, engine.offload_params={cfg.engine.offload_params}) but hw={hw.name} "
                f"has {hw.cpu_memory_gb:.0f} GiB per node (hw.cpu_memory_gb); offload less, use LoRA "
                "(model.lora.rank=16), or a hw profile with more nodes"
            )
        notes.extend(_rollout_notes(cfg, estimates, roles))
        tried = next((c for c in chosen if c.startswith(_NONE_FITS)), None)
        first = next(
            (i for i, p in enumerate(problems) if p.startswith(("out of GPU memory", "offloaded states"))), None
        )
        if tried and first is not None:
            problems[first] += "\n    the planner tried, each at its smallest micro-batch: " + tried[len(_NONE_FITS) :]

    if problems:
        raise PlanError(problems)
    if device == "cpu":
        notes.append(f"CPU run: {world} data-parallel process(es), fp32, DeepSpeed on the gloo backend")
    return Plan(
        algo=algo.name,
        family=spec.family,
        objective=spec.objective,
        task=spec.task,
        device=device,
        dtype=dtype,
        total_gpus=total_gpus,
        world_size=world,
        micro_batch_per_gpu=micro,
        grad_accum=grad_accum,
        train_batch_samples=tbs,
        zero_stage=cfg.engine.zero_stage,
        reference=reference,
        critic=critic,
        roles=tuple(roles),
        memory=memory,
        gpu_memory_gb=hw.gpu_memory_gb,
        rollout_samples=rollout_samples,
        updates_per_step=updates,
        notes=tuple(notes),
        tuning=cfg.tuning,
        machine=_machine(hw),
        seq_len=_seq_len(cfg, spec),
        seed=cfg.seed,
        seed_formula=SEED_FORMULA,
        chosen=tuple(chosen),
    )


# How each rank seeds its generators (rlhf/workers): distinct per role and rank, reproducible from `seed`.
SEED_FORMULA = "seed + role offset + rank (actor, ref, reward, rollout: offset 0; critic: 7919)"
_SEED_OFFSETS = {"critic": 7919}


def _seq_len(cfg: RunConfig, spec: AlgoSpec) -> int:
    if spec.family == "onpolicy":
        return cfg.data.prompt_max_len + cfg.rollout.max_new_tokens
    return cfg.data.max_len


def _check_positions(cfg: RunConfig, spec: AlgoSpec, problems: list[str]) -> None:
    """Sequences longer than the model's positions: vLLM refuses them at engine start, and a trainer would read
    rotary positions it was never trained on."""
    limit = cfg.model.max_position_embeddings
    seq = _seq_len(cfg, spec)
    if not limit or seq <= limit:
        return
    if spec.family == "onpolicy":
        parts = f"data.prompt_max_len={cfg.data.prompt_max_len} + rollout.max_new_tokens={cfg.rollout.max_new_tokens}"
        fix = f"rollout.max_new_tokens={max(limit - cfg.data.prompt_max_len, 1)} or lower data.prompt_max_len"
    else:
        parts, fix = f"data.max_len={cfg.data.max_len}", f"data.max_len={limit}"
    problems.append(
        f"sequences of {seq} tokens ({parts}) exceed the {limit} positions of {cfg.model.name_or_path} "
        f"(model.max_position_embeddings); set {fix}"
    )


def _with_batches(roles, micro: int, grad_accum: int, tbs: int, world: int, problems: list[str]) -> list[RolePlan]:
    """Each role's own batch arithmetic: batch = micro x accumulation x ranks holds for every trained role.

    The actor's numbers are the run's; a critic on its own GPUs trains on the same samples per optimizer step
    over its own ranks, so it keeps the largest micro-batch (at most the actor's) that divides them and
    accumulates the rest. Frozen roles score micro-batches of the actor's size and train nothing.
    """
    out = []
    for r in roles:
        ranks = r.num_workers if not r.hosted_in else world
        fields = dict(dp_ranks=ranks, micro_batch_per_gpu=micro, seed_offset=_SEED_OFFSETS.get(r.role, 0))
        if r.role == "actor":
            fields.update(dp_ranks=world, grad_accum=grad_accum, train_batch_samples=tbs)
        elif r.role == "critic":
            fits = [m for m in range(min(micro, tbs), 0, -1) if tbs % (m * max(ranks, 1)) == 0]
            if not fits:
                problems.append(
                    f"algo.train_batch_samples={tbs} does not split over the critic's {ranks} data-parallel rank(s) "
                    f"(placement.critic_gpus={ranks}); use a batch divisible by {ranks} or placement.critic_gpus in "
                    f"{[d for d in _divisors(tbs) if d <= ranks * 2][-3:]}"
                )
                fits = [1]
            m = fits[0]
            fields.update(micro_batch_per_gpu=m, grad_accum=max(tbs // (m * max(ranks, 1)), 1), train_batch_samples=tbs)
        elif r.role == "rollout":
            fields.update(micro_batch_per_gpu=0)
        out.append(replace(r, **fields))
    return out


def _batch_problem(tbs: int, micro: int, world: int) -> str:
    """The divisibility error with the nearest valid batch sizes and the micro-batches that divide `tbs`."""
    per_pass = micro * world
    k = max(tbs // per_pass, 1)
    ok_tbs = [per_pass * k, per_pass * (k + 1)]
    ok_micro = [m for m in _divisors(tbs) if tbs % (m * world) == 0]
    msg = (
        f"algo.train_batch_samples={tbs} is not divisible by algo.micro_batch_per_gpu={micro} x {world} "
        f"data-parallel rank(s) = {per_pass}; use algo.train_batch_samples in {ok_tbs}"
    )
    if ok_micro:
        return msg + f", or algo.micro_batch_per_gpu in {ok_micro}"
    return msg + f" (no algo.micro_batch_per_gpu divides {tbs} samples over {world} ranks)"


def _check_rollout(cfg: RunConfig, micro: int, world: int, problems: list[str]) -> tuple[int, int]:
    """On-policy batch checks; returns (rollout samples per step, optimizer updates per step)."""
    a = cfg.algo
    tbs = a.train_batch_samples
    for key, value in (
        ("prompts_per_step", a.prompts_per_step),
        ("samples_per_prompt", a.samples_per_prompt),
        ("update_epochs", a.update_epochs),
    ):
        if value < 1:
            problems.append(f"algo.{key}={value} must be >= 1")
    if a.advantage in _group_estimators() and a.samples_per_prompt < 2:
        problems.append(
            f"algo.advantage={a.advantage} compares samples of the same prompt: set algo.samples_per_prompt >= 2 "
            f"(got algo.samples_per_prompt={a.samples_per_prompt}; 4 to 16 is usual)"
        )
    if a.dual_clip is not None and a.dual_clip <= 1:
        problems.append(f"algo.dual_clip={a.dual_clip} must be > 1 (or null to disable)")
    if a.kl_coef < 0:
        problems.append(f"algo.kl_coef={a.kl_coef} must be >= 0 (0 disables the KL term and the reference model)")
    samples = a.prompts_per_step * a.samples_per_prompt
    if samples < 1 or tbs < 1:
        return max(samples, 0), 0
    if samples % tbs:
        ok_tbs = [t for t in _divisors(samples) if t % max(micro * world, 1) == 0]
        prompts = tbs // math.gcd(tbs, a.samples_per_prompt)
        fix = f"use algo.prompts_per_step in {[prompts, 2 * prompts]}"
        if ok_tbs:
            fix = f"use algo.train_batch_samples in {ok_tbs} or algo.prompts_per_step in {[prompts, 2 * prompts]}"
        problems.append(
            f"algo.prompts_per_step x algo.samples_per_prompt = {a.prompts_per_step} x {a.samples_per_prompt} = "
            f"{samples} rollout samples is not divisible by algo.train_batch_samples={tbs}: each rollout batch "
            f"must split into whole optimizer steps; {fix}"
        )
        return samples, 0
    return samples, samples // tbs * max(a.update_epochs, 0)


def _group_estimators() -> set[str]:
    from rlhf.algos.advantages import GROUP_ESTIMATORS

    return set(GROUP_ESTIMATORS)


def _critic_estimators() -> set[str]:
    from rlhf.algos.advantages import ESTIMATOR_NEEDS_CRITIC

    return set(ESTIMATOR_NEEDS_CRITIC)


def _check_choices(cfg: RunConfig, spec: AlgoSpec, problems: list[str]) -> None:
    _choice(problems, "placement.mode", cfg.placement.mode, {"colocated", "separate"})
    _choice(problems, "rollout.backend", cfg.rollout.backend, set(BACKENDS))
    _choice(problems, "rollout.sync", cfg.rollout.sync, {"auto", "ipc", "nccl"})
    _choice(problems, "tracking.backend", cfg.tracking.backend, {"mlflow", "none"})
    _choice(problems, "engine.dtype", cfg.engine.dtype, {"auto", "bf16", "fp16", "fp32"})
    if cfg.engine.zero_stage is not None:
        _choice(problems, "engine.zero_stage", cfg.engine.zero_stage, {0, 1, 2, 3})
    _choice(problems, "data.bad_rows", cfg.data.bad_rows, {"skip", "error"})
    _choice(problems, "algo.lr_scheduler", cfg.algo.lr_scheduler, {"cosine", "linear", "constant"})
    _choice(problems, "mode", cfg.mode, {"train", "plan"})
    if cfg.engine.offload_params and cfg.engine.zero_stage not in (3, None):
        problems.append(
            f"engine.offload_params=true needs engine.zero_stage=3 (got {cfg.engine.zero_stage}); use "
            "engine=zero3_offload, or engine=zero2_offload to offload only the optimizer"
        )
    if not cfg.data.sources:
        problems.append(
            "data.sources is empty: pick a data set with data=<option> (files in conf/data/); a new source is "
            "added in a conf/data/<option>.yaml file (see conf/data/sft_mixture.yaml)"
        )
    for name, src in cfg.data.sources.items():
        if src.weight <= 0:
            problems.append(f"data.sources.{name}.weight={src.weight} must be > 0")
    if cfg.data.packing and spec.sequence_classifier:
        problems.append(
            f"data.packing=true with algo={spec.name}: a reward model scores one token per sequence and a packed "
            "row holds several; set data.packing=false"
        )
    if spec.name in ("dpo", "ipo", "cdpo"):
        _choice(problems, "algo.loss", cfg.algo.loss, {"sigmoid", "ipo"})
        if not 0 <= cfg.algo.label_smoothing < 0.5:
            problems.append(f"algo.label_smoothing={cfg.algo.label_smoothing} must be in [0, 0.5)")
    if spec.family == "onpolicy":
        from rlhf.algos.advantages import ADVANTAGE_ESTIMATORS
        from rlhf.algos.aggregate import AGG_MODES
        from rlhf.algos.kl import KL_ESTIMATORS

        a = cfg.algo
        _choice(problems, "algo.advantage", a.advantage, set(ADVANTAGE_ESTIMATORS))
        _choice(problems, "algo.loss_agg", a.loss_agg, set(AGG_MODES))
        _choice(problems, "algo.kl_estimator", a.kl_estimator, set(KL_ESTIMATORS))
        _choice(problems, "algo.kl_in", a.kl_in, {"reward", "loss"})
        _choice(problems, "algo.policy_loss", a.policy_loss, {"ppo", "gspo"})  # rlhf/algos/policy_loss.py
        if a.policy_loss == "gspo" and a.dual_clip is not None:
            problems.append("algo.dual_clip is a token-level PPO option; GSPO clips whole sequences: set it to null")
        if a.tis_cap is not None and not a.tis_cap >= 1:
            problems.append(f"algo.tis_cap={a.tis_cap} must be >= 1, or null to turn truncated importance sampling off")
        if a.max_tokens_per_micro is not None and a.max_tokens_per_micro < 1:
            problems.append(f"algo.max_tokens_per_micro={a.max_tokens_per_micro} must be >= 1 tokens, or null")
        if not cfg.reward.sources:
            problems.append("reward.sources is empty: pick reward=<option> (math, model, numeric, remote)")
        for name, src in cfg.reward.sources.items():
            key = f"reward.sources.{name}"
            _choice(problems, f"{key}.kind", src.kind, {"function", "model", "remote"})
            if src.kind == "function" and not src.path:
                problems.append(f"{key}.path is required for kind=function: set {key}.path=<module>:<function>")
            if src.kind == "model" and not src.path:
                problems.append(
                    f"{key}.path is required for kind=model: set {key}.path=<Hugging Face name or local directory "
                    "of a reward model>"
                )
            if src.kind == "remote" and not src.url:
                problems.append(f"{key}.url is required for kind=remote: set {key}.url=http://<host>:<port>/score")
        _choice(problems, "reward.combine", cfg.reward.combine, {"weighted", "sum", "mean", "min", "product"})


def _roles(cfg, spec, total_gpus, reference, critic, problems, notes) -> tuple[list[RolePlan], int]:
    """Ray actor layout per role, and the number of GPUs (data-parallel ranks) of the trained model."""
    onpolicy = spec.family == "onpolicy"
    reward_models = [n for n, s in cfg.reward.sources.items() if s.kind == "model"] if onpolicy else []
    if total_gpus == 0:
        roles = [RolePlan("actor", max(cfg.hw.cpu_workers, 1), 0.0, "cpu")]
        if reference:
            roles.append(
                RolePlan("ref", 1, 0.0, "cpu") if onpolicy else RolePlan("ref", 0, 0.0, "cpu", hosted_in="actor")
            )
        if critic:
            # placement.critic_gpus counts the critic's processes on CPU (0: as many as the actor's).
            roles.append(RolePlan("critic", max(cfg.placement.critic_gpus or cfg.hw.cpu_workers, 1), 0.0, "cpu"))
        for n in reward_models:
            roles.append(RolePlan(f"reward.{n}", 1, 0.0, "cpu"))
        if onpolicy and has_engines(cfg.rollout.backend):
            roles.append(RolePlan("rollout", cfg.rollout.num_engines, 0.0, "cpu"))
        return roles, max(cfg.hw.cpu_workers, 1)

    p = cfg.placement
    ro = cfg.rollout
    vllm = onpolicy and has_engines(ro.backend)
    engine_gpus = ro.num_engines * ro.tensor_parallel_size if vllm else 0
    if p.mode == "separate" and not onpolicy:
        notes.append(f"placement=separate has no effect for {spec.name}: its roles share every GPU")
    if p.mode == "separate" and onpolicy and not vllm:
        notes.append("placement=separate with rollout=hf: the actor generates, placement.rollout_gpus is unused")
    if p.mode == "colocated" or not onpolicy:
        # All roles on every GPU; fractional GPU requests let Ray pack them on the same devices.
        n_roles = 1 + int(reference and onpolicy) + int(critic) + len(reward_models) + int(vllm)
        share = round(1.0 / n_roles, 3) if n_roles > 1 else 1.0
        roles = [RolePlan("actor", total_gpus, share, "shared")]
        if reference:
            roles.append(
                RolePlan("ref", total_gpus, share, "shared")
                if onpolicy
                else RolePlan("ref", 0, 0.0, "shared", hosted_in="actor")
            )
        if critic:
            roles.append(RolePlan("critic", total_gpus, share, "shared"))
        for n in reward_models:
            roles.append(RolePlan(f"reward.{n}", total_gpus, share, "shared"))
        if vllm:
            if engine_gpus != total_gpus:
                problems.append(
                    f"placement=colocated shares every GPU: rollout.num_engines x rollout.tensor_parallel_size "
                    f"= {ro.num_engines} x {ro.tensor_parallel_size} = {engine_gpus} must equal the {total_gpus} "
                    f"GPUs of hw={cfg.hw.name}; set rollout.num_engines={max(total_gpus // ro.tensor_parallel_size, 1)}"
                    " or use placement=separate"
                )
            roles.append(RolePlan("rollout", ro.num_engines, share * ro.tensor_parallel_size, "shared"))
        return roles, total_gpus

    # Separate placement: each pool its own GPUs.
    if vllm and p.rollout_gpus and p.rollout_gpus != engine_gpus:
        problems.append(
            f"placement.rollout_gpus={p.rollout_gpus} but rollout.num_engines x rollout.tensor_parallel_size = "
            f"{ro.num_engines} x {ro.tensor_parallel_size} = {engine_gpus}; make them equal"
        )
    used = engine_gpus
    ref_gpus = 0 if (not reference or p.colocate_actor_ref) else max(p.ref_gpus, 1)
    critic_gpus = max(p.critic_gpus, 1) if critic else 0
    reward_gpus = 0
    if reward_models and not (critic and p.colocate_critic_reward):
        reward_gpus = max(p.reward_gpus, 1)
    used += ref_gpus + critic_gpus + reward_gpus
    actor = p.actor_gpus if p.actor_gpus is not None else total_gpus - used
    if actor < 1 or actor + used > total_gpus:
        problems.append(
            f"placement=separate needs actor {max(actor, 1)} + rollout {engine_gpus} + ref {ref_gpus} + critic "
            f"{critic_gpus} + reward {reward_gpus} GPUs but hw={cfg.hw.name} has {total_gpus}; lower "
            "placement.*_gpus / rollout.num_engines, colocate roles, or pick a larger hw profile"
        )
        actor = max(actor, 1)
    roles = [RolePlan("actor", actor, 0.5 if reference and p.colocate_actor_ref else 1.0, "actor")]
    if reference:
        roles.append(
            RolePlan("ref", actor, 0.5, "actor") if p.colocate_actor_ref else RolePlan("ref", ref_gpus, 1.0, "ref")
        )
    if critic:
        share = 0.5 if reward_models and p.colocate_critic_reward else 1.0
        roles.append(RolePlan("critic", critic_gpus, share, "critic"))
    for n in reward_models:
        if critic and p.colocate_critic_reward:
            roles.append(RolePlan(f"reward.{n}", critic_gpus, round(0.5 / len(reward_models), 3), "critic"))
        else:
            roles.append(RolePlan(f"reward.{n}", reward_gpus, round(1.0 / len(reward_models), 3), "reward"))
    if vllm:
        roles.append(RolePlan("rollout", ro.num_engines, float(ro.tensor_parallel_size), "rollout"))
    return roles, actor


def _memory(cfg, spec, roles, world, reference, critic, dtype):
    """Per-role estimates plus one row per GPU shared by several roles, and the pools that must each fit.

    Returns (estimates, pools) with pools a list of (estimate, role names): the estimate of what one GPU of
    that pool holds at its peak. Roles on the same GPU add their weights and states; their activations do not
    add up because the roles run one after another.
    """
    shape = _shape(cfg)
    e = cfg.engine
    lora = cfg.model.lora
    # Ring attention: ZeRO shards over every process, while each holds the activations of 1/ring of a row.
    ring = max(cfg.model.ring_attn_size, 1)
    procs = world * ring
    lora_fraction = 1.0
    base_bytes = None
    if lora.rank > 0:
        # LoRA on the attention projections: 2 * r * (h + h) per projection per layer, roughly.
        lora_params = cfg.model.num_layers * len(lora.target_modules) * 2 * lora.rank * cfg.model.hidden_size
        lora_fraction = min(lora_params / shape.params, 1.0)
        # 4-bit weights plus their quantization scales.
        base_bytes = 0.56 if lora.load_in_4bit else None
    if spec.family == "onpolicy":
        seq = cfg.data.prompt_max_len + cfg.rollout.max_new_tokens
    else:
        seq = cfg.data.max_len
    pairs = 2 if spec.task == "pair" else 1
    bytes_per_param = 4 if dtype == "fp32" else 2
    common = dict(
        dp_size=procs,
        zero_stage=e.zero_stage,
        micro_batch=cfg.algo.micro_batch_per_gpu * pairs,
        seq_len=-(-seq // ring),
        gradient_checkpointing=e.gradient_checkpointing,
        offload_optimizer=e.offload_optimizer,
        offload_params=e.offload_params,
        bytes_per_param=bytes_per_param,
        lora_fraction=lora_fraction,
        base_bytes_per_param=base_bytes,
    )
    head_rows = _fused_head_rows(cfg, spec, shape)
    by_role = {"actor": training_memory("actor", shape, **common, head_rows=head_rows)}
    if spec.family == "onpolicy" and not has_engines(cfg.rollout.backend):
        # The policy ranks generate with HF generate between training passes: the larger transient counts.
        gen = hf_generation_bytes(
            shape,
            # Before the planner's choice (_fill_generate_batch), one row: the engine and micro-batch come first.
            batch=min(cfg.rollout.generate_batch or 1, _rollout_rows_per_rank(cfg, world)),
            prompt_len=cfg.data.prompt_max_len,
            new_tokens=cfg.rollout.max_new_tokens,
            bytes_per_value=bytes_per_param,
        )
        actor = by_role["actor"]
        if gen / GIB > actor.activations_gib:
            by_role["actor"] = replace(actor, activations_gib=gen / GIB)
    ref_plan = next((r for r in roles if r.role == "ref"), None)
    if reference:
        own_pool = ref_plan is not None and ref_plan.pool == "ref"
        shards = (ref_plan.num_workers if own_pool else procs) if e.zero_stage == 3 else 1
        by_role["ref"] = inference_memory(
            "ref",
            _role_shape(cfg, "ref"),
            shards=shards,
            micro_batch=common["micro_batch"],
            seq_len=common["seq_len"] if ref_plan is not None and ref_plan.hosted_in == "actor" else seq,
            bytes_per_param=bytes_per_param,
            zero3=e.zero_stage == 3,
            head_rows=head_rows,
        )
    if critic:
        # The critic trains over its own GPUs (placement=separate) and has a value head instead of the LM head.
        critic_plan = next((r for r in roles if r.role == "critic"), None)
        critic_dp = critic_plan.num_workers if critic_plan is not None and critic_plan.pool == "critic" else procs
        critic_micro = critic_plan.micro_batch_per_gpu if critic_plan is not None else 0
        by_role["critic"] = training_memory(
            "critic",
            _role_shape(cfg, "critic"),
            **dict(
                common,
                dp_size=critic_dp,
                lora_fraction=1.0,
                base_bytes_per_param=None,
                with_lm_head=False,
                micro_batch=critic_micro or common["micro_batch"],
                seq_len=seq,  # the critic runs whole rows
                head_rows=None,
            ),
        )
    rollout = next((r for r in roles if r.role == "rollout"), None)
    if rollout is not None:
        est, _capacity = rollout_memory(
            shape,
            gpu_memory_gb=cfg.hw.gpu_memory_gb,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            concurrent_tokens=cfg.algo.prompts_per_step * cfg.algo.samples_per_prompt * seq,
        )
        by_role["rollout"] = est

    shared = cfg.placement.mode == "colocated" or spec.family != "onpolicy"
    groups: list[list[str]] = []
    if shared:
        train_side = [r for r in ("actor", "ref", "critic") if r in by_role]
        # A sleeping vLLM engine frees its memory while training runs; an awake one keeps its reservation.
        resident = "rollout" in by_role and not cfg.rollout.enable_sleep
        groups.append(train_side + (["rollout"] if resident else []))
        if "rollout" in by_role and not resident:
            groups.append(["rollout"])
    else:
        ref_with_actor = "ref" in by_role and ref_plan is not None and ref_plan.pool == "actor"
        groups.append(["actor", "ref"] if ref_with_actor else ["actor"])
        groups.extend([r] for r in ("ref", "critic", "rollout") if r in by_role and not (r == "ref" and ref_with_actor))

    estimates = list(by_role.values())
    pools = []
    for names in groups:
        members = [by_role[n] for n in names]
        if len(members) == 1:
            pools.append((members[0], names))
            continue
        combined = _combine("+".join(names), members)
        estimates.append(combined)
        pools.append((combined, names))
    return estimates, pools


def _combine(name: str, members: list[MemoryEstimate]) -> MemoryEstimate:
    """One GPU holding several roles: states add up, training activations peak one role at a time."""
    train = [m for m in members if m.role != "rollout"]
    kv = sum(m.activations_gib + m.other_gib for m in members if m.role == "rollout")
    return MemoryEstimate(
        name,
        sum(m.weights_gib for m in members),
        sum(m.grads_gib for m in members),
        sum(m.optimizer_gib for m in members),
        max((m.activations_gib for m in train), default=0.0) + kv,
        # One CUDA context per GPU; each engine's own buffers (buckets, ZeRO-3 gathered parameters) add up.
        (FRAMEWORK_OVERHEAD_GIB + sum(m.other_gib - FRAMEWORK_OVERHEAD_GIB for m in train)) if train else 0.0,
        sum(m.host_gib for m in members),
    )


def _host_gib_per_node(cfg: RunConfig, estimates, roles) -> float:
    """Host memory of offloaded states on the fullest node: each rank of a trained role offloads its partition.

    A role's ranks fill whole nodes first, so a node holds at most gpus_per_node ranks of each role; summing
    that over roles bounds the fullest node (exact when roles share every GPU).
    """
    per_node = max(cfg.hw.gpus_per_node, 1)
    workers = {r.role: min(r.num_workers, per_node) for r in roles}
    return sum(m.host_gib * workers.get(m.role, 0) for m in estimates if m.role in ("actor", "critic"))


def _rollout_notes(cfg: RunConfig, estimates, roles) -> list[str]:
    """Warnings about vLLM's memory: short KV cache, or training states that stay on the GPU while it generates."""
    by_role = {m.role: m for m in estimates}
    if "rollout" not in by_role:
        return []
    notes = []
    ro = cfg.rollout
    shape = _shape(cfg)
    seq = cfg.data.prompt_max_len + ro.max_new_tokens
    _est, capacity = rollout_memory(
        shape,
        gpu_memory_gb=cfg.hw.gpu_memory_gb,
        gpu_memory_utilization=ro.gpu_memory_utilization,
        tensor_parallel_size=ro.tensor_parallel_size,
        concurrent_tokens=0,
    )
    if capacity < seq:
        notes.append(
            f"vLLM: rollout.gpu_memory_utilization={ro.gpu_memory_utilization} leaves KV cache for about "
            f"{capacity:.0f} tokens per engine, less than one sequence of {seq}; raise "
            "rollout.gpu_memory_utilization or rollout.tensor_parallel_size"
        )
    if cfg.placement.mode == "colocated" and ro.enable_sleep:
        states = sum(
            m.weights_gib + m.grads_gib + m.optimizer_gib for r, m in by_role.items() if r in ("actor", "ref", "critic")
        )
        reserved = ro.gpu_memory_utilization * cfg.hw.gpu_memory_gb
        if states + reserved > cfg.hw.gpu_memory_gb:
            room = max((cfg.hw.gpu_memory_gb - states - FRAMEWORK_OVERHEAD_GIB) / cfg.hw.gpu_memory_gb, 0.0)
            notes.append(
                f"colocated generation: vLLM reserves {reserved:.1f} GiB (rollout.gpu_memory_utilization="
                f"{ro.gpu_memory_utilization}) next to {states:.1f} GiB of training states per GPU: the trainers "
                f"must offload their states while vLLM generates, or lower rollout.gpu_memory_utilization to about "
                f"{room:.2f}"
            )
    return notes


# --- choosing what the configuration leaves unset -------------------------------------------------------------
#
# Each _fill_* function sets the fields still None on `cfg` (values given in an option file, a tuning file or
# on the command line are kept as given) and appends one line per choice to `chosen`, saying why.

_ARCH_REQUIRED = (
    "params_b",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "intermediate_size",
    "vocab_size",
)
_ARCH_DEFAULTS = dict(
    model_type="llama", num_experts=1, experts_per_token=1, tie_word_embeddings=False, max_position_embeddings=4096
)


@functools.lru_cache(maxsize=256)
def _arch(name_or_path: str, key: str):
    from rlhf.models.arch import find_arch

    return find_arch(name_or_path, key)


def _fill_models(cfg: RunConfig, spec: AlgoSpec, problems: list[str], chosen: list[str]) -> Optional[dict]:
    """Fill the actor's architecture numbers; returns {role: weights to load (None: the actor's)} or None."""
    from rlhf.models.arch import ArchError, preset_name_or_path

    m = cfg.model
    _refresh_stale_preset(m, problems, chosen)
    if problems:
        return None
    if any(getattr(m, k) is None for k in _ARCH_REQUIRED):
        try:
            found = _arch(m.name_or_path, "model.name_or_path")
        except ArchError as e:
            problems.append(str(e))
            return None
        filled = [k for k in _ARCH_REQUIRED + tuple(_ARCH_DEFAULTS) if getattr(m, k) is None]
        for k in filled:
            setattr(m, k, getattr(found, k))
        chosen.append(f"model: {', '.join(filled)} from {found.source} ({found.params_b:.3g}B parameters)")
    for k, v in _ARCH_DEFAULTS.items():
        if getattr(m, k) is None:
            setattr(m, k, v)
    models: dict = {}
    ref_path = cfg.ref.name_or_path or getattr(cfg.algo, "ref_name_or_path", None)
    for role, path in (("critic", cfg.critic.name_or_path), ("ref", ref_path)):
        if not path:
            continue
        try:
            found = _arch(path, f"{role}.name_or_path")
        except ArchError as e:
            problems.append(str(e))
            return None
        models[role] = preset_name_or_path(path) or path
        chosen.append(f"{role}: {models[role]}, {found.params_b:.3g}B parameters ({found.source})")
    return models


def _refresh_stale_preset(m, problems: list[str], chosen: list[str]) -> None:
    """`model=<preset> model.name_or_path=<another model>`: the preset's numbers describe its own model.

    When every architecture number equals a preset's and no preset with those numbers loads this name_or_path,
    the numbers (and the preset's train_defaults) are the preset's, not this model's: read the model's own,
    keeping the numbers that differ from the preset's (given on the command line).
    """
    from rlhf.config.model import ScaleDefaults
    from rlhf.models.arch import ArchError, looks_like_path, presets

    if m.name_or_path.startswith("tiny:") or any(getattr(m, k) is None for k in _ARCH_REQUIRED):
        return
    keys = _ARCH_REQUIRED + tuple(_ARCH_DEFAULTS)
    same = {name: v for name, v in presets().items() if all(v.get(k) == getattr(m, k) for k in _ARCH_REQUIRED)}
    if not same or any(v.get("name_or_path") == m.name_or_path for v in same.values()):
        return
    name, values = next(iter(same.items()))
    try:
        found = _arch(m.name_or_path, "model.name_or_path")
    except ArchError as e:
        if looks_like_path(m.name_or_path):
            problems.append(str(e))
        else:
            # A hub id known nowhere offline (a fine-tune of the preset's model, say): keep the preset's numbers.
            chosen.append(
                f"model: {m.name_or_path} is not available offline; the numbers of conf/model/{name}.yaml are used"
            )
        return
    replaced = [
        k
        for k in keys
        if getattr(m, k) is not None and getattr(m, k) == values.get(k) and getattr(m, k) != getattr(found, k)
    ]
    for k in keys:
        if getattr(m, k) is None or getattr(m, k) == values.get(k):
            setattr(m, k, getattr(found, k))
    # The found model's own scale values: another preset's (conf/model/<x>.yaml loads this hub id), else none.
    other = (
        presets().get(found.source[len("conf/model/") : -len(".yaml")], {}) if found.source.startswith("conf/") else {}
    )
    m.train_defaults = {k: ScaleDefaults(**v) for k, v in (other.get("train_defaults") or {}).items()}
    chosen.append(
        f"model: architecture of {m.name_or_path} from {found.source} ({found.params_b:.3g}B parameters), "
        f"not the numbers of conf/model/{name}.yaml" + (f" ({', '.join(replaced)} differ)" if replaced else "")
    )


# Objectives whose log-probs go through rlhf/training/sequences.py head_bypassed ("policy": on-policy RL).
FUSED_HEAD_OBJECTIVES = frozenset({"policy", "sft", "dpo", "kto"})


def _fused_head_rows(cfg: RunConfig, spec: AlgoSpec, shape: ModelShape) -> Optional[int]:
    """Rows of logits the fused LM head holds at once where the run's passes use it (engine.fused_lm_head, a
    plain head: rlhf/training/sequences.py plain_head; the RL passes and the token log-probs of SFT, DPO and
    KTO), else None (the whole micro-batch's logits: reward models, PRM and distillation read whole logits)."""
    from rlhf.algos.logprobs import rows_per_chunk
    from rlhf.models.arch import PLAIN_HEAD_MODEL_TYPES

    e, m = cfg.engine, cfg.model
    applies = (
        spec.objective in FUSED_HEAD_OBJECTIVES
        and e.fused_lm_head
        and e.zero_stage != 3
        and (m.model_type or "llama") in PLAIN_HEAD_MODEL_TYPES
        and "lm_head" not in (m.lora.target_modules if m.lora.rank > 0 else ())
    )
    return rows_per_chunk(shape.vocab_size, None) if applies else None


def _role_shape(cfg: RunConfig, role: str) -> ModelShape:
    """The shape of the critic's or reference's weights: their own model when one is named, else the actor's."""
    path = (
        cfg.critic.name_or_path
        if role == "critic"
        else (cfg.ref.name_or_path or getattr(cfg.algo, "ref_name_or_path", None))
    )
    if not path:
        return _shape(cfg)
    a = _arch(path, f"{role}.name_or_path")
    return ModelShape(
        params_b=a.params_b,
        hidden_size=a.hidden_size,
        num_layers=a.num_layers,
        vocab_size=a.vocab_size,
        num_kv_heads=a.num_kv_heads,
        num_heads=a.num_heads,
        num_experts=a.num_experts,
        experts_per_token=a.experts_per_token,
        intermediate_size=a.intermediate_size,
    )


def _scale_defaults(cfg: RunConfig):
    """The model preset's ScaleDefaults for this algorithm: by its name, else by its schema (rl, dpo, ...)."""
    from rlhf.config.run import SCHEMAS

    table = cfg.model.train_defaults or {}
    kind = next((k for k, cls in SCHEMAS["algo"].items() if type(cfg.algo) is cls), None)
    key = cfg.algo.name if cfg.algo.name in table else kind
    return (key, table[key]) if key in table else (None, None)


def _per_rank_batch(tbs: int, world: int, cap: int, micro: Optional[int] = None) -> int:
    """Samples per rank for a batch of about `tbs` over `world` ranks: at least one each, and a count with a
    divisor of at least half the largest micro-batch tried (128 over 3 ranks: 44 per rank, micro-batch 11, not
    the prime 43 whose only micro-batch is 1), raised by at most a quarter; else the smallest count. With a
    given micro-batch, a multiple of it (the next one up, whatever the raise)."""
    least = -(-tbs // world)
    if micro:
        return -(-least // micro) * micro
    want = max(min(cap, least) // 2, 1)
    for per_rank in range(least, least + least // 4 + 1):
        if max(d for d in _divisors(per_rank) if d <= cap) >= want:
            return per_rank
    return least


def _fill_scale(cfg: RunConfig, spec: AlgoSpec, world: int, chosen: list[str]) -> None:
    """Learning rates, batch and rollout size: the model preset's values, else rlhf/scale.py's rule."""
    from rlhf import scale

    a = cfg.algo
    onpolicy = spec.family == "onpolicy"
    key, preset = _scale_defaults(cfg)
    where = f"model.train_defaults.{key}"

    def pick(field_name: str, rule_value, rule_source: str):
        value = getattr(preset, field_name, None) if preset is not None else None
        return (value, where) if value is not None else (rule_value, rule_source)

    rule = scale.source(a.name, onpolicy)
    if a.lr is None:
        a.lr, src = pick("lr", scale.learning_rate(a.name, onpolicy, cfg.model.params_b), rule)
        lora = ""
        if cfg.model.lora.rank > 0 and src == rule:
            a.lr *= scale.LORA_LR_FACTOR
            lora = f"; x{scale.LORA_LR_FACTOR:g} for LoRA, rlhf/scale.py LORA_LR_FACTOR"
        chosen.append(f"algo.lr={a.lr:g} ({src}, {cfg.model.params_b:.3g}B parameters{lora})")
    if onpolicy and a.critic_lr is None:
        a.critic_lr, src = pick("critic_lr", scale.CRITIC_LR, rule)
        if a.advantage in _critic_estimators():
            chosen.append(f"algo.critic_lr={a.critic_lr:g} ({src})")
    if a.train_batch_samples is None:
        tbs, src = pick("train_batch_samples", scale.train_batch_samples(a.name, onpolicy), rule)
        raised = _per_rank_batch(tbs, world, _micro_cap(cfg), a.micro_batch_per_gpu) * world
        share = (
            f"x algo.micro_batch_per_gpu={a.micro_batch_per_gpu}"
            if a.micro_batch_per_gpu
            else "whose share per rank has a micro-batch divisor near the largest tried"
        )
        why = f"{src}" + (f", raised from {tbs} to a multiple of the {world} ranks {share}" if raised != tbs else "")
        rollout = a.prompts_per_step * a.samples_per_prompt if onpolicy and a.prompts_per_step else None
        if rollout and rollout % raised:
            # The rollout size was given: the batch is the largest that splits it into whole optimizer steps
            # over the ranks (not a batch larger than the rollout, which no rollout could fill).
            fits = [d for d in _divisors(rollout) if d % (world * (a.micro_batch_per_gpu or 1)) == 0 and d <= tbs]
            if fits:
                raised = max(fits)
                why = (
                    f"{src} gives {tbs}; lowered to the largest batch that splits the {rollout} rollout samples of "
                    f"algo.prompts_per_step={a.prompts_per_step} x {a.samples_per_prompt} over {world} rank(s)"
                )
        a.train_batch_samples = raised
        chosen.append(f"algo.train_batch_samples={raised} ({why})")
    if onpolicy and a.prompts_per_step is None and a.samples_per_prompt >= 1:
        samples, src = pick(
            "rollout_samples",
            scale.ROLLOUT_STEPS * a.train_batch_samples,
            f"{scale.ROLLOUT_STEPS} optimizer steps per rollout batch, rlhf/scale.py",
        )
        # Whole optimizer steps per rollout batch, and whole prompt groups.
        samples = max(samples, a.train_batch_samples)
        step = a.train_batch_samples * a.samples_per_prompt // math.gcd(a.train_batch_samples, a.samples_per_prompt)
        samples = -(-samples // step) * step
        a.prompts_per_step = samples // a.samples_per_prompt
        chosen.append(
            f"algo.prompts_per_step={a.prompts_per_step} ({a.prompts_per_step} x {a.samples_per_prompt} = "
            f"{samples} rollout samples per step; {src})"
        )


def _fill_token_budget(cfg: RunConfig, spec: AlgoSpec, roles, chosen: list[str]) -> None:
    """On GPU, the log-prob and training passes bin rows by length (rlhf/training/packing_rl.py): each
    micro-batch holds as many rows as fit the tokens the memory plan counted for, micro-batch x the full
    sequence length, so short responses are not padded to the longest and fewer micro-batches run."""
    seq = _seq_len(cfg, spec)
    micros = [r.micro_batch_per_gpu for r in roles if r.micro_batch_per_gpu > 0 and not r.role.startswith("reward")]
    if not micros or seq < 1:
        return
    budget = min(micros) * seq
    cfg.algo.max_tokens_per_micro = budget
    chosen.append(
        f"algo.max_tokens_per_micro={budget} ({min(micros)} rows x {seq} tokens, what the memory plan counts "
        "for a micro-batch: rows are binned by length, short ones several to a full-length row's room)"
    )


def _fill_cpu(cfg: RunConfig, world: int, chosen: list[str]) -> None:
    """A CPU run has no memory budget: ZeRO-2 without offload or checkpointing, the preset's micro-batch, and
    engines that stay awake (CPU builds of vLLM have no sleep mode: there is nothing to free)."""
    e = cfg.engine
    if cfg.rollout.enable_sleep is None:
        cfg.rollout.enable_sleep = False
    for k, v in (
        ("zero_stage", 2),
        ("gradient_checkpointing", False),
        ("offload_optimizer", False),
        ("offload_params", False),
    ):
        if getattr(e, k) is None:
            setattr(e, k, v)
    a = cfg.algo
    if a.micro_batch_per_gpu is None:
        fits = _micro_candidates(cfg, world)
        a.micro_batch_per_gpu = fits[0] if fits else 1
        chosen.append(
            f"algo.micro_batch_per_gpu={a.micro_batch_per_gpu} (the largest up to "
            f"{_micro_cap(cfg)} that splits {a.train_batch_samples} samples over {world} rank(s))"
        )
    _fill_rollout_defaults(cfg)


HF_GENERATE_BATCH = 64  # rows per HF generate call where memory does not bind (CPU, small vocabularies)


def _fill_generate_batch(cfg: RunConfig, spec, roles, world, reference, critic, dtype, chosen: list[str]) -> None:
    """rollout.generate_batch for HF generate in the policy ranks: on GPUs the largest power of two up to 64 whose
    generation (KV cache and the kept fp32 logits of every new token) fits beside the chosen training states."""
    ro = cfg.rollout
    if ro.generate_batch is not None:
        return
    if spec.family != "onpolicy" or has_engines(ro.backend) or cfg.hw.nodes * cfg.hw.gpus_per_node == 0:
        ro.generate_batch = HF_GENERATE_BATCH
        return
    if cfg.algo.micro_batch_per_gpu is None or cfg.engine.zero_stage is None:
        ro.generate_batch = 1  # nothing fits anyway; the plan's refusal says why
        return
    rows = _rollout_rows_per_rank(cfg, world)
    micro = cfg.algo.micro_batch_per_gpu
    sized = _with_batches(roles, micro, 1, micro * world, world, [])
    batch = 1
    for b in (HF_GENERATE_BATCH >> k for k in range(HF_GENERATE_BATCH.bit_length() - 1)):  # 64, 32, ..., 2
        trial = replace(cfg, rollout=replace(ro, generate_batch=b))
        _estimates, pools = _memory(trial, spec, sized, world, reference, critic, dtype)
        if all(est.total_gib <= cfg.hw.gpu_memory_gb for est, _members in pools):
            batch = b
            break
    ro.generate_batch = batch
    if batch < min(HF_GENERATE_BATCH, rows):
        chosen.append(
            f"rollout.generate_batch={batch} (HF generate: the largest up to {HF_GENERATE_BATCH} rows whose KV "
            "cache and kept logits fit beside the training states)"
        )


def _rollout_rows_per_rank(cfg: RunConfig, world: int) -> int:
    """Rows of one step's rollout a policy rank generates (at least one)."""
    return max(-(-cfg.algo.prompts_per_step * cfg.algo.samples_per_prompt // max(world, 1)), 1)


def _fill_rollout_defaults(cfg: RunConfig) -> None:
    """Values a run without vLLM never uses, set so that no consumer meets None."""
    ro = cfg.rollout
    if ro.num_engines is None:
        ro.num_engines = 1
    if ro.tensor_parallel_size is None:
        ro.tensor_parallel_size = 1
    if ro.gpu_memory_utilization is None:
        ro.gpu_memory_utilization = 0.5


def _micro_cap(cfg: RunConfig) -> int:
    from rlhf import scale

    _key, preset = _scale_defaults(cfg)
    if preset is not None and preset.micro_batch_per_gpu:
        return preset.micro_batch_per_gpu
    return scale.micro_cap(_seq_len(cfg, get_algo(cfg.algo.name)))


def _micro_candidates(cfg: RunConfig, world: int) -> list[int]:
    """Micro-batches to try, largest first: the given one, else those that divide the batch over the ranks."""
    a = cfg.algo
    if a.micro_batch_per_gpu is not None:
        return [a.micro_batch_per_gpu]
    tbs = a.train_batch_samples
    return [m for m in range(min(_micro_cap(cfg), tbs), 0, -1) if tbs % (m * world) == 0]


def _tp_candidates(cfg: RunConfig) -> list[int]:
    """vLLM tensor-parallel sizes the model's heads and one node's GPUs allow, smallest first."""
    m = cfg.model
    per_node = max(cfg.hw.gpus_per_node, 1)
    return [
        t for t in _divisors(per_node) if m.num_heads % t == 0 and (m.num_kv_heads % t == 0 or t % m.num_kv_heads == 0)
    ]


def _fill_layout(
    cfg: RunConfig, spec: AlgoSpec, total_gpus: int, critic: bool, reference: bool, chosen: list[str]
) -> None:
    """vLLM engines and tensor parallelism, and the GPU split of placement=separate."""
    ro, p = cfg.rollout, cfg.placement
    vllm = spec.family == "onpolicy" and has_engines(ro.backend) and total_gpus > 0
    gpu = cfg.hw.gpu_memory_gb
    for k in ("critic_gpus", "ref_gpus", "reward_gpus"):
        if getattr(p, k) is None and (p.mode != "separate" or spec.family != "onpolicy"):
            setattr(p, k, 0)
    if not vllm:
        if p.rollout_gpus is None:
            p.rollout_gpus = 0
        if p.mode == "separate" and spec.family == "onpolicy":
            _fill_separate_counts(cfg, total_gpus, critic, reference, 0, chosen)
        _fill_rollout_defaults(cfg)
        return
    weights_gib = cfg.model.params_b * 1e9 * 2 / GIB
    separate = p.mode == "separate"
    if ro.tensor_parallel_size is None:
        # Colocated engines share the GPU with training states: their weight shard should take at most a third
        # of it; engines on their own GPUs at most half, so that the rest holds the KV cache.
        share = 0.5 if separate else 1 / 3
        tps = _tp_candidates(cfg) or [1]
        ro.tensor_parallel_size = next((t for t in tps if weights_gib / t <= share * gpu), tps[-1])
        chosen.append(
            f"rollout.tensor_parallel_size={ro.tensor_parallel_size} (the smallest whose weight shard, "
            f"{weights_gib / ro.tensor_parallel_size:.1f} GiB, is at most {share:.2g} of a {gpu:g} GiB GPU)"
        )
    tp = ro.tensor_parallel_size
    if ro.num_engines is None:
        if separate:
            gpus = p.rollout_gpus or max(tp, (total_gpus // 4) // tp * tp)
            ro.num_engines = max(gpus // tp, 1)
            why = "placement.rollout_gpus" if p.rollout_gpus else "a quarter of the GPUs"
        else:
            ro.num_engines = max(total_gpus // tp, 1)
            why = "engines x tensor-parallel cover every GPU (colocated)"
        chosen.append(f"rollout.num_engines={ro.num_engines} ({why})")
    if separate:
        if p.rollout_gpus is None:
            p.rollout_gpus = ro.num_engines * tp
        _fill_separate_counts(cfg, total_gpus, critic, reference, ro.num_engines * tp, chosen)
    elif p.rollout_gpus is None:
        p.rollout_gpus = 0


def _fill_separate_counts(
    cfg: RunConfig, total_gpus: int, critic: bool, reference: bool, rollout_gpus: int, chosen: list[str]
) -> None:
    """placement=separate: the fewest GPUs on which the critic's (and a separate reference's) ZeRO-3 states fit."""
    p = cfg.placement
    budget = cfg.hw.gpu_memory_gb * 0.9 - FRAMEWORK_OVERHEAD_GIB - 2.0

    def fewest(params_b: float, bytes_per_param: float) -> int:
        need = params_b * 1e9 * bytes_per_param / GIB
        k = 1
        while need / k > budget and k < total_gpus:
            k *= 2
        return k

    left = total_gpus - rollout_gpus
    if p.critic_gpus is None:
        if critic:
            # ZeRO-3 with checkpointing: 2 (weights) + 4 (fp32 gradients) + 12 (Adam) bytes per parameter.
            k = min(fewest(_role_shape(cfg, "critic").params_b, 18), max(left // 2, 1))
            p.critic_gpus = k
            chosen.append(
                f"placement.critic_gpus={k} (the fewest on which its ZeRO-3 states, 18 bytes a "
                f"parameter, fit in 90% of a GPU; at most half of the {left} non-rollout GPUs)"
            )
        else:
            p.critic_gpus = 0
    if p.ref_gpus is None:
        if reference and not p.colocate_actor_ref:
            p.ref_gpus = fewest(_role_shape(cfg, "ref").params_b, 2)
            chosen.append(f"placement.ref_gpus={p.ref_gpus} (the fewest that hold its 16-bit weights)")
        else:
            p.ref_gpus = 0
    if p.reward_gpus is None:
        p.reward_gpus = 0


# Engine settings tried when the configuration leaves them unset, fastest first.
_ENGINE_LADDER = (
    ("zero2", dict(zero_stage=2, offload_optimizer=False, offload_params=False)),
    ("zero3", dict(zero_stage=3, offload_optimizer=False, offload_params=False)),
    ("zero2 + CPU Adam", dict(zero_stage=2, offload_optimizer=True, offload_params=False)),
    ("zero3 + CPU Adam", dict(zero_stage=3, offload_optimizer=True, offload_params=False)),
    ("zero3 + CPU Adam + offloaded weights", dict(zero_stage=3, offload_optimizer=True, offload_params=True)),
)


# Without gradient checkpointing the update runs one forward pass less per micro-batch (about a quarter of its
# FLOPs), but holds every layer's activations: worth it only while the micro-batch stays large enough to keep
# the GPU busy. A setting without checkpointing is taken at a micro-batch of at least this many tokens (or the
# largest micro-batch the batch allows), else the ladder goes on to the checkpointed settings.
NO_CHECKPOINT_MIN_TOKENS = 8192


def _engine_candidates(cfg: RunConfig) -> list[tuple[str, dict]]:
    """The ladder restricted to what the configuration fixes (an explicit zero_stage, offload...). Unless
    engine.gradient_checkpointing is set, each setting without offload is tried without checkpointing (see
    NO_CHECKPOINT_MIN_TOKENS) before it is tried with it."""
    e = cfg.engine
    out, seen = [], set()
    ckpts = [e.gradient_checkpointing] if e.gradient_checkpointing is not None else [False, True]
    for _name, values in _ENGINE_LADDER:
        for ckpt in ckpts:
            merged = {k: (getattr(e, k) if getattr(e, k) is not None else v) for k, v in values.items()}
            # DeepSpeed offloads only partitioned states: CPU Adam needs ZeRO >= 1, offloaded weights ZeRO-3.
            if (merged["offload_params"] and merged["zero_stage"] != 3) or (
                merged["offload_optimizer"] and merged["zero_stage"] == 0
            ):
                continue
            # Offload is the slow end of the ladder: it is not worth trading for the recompute.
            if not ckpt and len(ckpts) > 1 and (merged["offload_optimizer"] or merged["offload_params"]):
                continue
            merged["gradient_checkpointing"] = ckpt
            key = tuple(sorted(merged.items()))
            if key in seen:
                continue
            seen.add(key)
            out.append((_engine_name(merged), merged))
    return out


def _min_micro_without_checkpointing(cfg: RunConfig, spec: AlgoSpec, micros: list[int]) -> int:
    """The smallest micro-batch at which the planner takes a setting without checkpointing."""
    seq = max(_seq_len(cfg, spec), 1)
    return min(max(micros), -(-NO_CHECKPOINT_MIN_TOKENS // seq))


def _engine_name(v: dict) -> str:
    name = f"zero{v['zero_stage']}"
    if v["offload_optimizer"]:
        name += " + CPU Adam"
    if v["offload_params"]:
        name += " + offloaded weights"
    return name + ("" if v["gradient_checkpointing"] else " without checkpointing")


def _trial(cfg: RunConfig, engine: dict, micro: int, util: Optional[float]) -> RunConfig:
    rollout = replace(
        cfg.rollout, gpu_memory_utilization=util if util is not None else (cfg.rollout.gpu_memory_utilization or 0.5)
    )
    return replace(
        cfg, engine=replace(cfg.engine, **engine), algo=replace(cfg.algo, micro_batch_per_gpu=micro), rollout=rollout
    )


def _evaluate(cfg, spec, roles, world, reference, critic, dtype) -> tuple[bool, float, str]:
    """(fits, peak GiB of the fullest pool, why not) of one concrete candidate: GPU pools and host memory."""
    hw = cfg.hw
    problems: list[str] = []
    tbs, micro = cfg.algo.train_batch_samples, cfg.algo.micro_batch_per_gpu
    roles = _with_batches(roles, micro, max(tbs // (micro * world), 1), tbs, world, problems)
    estimates, pools = _memory(cfg, spec, roles, world, reference, critic, dtype)
    peak, members = max(((est.total_gib, names) for est, names in pools), key=lambda t: t[0])
    if problems:
        return False, peak, problems[0]
    if peak > hw.gpu_memory_gb:
        return False, peak, f"{'+'.join(members)} needs {peak:.1f} GiB of {hw.gpu_memory_gb:g}"
    host = _host_gib_per_node(cfg, estimates, roles)
    if host > hw.cpu_memory_gb:
        return (
            False,
            peak,
            (
                f"its offloaded states need {host:.0f} GiB of host memory per node, "
                f"hw.cpu_memory_gb={hw.cpu_memory_gb:g}"
            ),
        )
    return True, peak, ""


def _fill_sleep_engine_and_micro(cfg, spec, roles, world, reference, critic, dtype, chosen: list[str]) -> None:
    """rollout.enable_sleep where it is unset, with the engine setting and micro-batch (_fill_engine_and_micro).

    A colocated vLLM engine sleeps while the policy trains (its weights and KV cache freed for the training),
    and says whether staying awake (no sleep, wake and weight reload per step) would keep the training setting.
    With algo.async_rollout it stays awake whenever an awake engine fits: the overlap needs one. Elsewhere there
    is nothing to free: separate engines own their GPUs, HF generate has no engine."""
    ro = cfg.rollout
    if ro.enable_sleep is not None:
        _fill_engine_and_micro(cfg, spec, roles, world, reference, critic, dtype, chosen)
        return
    colocated_engine = spec.family == "onpolicy" and has_engines(ro.backend) and cfg.placement.mode != "separate"
    if not colocated_engine:
        ro.enable_sleep = False
        _fill_engine_and_micro(cfg, spec, roles, world, reference, critic, dtype, chosen)
        return
    tried = {}
    for sleep in (True, False):
        trial = copy.deepcopy(cfg)
        trial.rollout.enable_sleep = sleep
        lines: list[str] = []
        _fill_engine_and_micro(trial, spec, roles, world, reference, critic, dtype, lines)
        fits = not any(line.startswith(_NONE_FITS) for line in lines)
        tried[sleep] = (trial, lines, fits)
    asleep, awake = tried[True], tried[False]

    def setting(trial) -> tuple:
        e = trial.engine
        return (
            e.zero_stage,
            e.offload_optimizer,
            e.offload_params,
            e.gradient_checkpointing,
            trial.algo.micro_batch_per_gpu,
        )

    same = awake[2] and asleep[2] and setting(awake[0]) == setting(asleep[0])
    overlap = bool(getattr(cfg.algo, "async_rollout", False))
    frees = "it frees its memory while the policy trains; "
    if overlap and awake[2]:
        pick, why = awake, "the overlap of algo.async_rollout needs an awake engine, and one fits beside the training"
    elif overlap:
        pick = asleep
        why = "an awake engine does not fit beside the training: generation and training take turns"
    elif same:
        pick = asleep
        why = frees + (
            "rollout.enable_sleep=false would keep it awake with the same training setting and save the sleep, "
            "wake and weight reload of every step"
        )
    elif awake[2]:
        pick = asleep
        why = frees + (
            f"beside an awake engine the training would take {_setting_text(setting(awake[0]))} instead of "
            f"{_setting_text(setting(asleep[0]))}"
        )
    else:
        pick, why = asleep, frees + "an awake engine would not fit beside the training"
    trial, lines, _fits = pick
    for group in ("engine", "algo", "rollout"):
        target, source = getattr(cfg, group), getattr(trial, group)
        for f in dataclasses.fields(source):
            setattr(target, f.name, getattr(source, f.name))
    chosen.extend(lines)
    chosen.append(f"rollout.enable_sleep={str(trial.rollout.enable_sleep).lower()} ({why})")


def _setting_text(setting: tuple) -> str:
    zero, offload_optimizer, offload_params, ckpt, micro = setting
    name = _engine_name(
        dict(
            zero_stage=zero,
            offload_optimizer=offload_optimizer,
            offload_params=offload_params,
            gradient_checkpointing=ckpt,
        )
    )
    return f"{name} at micro-batch {micro}"


def _fill_engine_and_micro(cfg, spec, roles, world, reference, critic, dtype, chosen: list[str]) -> None:
    """The fastest engine setting and the largest micro-batch that fit every pool; the most frugal when none does."""
    e, a, ro = cfg.engine, cfg.algo, cfg.rollout
    engine_auto = any(
        getattr(e, k) is None for k in ("zero_stage", "gradient_checkpointing", "offload_optimizer", "offload_params")
    )
    micro_auto = a.micro_batch_per_gpu is None
    vllm = spec.family == "onpolicy" and has_engines(ro.backend)
    util_auto = vllm and ro.gpu_memory_utilization is None
    if not vllm:
        _fill_rollout_defaults(cfg)
    # No micro-batch dividing the batch: try 1, and the divisibility check reports the sizes that work.
    micros = _micro_candidates(cfg, world) or [1]
    rejected: list[str] = []
    best = None  # (peak, engine name, engine values, micro, vLLM fraction)
    candidates = _engine_candidates(cfg)
    choosing_ckpt = cfg.engine.gradient_checkpointing is None
    for name, values in candidates:
        reason = "no candidate"
        for m in micros:
            if (
                choosing_ckpt
                and not values["gradient_checkpointing"]
                and m < _min_micro_without_checkpointing(cfg, spec, micros)
            ):
                small = f"micro-batch {m} x {_seq_len(cfg, spec)} tokens is too small to skip the recompute"
                reason = small if reason == "no candidate" else f"{reason} (and {small})"
                break
            util = None
            if util_auto:
                util = _auto_fraction(cfg, spec, values, m, roles, world, reference, critic, dtype)
                if isinstance(util, str):
                    reason = util
                    continue
            fits, peak, reason = _evaluate(_trial(cfg, values, m, util), spec, roles, world, reference, critic, dtype)
            if best is None or peak < best[0]:
                best = (peak, name, values, m, util)
            if fits:
                _apply(cfg, values, m, util)
                if engine_auto:
                    why = "; ".join(rejected) if rejected else "the fastest setting that fits"
                    chosen.append(f"engine: {name} ({why})")
                if micro_auto:
                    chosen.append(
                        f"algo.micro_batch_per_gpu={m} (the largest up to {_micro_cap(cfg)} that splits "
                        f"{a.train_batch_samples} samples over {world} rank(s) and fits)"
                    )
                if util_auto:
                    where = (
                        "what the training states leave free on each shared GPU"
                        if cfg.placement.mode != "separate"
                        else "the engines own their GPUs"
                    )
                    chosen.append(f"rollout.gpu_memory_utilization={util:g} ({where})")
                return
        where = "" if "too small to skip" in reason else f" at micro-batch {micros[-1]}"
        rejected.append(f"{name}: {reason}{where}")
        if not engine_auto:
            break
    # Nothing fits: report the fastest checkpointed setting at its smallest micro-batch, with the estimate of
    # each remedy (rlhf/plan.py _oom_advice) and what the planner tried.
    _name, values = next(((n, v) for n, v in candidates if v["gradient_checkpointing"]), candidates[0])
    _apply(cfg, values, micros[-1], None)
    if engine_auto or micro_auto:
        chosen.append(_NONE_FITS + "; ".join(rejected))


_NONE_FITS = "engine: none fits: "


def _apply(cfg: RunConfig, engine: dict, micro: int, util: Optional[float]) -> None:
    for k, v in engine.items():
        if getattr(cfg.engine, k) is None:
            setattr(cfg.engine, k, v)
    if cfg.algo.micro_batch_per_gpu is None:
        cfg.algo.micro_batch_per_gpu = micro
    if cfg.rollout.gpu_memory_utilization is None:
        cfg.rollout.gpu_memory_utilization = util if util is not None else 0.5


def _auto_fraction(cfg, spec, engine: dict, micro: int, roles, world, reference, critic, dtype):
    """vLLM's memory fraction: 0.85 on its own GPUs; colocated, what the training states leave (in steps of 0.05,
    at most 0.9). A string says why the engine would get too little: its weights plus KV cache for a few
    sequences must fit."""
    from rlhf.memory import kv_cache_bytes_per_token

    ro, gpu = cfg.rollout, cfg.hw.gpu_memory_gb
    if cfg.placement.mode == "separate":
        return 0.85
    trial = _trial(cfg, engine, micro, 0.5)
    estimates, _pools = _memory(
        trial, spec, _with_batches(roles, micro, 1, micro * world, world, []), world, reference, critic, dtype
    )
    by_role = {m.role: m for m in estimates}
    train = [by_role[r] for r in ("actor", "ref", "critic") if r in by_role]
    states = sum(m.weights_gib + m.grads_gib + m.optimizer_gib for m in train)
    if not ro.enable_sleep:
        # An awake engine keeps its reservation through training: leave room for the training peak too.
        states += max((m.activations_gib for m in train), default=0.0) + sum(m.other_gib for m in train)
    else:
        states += FRAMEWORK_OVERHEAD_GIB
    frac = math.floor(max(gpu - states, 0.0) / gpu * 20) / 20
    frac = min(frac, 0.9)
    tp = ro.tensor_parallel_size or 1
    shape = _shape(cfg)
    seq = _seq_len(cfg, spec)
    per_engine = max(cfg.algo.prompts_per_step * cfg.algo.samples_per_prompt // max(ro.num_engines or 1, 1), 1)
    need = shape.params * 2 / tp / GIB + 1.0 + kv_cache_bytes_per_token(shape) / tp * seq * min(per_engine, 8) / GIB
    if frac * gpu < need:
        return (
            f"vLLM would get {frac * gpu:.1f} GiB beside {states:.1f} GiB of training states per GPU, less than "
            f"the {need:.1f} GiB its weight shard and KV cache for {min(per_engine, 8)} sequences need"
        )
    return frac


# Usual remedies for a run that does not fit, each as (override text, change to the typed config).
_REMEDIES = (
    (
        "engine=zero3",
        dict(engine=dict(zero_stage=3, gradient_checkpointing=True, offload_optimizer=False, offload_params=False)),
    ),
    (
        "engine=zero3_offload",
        dict(engine=dict(zero_stage=3, gradient_checkpointing=True, offload_optimizer=True, offload_params=True)),
    ),
    (
        "engine.gradient_checkpointing=true algo.micro_batch_per_gpu=1",
        dict(engine=dict(gradient_checkpointing=True), algo=dict(micro_batch_per_gpu=1)),
    ),
    ("model.lora.rank=16", dict(lora=dict(rank=16))),
    (
        "model.lora.rank=16 engine=zero3",
        dict(lora=dict(rank=16), engine=dict(zero_stage=3, gradient_checkpointing=True)),
    ),
    ("model.lora.rank=16 model.lora.load_in_4bit=true (QLoRA)", dict(lora=dict(rank=16, load_in_4bit=True))),
    (
        "model.lora.rank=16 model.lora.load_in_4bit=true engine=zero3",
        dict(lora=dict(rank=16, load_in_4bit=True), engine=dict(zero_stage=3, gradient_checkpointing=True)),
    ),
)


def _with(cfg: RunConfig, change: dict) -> RunConfig:
    engine = replace(cfg.engine, **change.get("engine", {}))
    algo = replace(cfg.algo, **change.get("algo", {}))
    model = replace(cfg.model, lora=replace(cfg.model.lora, **change.get("lora", {})))
    return replace(cfg, engine=engine, algo=algo, model=model)


def _ranks(roles, members, world: int) -> int:
    """Data-parallel ranks of the first trained role in `members` (a critic on its own pool has its own)."""
    for r in roles:
        if r.role in members and r.role == "critic" and r.pool == "critic":
            return r.num_workers
    return world


def _oom_advice(cfg, spec, roles, world, reference, critic, dtype, est: MemoryEstimate, members) -> str:
    """What does not fit, by how much, and the estimate of each usual remedy on the same hardware."""
    hw = cfg.hw
    who = f"role {members[0]} needs" if len(members) == 1 else f"roles {' + '.join(members)} (sharing each GPU) need"
    lines = [
        f"out of GPU memory: {who} about {est.total_gib:.1f} GiB per GPU (weights {est.weights_gib:.1f}, "
        f"grads {est.grads_gib:.1f}, optimizer {est.optimizer_gib:.1f}, activations {est.activations_gib:.1f}, "
        f"framework {est.other_gib:.1f}) but hw={hw.name} has {hw.gpu_memory_gb:g} GiB per GPU "
        f"({cfg.model.name_or_path}, {cfg.model.params_b:g}B params, ZeRO-{cfg.engine.zero_stage} over "
        f"{_ranks(roles, members, world)} rank(s)). Estimated peak per GPU with:"
    ]
    for text, change in _REMEDIES:
        alt = _with(cfg, change)
        if alt == cfg:
            continue
        alt_est, alt_pools = _memory(alt, spec, roles, world, reference, critic, dtype)
        peak = next(p.total_gib for p, names in alt_pools if names == members)
        host = _host_gib_per_node(alt, alt_est, roles)
        verdict = "fits" if peak <= hw.gpu_memory_gb else "too large"
        if peak <= hw.gpu_memory_gb and host > hw.cpu_memory_gb:
            verdict = f"but needs {host:.0f} GiB of host memory per node, hw.cpu_memory_gb={hw.cpu_memory_gb:g}"
        lines.append(f"      {text}: {peak:.1f} GiB ({verdict})")
    lines.append("    or a hw profile with more or larger GPUs")
    return "\n".join(lines)


__all__ = ["Plan", "PlanError", "RolePlan", "resolve_plan", "GIB"]
