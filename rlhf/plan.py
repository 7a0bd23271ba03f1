"""resolve_plan(config) -> Plan: every derived number computed once, checked, and frozen.

Batch arithmetic (per-GPU micro-batches, accumulation), the Ray actor layout of each role, the precision and
a per-GPU memory estimate. Bad combinations are all reported together in one PlanError before anything
starts, each naming the config key, its value, and what to change.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from rlhf.algos.registry import AlgoSpec, get_algo
from rlhf.config.run import RunConfig
from rlhf.memory import GIB, MemoryEstimate, ModelShape, inference_memory, rollout_memory, training_memory


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

    def role(self, name: str) -> Optional[RolePlan]:
        return next((r for r in self.roles if r.role == name), None)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["memory"] = [dict(asdict(m), total_gib=m.total_gib) for m in self.memory]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def table(self) -> str:
        lines = [
            f"algo            {self.algo} ({self.family}, objective {self.objective}, data task {self.task})",
            f"device          {self.device} x {self.total_gpus or 'CPU'}  dtype {self.dtype}  ZeRO-{self.zero_stage}",
            f"batch           {self.train_batch_samples} samples/step = {self.micro_batch_per_gpu} per GPU "
            f"x {self.world_size} ranks x {self.grad_accum} accumulation",
        ]
        if self.family == "onpolicy":
            lines.append(
                f"rollout         {self.rollout_samples} samples/step -> {self.updates_per_step} optimizer "
                "updates per step"
            )
        lines.append("roles           " + "; ".join(_role_line(r) for r in self.roles))
        if self.memory:
            lines.append(f"memory (GiB per GPU, budget {self.gpu_memory_gb:.1f})")
            lines.append("  role        weights  grads  optim  activ  other  total  host")
            for m in self.memory:
                lines.append(
                    f"  {m.role:<10} {m.weights_gib:8.2f} {m.grads_gib:6.2f} {m.optimizer_gib:6.2f} "
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
    if value not in allowed:
        problems.append(f"{key}={value!r} is not one of {sorted(allowed)}")


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
    )


def resolve_plan(cfg: RunConfig) -> Plan:
    """Check the configuration and compute the plan; raises PlanError listing every problem found."""
    problems: list[str] = []
    try:
        spec = get_algo(cfg.algo.name)
    except ValueError as e:
        raise PlanError([str(e)]) from None
    algo = cfg.algo
    _check_choices(cfg, spec, problems)

    hw = cfg.hw
    total_gpus = hw.nodes * hw.gpus_per_node
    device = "cuda" if total_gpus > 0 else "cpu"
    dtype = cfg.engine.dtype
    if dtype == "auto":
        dtype = "bf16" if (device == "cuda" and hw.bf16) else "fp32"
    if device == "cpu" and dtype in ("bf16", "fp16"):
        problems.append(f"engine.dtype={dtype} on hw={hw.name}: CPU training runs in fp32; use engine.dtype=auto")

    onpolicy = spec.family == "onpolicy"
    reference = spec.reference or (onpolicy and algo.kl_coef > 0)
    critic = onpolicy and algo.advantage == "gae"
    roles, actor_gpus = _roles(cfg, spec, total_gpus, reference, critic, problems)
    world = actor_gpus if device == "cuda" else max(hw.cpu_workers, 1)

    micro = algo.micro_batch_per_gpu
    tbs = algo.train_batch_samples
    grad_accum = 0
    if micro < 1 or tbs < 1:
        problems.append("algo.micro_batch_per_gpu and algo.train_batch_samples must be >= 1")
    elif tbs % (micro * world):
        ok = sorted({micro * world * k for k in (max(tbs // (micro * world), 1), tbs // (micro * world) + 1)})
        problems.append(
            f"algo.train_batch_samples={tbs} is not divisible by algo.micro_batch_per_gpu={micro} x "
            f"{world} data-parallel ranks = {micro * world}; use algo.train_batch_samples in {ok} or change "
            "algo.micro_batch_per_gpu"
        )
    else:
        grad_accum = tbs // (micro * world)

    rollout_samples = updates = 0
    if onpolicy:
        rollout_samples = algo.prompts_per_step * algo.samples_per_prompt
        if algo.advantage in _group_estimators() and algo.samples_per_prompt < 2:
            problems.append(
                f"algo.advantage={algo.advantage} compares samples of the same prompt: set "
                f"algo.samples_per_prompt >= 2 (got {algo.samples_per_prompt})"
            )
        if tbs and rollout_samples % tbs:
            problems.append(
                f"algo.prompts_per_step x algo.samples_per_prompt = {rollout_samples} rollout samples is not "
                f"divisible by algo.train_batch_samples={tbs}; each rollout batch must split into whole "
                "optimizer steps"
            )
        else:
            updates = rollout_samples // tbs * algo.update_epochs if tbs else 0
        if algo.dual_clip is not None and algo.dual_clip <= 1:
            problems.append(f"algo.dual_clip={algo.dual_clip} must be > 1 (or null to disable)")

    memory: tuple[MemoryEstimate, ...] = ()
    if device == "cuda":
        memory = _memory(cfg, spec, roles, world, reference, critic)
        for m in memory:
            if m.total_gib > hw.gpu_memory_gb:
                problems.append(_oom_advice(cfg, m))

    if problems:
        raise PlanError(problems)
    notes = []
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
    )


def _group_estimators() -> set[str]:
    from rlhf.algos.advantages import GROUP_ESTIMATORS

    return set(GROUP_ESTIMATORS)


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
        problems.append("engine.offload_params=true needs engine.zero_stage=3")
    if not cfg.data.sources:
        problems.append("data.sources is empty: pick a data set with data=<option> or add data.sources.<name>.path")
    for name, src in cfg.data.sources.items():
        if src.weight <= 0:
            problems.append(f"data.sources.{name}.weight={src.weight} must be > 0")
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
            problems.append("reward.sources is empty: pick reward=<option> (numeric, math, model, remote)")
        for name, src in cfg.reward.sources.items():
            _choice(problems, f"reward.sources.{name}.kind", src.kind, {"function", "model", "remote"})
            if src.kind in ("function", "model") and not src.path:
                problems.append(f"reward.sources.{name}.path is required for kind={src.kind}")
            if src.kind == "remote" and not src.url:
                problems.append(f"reward.sources.{name}.url is required for kind=remote")
        _choice(problems, "reward.combine", cfg.reward.combine, {"weighted", "sum", "mean", "min", "product"})


def _roles(cfg, spec, total_gpus, reference, critic, problems) -> tuple[list[RolePlan], int]:
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
            roles.append(RolePlan("critic", max(cfg.hw.cpu_workers, 1), 0.0, "cpu"))
        for n in reward_models:
            roles.append(RolePlan(f"reward.{n}", 1, 0.0, "cpu"))
        if onpolicy and cfg.rollout.backend == "vllm":
            roles.append(RolePlan("rollout", cfg.rollout.num_engines, 0.0, "cpu"))
        return roles, max(cfg.hw.cpu_workers, 1)

    p = cfg.placement
    ro = cfg.rollout
    vllm = onpolicy and ro.backend == "vllm"
    engine_gpus = ro.num_engines * ro.tensor_parallel_size if vllm else 0
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
                    f"= {engine_gpus} must equal the {total_gpus} GPUs of hw={cfg.hw.name}"
                )
            roles.append(RolePlan("rollout", ro.num_engines, share * ro.tensor_parallel_size, "shared"))
        return roles, total_gpus

    # Separate placement: each pool its own GPUs.
    if vllm and p.rollout_gpus and p.rollout_gpus != engine_gpus:
        problems.append(
            f"placement.rollout_gpus={p.rollout_gpus} but rollout.num_engines x rollout.tensor_parallel_size = "
            f"{engine_gpus}; make them equal"
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


def _memory(cfg, spec, roles, world, reference, critic) -> tuple[MemoryEstimate, ...]:
    shape = _shape(cfg)
    e = cfg.engine
    lora = cfg.model.lora
    lora_fraction = 1.0
    base_bytes = None
    if lora.rank > 0:
        # LoRA on the attention projections: 2 * r * (h + h) per projection per layer, roughly.
        lora_params = cfg.model.num_layers * len(lora.target_modules) * 2 * lora.rank * cfg.model.hidden_size
        lora_fraction = min(lora_params / shape.params, 1.0)
        base_bytes = 0.56 if lora.load_in_4bit else None
    if spec.family == "onpolicy":
        seq = cfg.data.prompt_max_len + cfg.rollout.max_new_tokens
    else:
        seq = cfg.data.max_len
    pairs = 2 if spec.task == "pair" else 1
    common = dict(
        dp_size=world,
        zero_stage=e.zero_stage,
        micro_batch=cfg.algo.micro_batch_per_gpu * pairs,
        seq_len=seq,
        gradient_checkpointing=e.gradient_checkpointing,
        offload_optimizer=e.offload_optimizer,
        offload_params=e.offload_params,
        lora_fraction=lora_fraction,
        base_bytes_per_param=base_bytes,
    )
    out = [training_memory("actor", shape, **common)]
    shards = world if e.zero_stage == 3 else 1
    if reference:
        out.append(inference_memory("ref", shape, shards=shards, micro_batch=common["micro_batch"], seq_len=seq))
    if critic:
        out.append(training_memory("critic", shape, **dict(common, lora_fraction=1.0, base_bytes_per_param=None)))
    rollout = next((r for r in roles if r.role == "rollout"), None)
    if rollout is not None:
        concurrent = cfg.algo.prompts_per_step * cfg.algo.samples_per_prompt * seq
        est, _cap = rollout_memory(
            shape,
            gpu_memory_gb=cfg.hw.gpu_memory_gb,
            gpu_memory_utilization=cfg.rollout.gpu_memory_utilization,
            tensor_parallel_size=cfg.rollout.tensor_parallel_size,
            concurrent_tokens=concurrent,
        )
        out.append(est)
    if cfg.placement.mode == "colocated" or spec.family != "onpolicy":
        # Roles sharing a GPU add up; a sleeping vLLM engine frees its share while training runs.
        train_side = [m for m in out if m.role != "rollout"]
        combined = MemoryEstimate(
            "gpu (all)",
            sum(m.weights_gib for m in train_side),
            sum(m.grads_gib for m in train_side),
            sum(m.optimizer_gib for m in train_side),
            max(m.activations_gib for m in train_side),
            max(m.other_gib for m in train_side),
            sum(m.host_gib for m in train_side),
        )
        out.append(combined)
    return tuple(out)


def _oom_advice(cfg: RunConfig, m: MemoryEstimate) -> str:
    hw = cfg.hw
    tips = []
    if cfg.engine.zero_stage < 3:
        tips.append("engine=zero3")
    if not cfg.engine.offload_optimizer:
        tips.append("engine=zero3_offload (optimizer and weights on the host)")
    if not cfg.engine.gradient_checkpointing:
        tips.append("engine.gradient_checkpointing=true")
    if cfg.algo.micro_batch_per_gpu > 1:
        tips.append("a smaller algo.micro_batch_per_gpu")
    if cfg.model.lora.rank == 0:
        tips.append("LoRA (model.lora.rank=16) or QLoRA (+ model.lora.load_in_4bit=true)")
    tips.append("a hw profile with more or larger GPUs")
    return (
        f"role {m.role} needs about {m.total_gib:.1f} GiB per GPU (weights {m.weights_gib:.1f}, grads "
        f"{m.grads_gib:.1f}, optimizer {m.optimizer_gib:.1f}, activations {m.activations_gib:.1f}) but "
        f"hw={hw.name} has {hw.gpu_memory_gb:.0f} GiB per GPU ({cfg.model.name_or_path}, "
        f"{cfg.model.params_b:g}B params). To fit, try: " + "; ".join(tips)
    )


__all__ = ["Plan", "PlanError", "RolePlan", "resolve_plan", "GIB"]
