"""resolve_plan(config) -> Plan: every derived number computed once, checked, and frozen.

Batch arithmetic (per-GPU micro-batches, accumulation), the Ray actor layout of each role, the precision and
a per-GPU memory estimate (rlhf/memory.py). Bad combinations are all reported together in one PlanError before
anything starts, each naming the config key, its value, and what to change; a configuration that does not fit
in memory comes with the estimate of each usual remedy (ZeRO-3, offload, LoRA, QLoRA) on the same hardware.
"""

from __future__ import annotations

import difflib
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
    inference_memory,
    rollout_memory,
    training_memory,
)


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
        lines = [
            f"algo            {self.algo} ({self.family}, objective {self.objective}, data task {self.task})",
            f"device          {self.device} x {self.total_gpus or 'CPU'}  dtype {self.dtype}  ZeRO-{self.zero_stage}"
            + (f"  ({self.machine})" if self.machine else ""),
            f"tuning          {f'conf/tuning/{self.tuning}.yaml' if self.tuning else 'none'}",
            f"batch           {self.train_batch_samples} samples/step = {self.micro_batch_per_gpu} per GPU "
            f"x {self.world_size} ranks x {self.grad_accum} accumulation; sequences of {self.seq_len} tokens",
        ]
        for r in self.roles:
            if r.trained and r.role != "actor":
                lines.append(
                    f"batch {r.role:<9} {r.train_batch_samples} samples/step = {r.micro_batch_per_gpu} per GPU "
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
    _check_choices(cfg, spec, problems)
    problems += __import__("rlhf.config.validate", fromlist=["_"]).run_control_problems(cfg)  # run control, eval

    hw = cfg.hw
    total_gpus = hw.nodes * hw.gpus_per_node
    device = "cuda" if total_gpus > 0 else "cpu"
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
    roles, actor_gpus = _roles(cfg, spec, total_gpus, reference, critic, problems, notes)
    world = actor_gpus if device == "cuda" else max(hw.cpu_workers, 1)

    micro = algo.micro_batch_per_gpu
    tbs = algo.train_batch_samples
    grad_accum = 0
    if micro < 1 or tbs < 1:
        problems.append(
            f"algo.micro_batch_per_gpu={micro} and algo.train_batch_samples={tbs} must both be >= 1"
        )
    elif tbs % (micro * world):
        problems.append(_batch_problem(tbs, micro, world))
    else:
        grad_accum = tbs // (micro * world)

    rollout_samples = updates = 0
    if onpolicy:
        rollout_samples, updates = _check_rollout(cfg, micro, world, problems)
    if grad_accum:
        roles = _with_batches(roles, micro, grad_accum, tbs, world, problems)

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
    )


# How each rank seeds its generators (rlhf/workers): distinct per role and rank, reproducible from `seed`.
SEED_FORMULA = "seed + role offset + rank (actor, ref, reward, rollout: offset 0; critic: 7919)"
_SEED_OFFSETS = {"critic": 7919}


def _seq_len(cfg: RunConfig, spec: AlgoSpec) -> int:
    if spec.family == "onpolicy":
        return cfg.data.prompt_max_len + cfg.rollout.max_new_tokens
    return cfg.data.max_len


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
    for key, value in (("prompts_per_step", a.prompts_per_step), ("samples_per_prompt", a.samples_per_prompt),
                       ("update_epochs", a.update_epochs)):
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
    _choice(problems, "rollout.backend", cfg.rollout.backend, {"hf", "vllm"})
    _choice(problems, "rollout.sync", cfg.rollout.sync, {"auto", "ipc", "nccl"})
    _choice(problems, "tracking.backend", cfg.tracking.backend, {"mlflow", "none"})
    _choice(problems, "engine.dtype", cfg.engine.dtype, {"auto", "bf16", "fp16", "fp32"})
    _choice(problems, "engine.zero_stage", cfg.engine.zero_stage, {0, 1, 2, 3})
    _choice(problems, "data.bad_rows", cfg.data.bad_rows, {"skip", "error"})
    _choice(problems, "algo.lr_scheduler", cfg.algo.lr_scheduler, {"cosine", "linear", "constant"})
    _choice(problems, "mode", cfg.mode, {"train", "plan"})
    if cfg.engine.offload_params and cfg.engine.zero_stage != 3:
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
        if onpolicy and cfg.rollout.backend == "vllm":
            roles.append(RolePlan("rollout", cfg.rollout.num_engines, 0.0, "cpu"))
        return roles, max(cfg.hw.cpu_workers, 1)

    p = cfg.placement
    ro = cfg.rollout
    vllm = onpolicy and ro.backend == "vllm"
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
        dp_size=world,
        zero_stage=e.zero_stage,
        micro_batch=cfg.algo.micro_batch_per_gpu * pairs,
        seq_len=seq,
        gradient_checkpointing=e.gradient_checkpointing,
        offload_optimizer=e.offload_optimizer,
        offload_params=e.offload_params,
        bytes_per_param=bytes_per_param,
        lora_fraction=lora_fraction,
        base_bytes_per_param=base_bytes,
    )
    by_role = {"actor": training_memory("actor", shape, **common)}
    ref_plan = next((r for r in roles if r.role == "ref"), None)
    if reference:
        own_pool = ref_plan is not None and ref_plan.pool == "ref"
        shards = (ref_plan.num_workers if own_pool else world) if e.zero_stage == 3 else 1
        by_role["ref"] = inference_memory(
            "ref", shape, shards=shards, micro_batch=common["micro_batch"], seq_len=seq,
            bytes_per_param=bytes_per_param, zero3=e.zero_stage == 3,
        )
    if critic:
        # The critic trains over its own GPUs (placement=separate) and has a value head instead of the LM head.
        critic_plan = next((r for r in roles if r.role == "critic"), None)
        critic_dp = critic_plan.num_workers if critic_plan is not None and critic_plan.pool == "critic" else world
        critic_micro = critic_plan.micro_batch_per_gpu if critic_plan is not None else 0
        by_role["critic"] = training_memory(
            "critic", shape,
            **dict(common, dp_size=critic_dp, lora_fraction=1.0, base_bytes_per_param=None, with_lm_head=False,
                   micro_batch=critic_micro or common["micro_batch"]),
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
        shape, gpu_memory_gb=cfg.hw.gpu_memory_gb, gpu_memory_utilization=ro.gpu_memory_utilization,
        tensor_parallel_size=ro.tensor_parallel_size, concurrent_tokens=0,
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


# Usual remedies for a run that does not fit, each as (override text, change to the typed config).
_REMEDIES = (
    ("engine=zero3", dict(engine=dict(zero_stage=3, gradient_checkpointing=True, offload_optimizer=False,
                                      offload_params=False))),
    (
        "engine=zero3_offload",
        dict(engine=dict(zero_stage=3, gradient_checkpointing=True, offload_optimizer=True, offload_params=True)),
    ),
    ("engine.gradient_checkpointing=true algo.micro_batch_per_gpu=1",
     dict(engine=dict(gradient_checkpointing=True), algo=dict(micro_batch_per_gpu=1))),
    ("model.lora.rank=16", dict(lora=dict(rank=16))),
    ("model.lora.rank=16 engine=zero3", dict(lora=dict(rank=16), engine=dict(zero_stage=3, gradient_checkpointing=True))),
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
