"""Benchmark harness: named workloads (conf/bench/*.yaml) through the real entry point, after warm-up steps.

  python -m rlhf.bench tiny                                 # CPU: the tiny default run, 2 warm-up + 3 steps
  python -m rlhf.bench grpo_qwen0_5b grpo_qwen0_5b_async    # one GPU: workload (a), synchronous and overlapped
  python -m rlhf.bench tta_smollm2 --target 0.5             # (e): held-out accuracy against wall time
  python -m rlhf.bench --list
  make bench BENCH="tiny"  [ARGS="-- algo.async_rollout=true"]

Per step it reports the wall time and its breakdown (generation, idle, log-prob passes per role, training,
weight sync, overlap), tokens/s per GPU, MFU against hw.peak_tflops (rlhf/bench/flops.py), generated tokens/s,
start-up phases, and peak memory per role and for the GPU. Each workload's JSON goes to --results
(default $OUT when set, else benchmarks/results/) as <workload>-<device>.json. Extra ``key=value`` arguments
after ``--`` are Hydra overrides of every workload's run. On a Slurm node: ``srun python -m rlhf.bench ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    from rlhf.bench.workloads import load, names

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("workloads", nargs="*", help="names of conf/bench/*.yaml")
    parser.add_argument("--list", action="store_true", help="list the workloads and exit")
    parser.add_argument("--results", default=os.environ.get("OUT") or "benchmarks/results")
    parser.add_argument("--work-dir", default="/tmp/rlhf-bench/runs")
    parser.add_argument("--target", type=float, default=None, help="accuracy workloads: time to reach it")
    parser.add_argument(
        "--time-limit",
        type=float,
        default=None,
        help="seconds each run may take; a run stopped by it (or by SIGTERM) still reports its recorded steps",
    )
    args, extra = parser.parse_known_args(argv)
    extra = [x for x in extra if x != "--"]
    if args.list or not args.workloads:
        for n in names():
            w = load(n)
            print(f"{n:<24} [{w.device}] {w.description}")
        return 0
    workloads = [load(n) for n in args.workloads]  # every name checked before anything runs
    import torch

    from rlhf.bench.runner import run_workload, table

    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    for w in workloads:
        if w.device == "cuda" and not torch.cuda.is_available():
            raise SystemExit(f"workload {w.name} needs a GPU (conf/bench/{w.name}.yaml device: cuda); try `tiny`")
        report = run_workload(w, Path(args.work_dir), extra, target=args.target, time_limit_s=args.time_limit)
        tag = re.sub(r"[^a-z0-9]+", "_", report["device"].lower()).strip("_")
        path = results / f"{w.name}-{tag}.json"
        path.write_text(json.dumps(report, indent=2))
        print(table(report))
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
