"""The RL training pass on its own: one policy rank (no Ray, no rollout engine) trains synthetic rollouts of a
fixed shape under several engine settings, and a plain-torch loop of the same model and loss gives the floor
without DeepSpeed. What it answers: where the update's time goes, and which setting the planner should pick.

  python benchmarks/train_pass.py --model /tmp/rlhf-bench/qwen2_5_0_5b_random --hw h100x1 \\
      --variant base: --variant zero0:engine.zero_stage=0 --variant gc:engine.gradient_checkpointing=true \\
      --plain --profile base

Each --variant is NAME:override,override (project overrides on top of the workload's); the default rows are
workload (a) of ``python -m rlhf.bench`` (512 rows of 128 prompt + 512 response tokens, GRPO, with the engine
settings the planner picks for --hw). Per variant: one log-prob pass, then --repeats timed updates after one
warm-up (each update is one optimizer step over all rows). --profile NAME adds a torch-profiler table of one
update of that variant. The JSON report goes to --results.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

WORKLOAD = [
    "algo=grpo",
    "rollout=hf",
    "algo.prompts_per_step=64",
    "algo.samples_per_prompt=8",
    "algo.train_batch_samples=512",
    "algo.micro_batch_per_gpu=16",
    "algo.kl_coef=0",
    "algo.log_every=1000000",
    "data.prompt_max_len=128",
    "rollout.max_new_tokens=512",
    "engine.gradient_checkpointing=true",
    "tracking=none",
]


def _config(model: str, hw: str, shape: str, overrides: list[str]):
    from omegaconf import OmegaConf

    from rlhf.config.cli import rewrite_argv
    from rlhf.config.preflight import compose_config
    from rlhf.data.sources import resolve_data
    from rlhf.plan import resolve_plan

    args = [*WORKLOAD, f"model={shape}", f"model.name_or_path={model}", f"hw={hw}", *overrides]
    cfg = OmegaConf.to_object(compose_config(rewrite_argv(args)))
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data))
    return cfg, resolve_plan(cfg)


def _rollout(rows: int, prompt: int, response: int, vocab: int, seed: int):
    import torch

    from rlhf.types import RolloutBatch

    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(10, vocab, (rows, prompt + response), generator=g)
    return RolloutBatch(
        sequences=seq,
        attention_mask=torch.ones_like(seq),
        action_mask=torch.ones(rows, response, dtype=torch.bool),
        rollout_logps=torch.zeros(rows, response),
        finish_reason=["length"] * rows,
        prompt_len=prompt,
    )


def _experience(batch, old):
    import torch

    from rlhf.types import Experience

    g = torch.Generator().manual_seed(1)
    adv = torch.randn(len(batch), 1, generator=g).expand_as(old).contiguous() * batch.action_mask
    return Experience(
        sequences=batch.sequences,
        attention_mask=batch.attention_mask,
        action_mask=batch.action_mask,
        old_logps=old,
        advantages=adv,
        returns=adv,
        prompt_len=batch.prompt_len,
    )


def _mfu(args, cfg, seconds: float):
    """Model FLOPs utilisation of one update (rlhf/bench/flops.py: the PaLM convention the harness uses)."""
    from rlhf.bench.flops import mfu, training_flops
    from rlhf.models.arch import from_folder

    peak = getattr(cfg.hw, "peak_tflops", None)
    if not peak:
        return None
    flops = training_flops(from_folder(Path(args.model)), [args.prompt + args.response] * args.rows)
    return mfu(flops, seconds, 1, peak)


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _profile_table(fn, rows: int = 30) -> str:
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        fn()
        _sync()
    key = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    return prof.key_averages().table(sort_by=key, row_limit=rows)


def run_variant(name, overrides, args) -> dict:
    import torch

    from rlhf.engines.dist import free_port
    from rlhf.training.experience import minibatches
    from rlhf.workers.policy import PolicyWorker
    from rlhf.workers.spec import RoleSpec

    rows = [f"algo.train_batch_samples={args.rows}", f"algo.prompts_per_step={max(args.rows // 8, 1)}"]
    cfg, plan = _config(args.model, args.hw, args.shape, [*rows, *overrides])
    spec = RoleSpec(
        algo=cfg.algo,
        model=cfg.model,
        engine=cfg.engine,
        rollout=cfg.rollout,
        plan=plan,
        output_dir=str(Path(args.work_dir) / name),
        total_updates=100,
    )
    w = PolicyWorker(0, 1, spec)
    tic = time.time()
    w.setup("127.0.0.1", free_port())
    out: dict = {"variant": name, "overrides": overrides, "setup_s": time.time() - tic}
    rp = plan.role("actor")
    out["plan"] = {"micro_batch_per_gpu": rp.micro_batch_per_gpu, "grad_accum": rp.grad_accum}
    out["engine"] = {"zero_stage": cfg.engine.zero_stage, "gradient_checkpointing": cfg.engine.gradient_checkpointing}
    vocab = w.engine.module.config.vocab_size
    batch = _rollout(args.rows, args.prompt, args.response, min(vocab, 32000), args.seed)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    w.logps(batch)  # warm-up
    _sync()
    tic = time.time()
    old = w.logps(batch)
    _sync()
    out["logps_s"] = time.time() - tic
    exp = _experience(batch, old)
    minis = minibatches(exp, train_batch_samples=args.rows, update_epochs=1, seed=0)
    times = []
    for i in range(args.repeats + 1):
        _sync()
        tic = time.time()
        stats = w.train(minis, log_entropy=args.entropy)
        _sync()
        if i:
            times.append(time.time() - tic)
    out["train_s"] = sum(times) / len(times)
    out["train_s_all"] = times
    out["policy_loss"] = stats.get("train/policy_loss")
    if torch.cuda.is_available():
        out["peak_alloc_gib"] = torch.cuda.max_memory_allocated() / 2**30
    tokens = args.rows * (args.prompt + args.response)
    out["tokens_per_s"] = tokens / out["train_s"]
    out["mfu"] = _mfu(args, cfg, out["train_s"])
    if name in args.profile:
        small = minibatches(
            exp.select(torch.arange(min(64, args.rows))),
            train_batch_samples=min(64, args.rows),
            update_epochs=1,
            seed=0,
        )
        out["profile"] = _profile_table(lambda: w.train(small, log_entropy=args.entropy))
        print(out["profile"], flush=True)
    w.close()
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    return out


def run_plain(args, gc: bool = True) -> dict:
    """The floor: the HF model in bf16, fused torch AdamW on its bf16 weights (what a plain HF Trainer does
    with bf16 weights), the same micro-batches, log-probs and clipped surrogate, no DeepSpeed."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.algos.policy_loss import POLICY_LOSSES
    from rlhf.training.sequences import response_logps

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype).to(dev)
    if gc:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=dev == "cuda")
    batch = _rollout(args.rows, args.prompt, args.response, min(model.config.vocab_size, 32000), args.seed)
    micro = args.plain_micro
    seq, am = batch.sequences.to(dev), batch.attention_mask.to(dev)
    mask = batch.action_mask.float().to(dev)
    adv = torch.randn(args.rows, 1, device=dev).expand_as(mask).contiguous()
    with torch.no_grad():
        old = torch.cat(
            [
                response_logps(model, seq[i : i + micro], am[i : i + micro], args.prompt)[0]
                for i in range(0, args.rows, micro)
            ]
        )
    loss_fn = POLICY_LOSSES["ppo"]

    def update():
        for i in range(0, args.rows, micro):
            sl = slice(i, i + micro)
            lp = response_logps(model, seq[sl], am[sl], args.prompt)[0]
            loss, _ = loss_fn(
                lp,
                old[sl],
                adv[sl],
                mask[sl],
                clip_low=0.2,
                clip_high=0.2,
                dual_clip=None,
                agg="token_mean",
                num_tokens=float(mask.sum()),
                num_seqs=float(args.rows),
                max_len=float(args.response),
            )
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    times = []
    for i in range(args.repeats + 1):
        _sync()
        tic = time.time()
        update()
        _sync()
        if i:
            times.append(time.time() - tic)
    hw_cfg, _ = _config(args.model, args.hw, args.shape, [f"algo.train_batch_samples={args.rows}"])
    out = {
        "mfu": _mfu(args, hw_cfg, sum(times) / len(times)),
        "variant": f"plain_torch{'_gc' if gc else ''}",
        "train_s": sum(times) / len(times),
        "train_s_all": times,
        "micro": micro,
    }
    if "plain" in args.profile:
        out["profile"] = _profile_table(update)
        print(out["profile"], flush=True)
    torch.cuda.empty_cache() if dev == "cuda" else None
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a model folder (python -m rlhf.bench builds the random shapes)")
    p.add_argument("--shape", default="qwen2_5_0_5b", help="conf/model entry whose settings apply")
    p.add_argument("--hw", default="cpu")
    p.add_argument("--rows", type=int, default=512)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--response", type=int, default=512)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", action="append", default=[], help="NAME:override,override (repeatable)")
    p.add_argument(
        "--no-entropy",
        dest="entropy",
        action="store_false",
        help="updates without the entropy metric (the bench workloads log it every step, algo.log_every=1)",
    )
    p.add_argument("--plain", action="store_true", help="also the plain-torch floor (with and without checkpointing)")
    p.add_argument("--plain-micro", type=int, default=16)
    p.add_argument("--profile", nargs="*", default=[], help="variant names to profile ('plain' for the floor)")
    p.add_argument("--work-dir", default="/tmp/rlhf-train-pass")
    p.add_argument("--results", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)
    variants = args.variant or ["base:"]
    results = []
    for v in variants:
        name, _, rest = v.partition(":")
        overrides = [o for o in rest.split(",") if o]
        print(f"== {name}: {' '.join(overrides) or '(workload defaults)'}", flush=True)
        try:
            r = run_variant(name, overrides, args)
        except Exception as e:  # noqa: BLE001 - every variant is reported
            import traceback

            traceback.print_exc()
            r = {"variant": name, "overrides": overrides, "error": f"{type(e).__name__}: {e}"[:1000]}
        results.append(r)
        print(json.dumps({k: v for k, v in r.items() if k != "profile"}, default=str), flush=True)
    if args.plain:
        for gc in (True, False):
            r = run_plain(args, gc=gc)
            results.append(r)
            print(json.dumps({k: v for k, v in r.items() if k != "profile"}), flush=True)
    dest = Path(args.results)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"train_pass_{args.hw}.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n{'variant':<16} {'train_s':>8} {'logps_s':>8} {'MFU':>6} {'peak GiB':>9}")
    for r in results:
        mfu = r.get("mfu")
        print(
            f"{r['variant']:<16} {r.get('train_s', float('nan')):>8.2f} {r.get('logps_s', float('nan')):>8.2f} "
            f"{(mfu or 0) * 100:>5.1f}% {r.get('peak_alloc_gib', float('nan')):>9.2f} {r.get('error', '')[:80]}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
