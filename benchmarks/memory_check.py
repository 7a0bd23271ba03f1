"""Planner vs measurement: peak GPU memory of real training steps next to rlhf.plan's estimate.

For each model preset and role, the planner's per-GPU estimate for the same configuration (composed with
rlhf.config.preflight.compose_config, planned with rlhf.plan.resolve_plan) is set beside
torch.cuda.max_memory_allocated over a few optimizer steps of the real engine (rlhf.engines.deepspeed
TrainEngine) on a random-init model of the preset's architecture, built offline from the preset's numbers.
Roles: sft (rlhf.training.objectives.sft_objective), dpo (dpo_objective; the reference model shares the GPU,
as in the planner's actor+ref row), grpo (the actor's update: response log-probs and the clipped policy loss).

The planner's total includes FRAMEWORK_OVERHEAD_GIB for the CUDA context, NCCL and fragmentation, which
max_memory_allocated does not see: the relative error compares the allocated peak with the estimate minus
that overhead, and the reserved peak is reported beside it.

  python benchmarks/memory_check.py --dry                                  # planner side only, any machine
  python benchmarks/memory_check.py --out memory_check.json                # one GPU (qwen2_5_0_5b, qwen2_5_1_5b)
  python benchmarks/memory_check.py --presets qwen2_5_0_5b --roles sft --micro-batch 8 --seq-len 2048 --zero 3
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rlhf.memory import FRAMEWORK_OVERHEAD_GIB, GIB  # noqa: E402

ROLE_ALGO = {"sft": "sft", "dpo": "dpo", "grpo": "grpo"}


@dataclass
class Case:
    preset: str
    role: str
    micro_batch: int
    seq_len: int
    zero_stage: int
    checkpointing: bool
    # Planner side.
    estimate_row: str = ""
    estimate_gib: float = 0.0
    estimate_no_overhead_gib: float = 0.0
    breakdown: dict = field(default_factory=dict)
    # Measured side (None in --dry mode or when the run failed).
    allocated_gib: float | None = None
    reserved_gib: float | None = None
    rel_error: float | None = None
    step_s: float | None = None
    params_b_built: float | None = None
    error: str | None = None


def overrides(preset: str, role: str, micro: int, seq: int, zero: int, checkpointing: bool, hw: str) -> list[str]:
    """Command-line overrides that describe this case to the planner (no tuning file: every number explicit)."""
    ov = [
        f"algo={ROLE_ALGO[role]}",
        f"model={preset}",
        f"hw={hw}",
        "tracking=none",
        "~tuning",
        f"engine.zero_stage={zero}",
        f"engine.gradient_checkpointing={str(checkpointing).lower()}",
        f"algo.micro_batch_per_gpu={micro}",
        f"algo.train_batch_samples={micro}",
    ]
    if role == "grpo":
        # Rows of prompt (seq/4) + response (3 seq/4); two samples a prompt, so a rollout = 2 micro-batches.
        prompt = seq // 4
        ov += [
            f"data.prompt_max_len={prompt}",
            f"rollout.max_new_tokens={seq - prompt}",
            f"algo.prompts_per_step={micro}",
            "algo.samples_per_prompt=2",
            "algo.kl_coef=0",
        ]
    else:
        ov += [f"data.max_len={seq}"]
    return ov


def plan_case(case: Case, hw: str):
    """Fill the planner side of `case`; returns the typed RunConfig."""
    from omegaconf import OmegaConf

    from rlhf.config.preflight import compose_config
    from rlhf.plan import resolve_plan

    cfg = OmegaConf.to_object(
        compose_config(
            overrides(case.preset, case.role, case.micro_batch, case.seq_len, case.zero_stage, case.checkpointing, hw)
        )
    )
    plan = resolve_plan(cfg)
    rows = {m.role: m for m in plan.memory}
    # DPO's reference lives in the actor's process and GPU: compare with the joint row.
    est = rows.get("actor+ref", rows["actor"]) if case.role == "dpo" else rows["actor"]
    case.estimate_row = est.role
    case.estimate_gib = est.total_gib
    case.estimate_no_overhead_gib = est.total_gib - FRAMEWORK_OVERHEAD_GIB
    case.breakdown = {
        "weights": est.weights_gib,
        "grads": est.grads_gib,
        "optimizer": est.optimizer_gib,
        "activations": est.activations_gib,
        "other": est.other_gib,
    }
    return cfg


def build_model(model_cfg, device: str):
    """A random-init causal LM with the preset's architecture, in bf16, built on `device` (nothing downloaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from rlhf.models.loading import attn_implementation

    kw = dict(
        hidden_size=model_cfg.hidden_size,
        num_hidden_layers=model_cfg.num_layers,
        num_attention_heads=model_cfg.num_heads,
        num_key_value_heads=model_cfg.num_kv_heads,
        intermediate_size=model_cfg.intermediate_size,
        vocab_size=model_cfg.vocab_size,
        max_position_embeddings=model_cfg.max_position_embeddings,
        tie_word_embeddings=model_cfg.tie_word_embeddings,
    )
    if model_cfg.model_type == "mixtral":
        kw.update(num_local_experts=model_cfg.num_experts, num_experts_per_tok=model_cfg.experts_per_token)
    config = AutoConfig.for_model(model_cfg.model_type, **kw)
    config._attn_implementation = attn_implementation(model_cfg.attn_implementation, device)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model


def measure_case(case: Case, cfg, steps: int) -> None:
    """Run `steps` optimizer steps of the case's role on GPU 0 and fill the measured side."""
    import torch

    from rlhf.engines.deepspeed import TrainEngine, build_frozen
    from rlhf.engines.dist import free_port, init_distributed

    init_distributed(0, 1, "127.0.0.1", int(os.environ.get("MASTER_PORT") or free_port()), "cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    model = build_model(cfg.model, "cuda")
    case.params_b_built = sum(p.numel() for p in model.parameters()) / 1e9
    engine = TrainEngine(
        model,
        train=cfg.algo,
        engine=cfg.engine,
        micro_batch=case.micro_batch,
        grad_accum=1,
        world_size=1,
        dtype="bf16",
        total_steps=steps,
    )
    ref = None
    if case.role == "dpo":
        ref = build_frozen(
            build_model(cfg.model, "cuda"), engine=cfg.engine, world_size=1, dtype="bf16", micro_batch=case.micro_batch
        )
    engine.train()
    gen = torch.Generator(device="cuda").manual_seed(0)
    times = []
    for _ in range(steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = _role_loss(case, cfg, engine, ref, gen)
        engine.backward(loss)
        engine.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    case.allocated_gib = (torch.cuda.max_memory_allocated() - base) / GIB
    case.reserved_gib = torch.cuda.max_memory_reserved() / GIB
    case.rel_error = (case.estimate_no_overhead_gib - case.allocated_gib) / case.allocated_gib
    case.step_s = min(times)


def _role_loss(case: Case, cfg, engine, ref, gen):
    """One micro-batch's loss through the project's own objective for the role, on random tokens."""
    import torch

    from rlhf.training.objectives import StepCounts, dpo_objective, sft_objective

    vocab, b, t = cfg.model.vocab_size, case.micro_batch, case.seq_len
    if case.role == "grpo":
        from rlhf.algos.policy_loss import ppo_policy_loss
        from rlhf.training.sequences import response_logps

        prompt = cfg.data.prompt_max_len
        seqs = torch.randint(0, vocab, (b, t), device="cuda", generator=gen)
        mask = torch.ones(b, t, dtype=torch.long, device="cuda")
        logp, _, _ = response_logps(engine, seqs, mask, prompt)
        action = torch.ones_like(logp)
        adv = torch.randn(logp.shape, device="cuda", generator=gen)
        loss, _ = ppo_policy_loss(logp, logp.detach(), adv, action, agg=cfg.algo.loss_agg)
        return loss
    rows = 2 * b if case.role == "dpo" else b
    batch = {
        "input_ids": torch.randint(0, vocab, (rows, t), device="cuda", generator=gen),
        "attention_mask": torch.ones(rows, t, dtype=torch.long, device="cuda"),
        "loss_mask": torch.ones(rows, t, dtype=torch.long, device="cuda"),
    }
    counts = StepCounts(tokens=float(rows * t), samples=float(b))
    if case.role == "dpo":
        loss, _ = dpo_objective(engine, batch, counts, ref_model=ref, algo=cfg.algo)
    else:
        loss, _ = sft_objective(engine, batch, counts)
    return loss


def _measure_in_subprocess(case: Case, steps: int, hw: str) -> None:
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        spec, result = Path(tmp) / "case.json", Path(tmp) / "result.json"
        spec.write_text(json.dumps({"case": case.__dict__, "steps": steps, "hw": hw}))
        proc = subprocess.run(
            [sys.executable, __file__, "--one-case", str(spec), "--out", str(result)], capture_output=True, text=True
        )
        if result.exists():
            case.__dict__.update(json.loads(result.read_text()))
        else:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
            case.error = tail[0][:300]


def _one_case(spec_path: str, out: str) -> int:
    """Child process: measure one case and write its fields as JSON."""
    spec = json.loads(Path(spec_path).read_text())
    case = Case(**spec["case"])
    cfg = plan_case(case, spec["hw"])
    try:
        measure_case(case, cfg, spec["steps"])
    except Exception as e:  # noqa: BLE001 - out of memory and the like are results, reported in the table
        case.error = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    Path(out).write_text(json.dumps(case.__dict__))
    return 0


def table(cases: list[Case]) -> str:
    head = (
        f"{'preset':<14} {'role':<5} {'mb x seq':>10} {'ZeRO':>4} {'ckpt':>4} {'row':<10} {'plan':>7} "
        f"{'plan-ovh':>8} {'alloc':>7} {'reserv':>7} {'rel.err':>8} {'step s':>7}"
    )
    lines = [head, "-" * len(head)]
    for c in cases:

        def f(x, spec):
            return format(x, spec) if x is not None else "-".rjust(int(spec.split(".")[0]) if "." in spec else 1)

        lines.append(
            f"{c.preset:<14} {c.role:<5} {f'{c.micro_batch}x{c.seq_len}':>10} {c.zero_stage:>4} "
            f"{'on' if c.checkpointing else 'off':>4} {c.estimate_row:<10} {c.estimate_gib:7.2f} "
            f"{c.estimate_no_overhead_gib:8.2f} {f(c.allocated_gib, '7.2f')} {f(c.reserved_gib, '7.2f')} "
            f"{f(c.rel_error, '+8.1%')} {f(c.step_s, '7.2f')}"
        )
        if c.error:
            lines.append(f"    failed: {c.error}")
    lines.append(
        "GiB per GPU. plan-ovh = planner total minus the framework overhead "
        f"({FRAMEWORK_OVERHEAD_GIB} GiB); rel.err = (plan-ovh - alloc) / alloc, > 0: the planner is safe."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="qwen2_5_0_5b,qwen2_5_1_5b", help="conf/model options, comma-separated")
    ap.add_argument("--roles", default="sft,dpo,grpo", help="sft, dpo, grpo (the actor's update)")
    ap.add_argument("--micro-batch", type=int, default=4, help="rows per micro-batch (pairs for dpo)")
    ap.add_argument("--seq-len", type=int, default=1024, help="tokens per row (grpo: prompt + response)")
    ap.add_argument("--zero", default="2,3", help="ZeRO stages to run, comma-separated")
    ap.add_argument("--checkpointing", default="on", choices=["on", "off", "both"])
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per case (the first allocates Adam)")
    ap.add_argument("--hw", default="h100x1", help="conf/hw profile the planner plans for")
    ap.add_argument("--dry", action="store_true", help="planner side only (no GPU, no model)")
    ap.add_argument("--out", default="memory_check.json", help="JSON file of every case")
    ap.add_argument("--one-case", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one_case:
        return _one_case(args.one_case, args.out)

    ckpt = {"on": [True], "off": [False], "both": [False, True]}[args.checkpointing]
    cases = [
        Case(p, r, args.micro_batch, args.seq_len, int(z), c)
        for p in args.presets.split(",")
        for r in args.roles.split(",")
        for z in args.zero.split(",")
        for c in ckpt
    ]
    unknown = sorted({c.role for c in cases} - set(ROLE_ALGO))
    if unknown:
        ap.error(f"--roles: unknown {unknown}; choose from {sorted(ROLE_ALGO)}")
    if not args.dry:
        import torch

        if not torch.cuda.is_available():
            ap.error("no CUDA GPU visible: run with --dry for the planner side only")
    for case in cases:
        plan_case(case, args.hw)
        if args.dry:
            continue
        # A fresh process per case: DeepSpeed engines keep GPU memory alive after they go out of scope.
        _measure_in_subprocess(case, args.steps, args.hw)
        print(table([case]).splitlines()[2], flush=True)
    print(table(cases))
    meta = {"hw": args.hw, "dry": args.dry, "steps": args.steps}
    if not args.dry:
        import torch

        meta.update(
            gpu=torch.cuda.get_device_name(0),
            torch=torch.__version__,
            gpu_total_gib=torch.cuda.get_device_properties(0).total_memory / GIB,
        )
    Path(args.out).write_text(json.dumps({"meta": meta, "cases": [c.__dict__ for c in cases]}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
