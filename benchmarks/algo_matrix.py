"""Every algorithm end to end, a few steps each, on a model folder of one's own and data in the published formats
of the public sets, with no tuning file: what a new user's first commands do on a machine.

  python benchmarks/algo_matrix.py --model /tmp/smol --hw h200x1              # every case
  python benchmarks/algo_matrix.py --model /tmp/smol --hw cpu --only dpo_hh sft_alpaca --steps 2
  python benchmarks/algo_matrix.py --list

It writes small data sets of a verifiable addition task in the layouts the hubs publish (Anthropic/hh-rlhf
JSONL, HuggingFaceH4/ultrafeedback_binarized parquet splits, tatsu-lab/alpaca JSON, openai/gsm8k parquet
splits, ShareGPT JSON, trl-lib/kto-mix JSONL) and runs each case through the real entry point
(`rlhf.run`'s `execute`, as `python -m rlhf.run <overrides>` would), one after another in this process, with
`tracking=none`. Per case it prints ok/FAILED, the wall time, steps and the final evaluation, and writes
the table as JSON to --results (default $OUT, else benchmarks/results/). A failure is reported with its
error and the next case runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def write_public_sets(root: Path, n: int = 320, seed: int = 0) -> dict[str, Path]:
    """An addition task (`What is 12 plus 30?` -> 42) in each public layout; returns name -> path."""
    import pandas as pd

    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for _ in range(n):
        a, b = rng.randint(1, 60), rng.randint(1, 60)
        rows.append((f"What is {a} plus {b}?", a + b, a + b + rng.choice((-10, -2, -1, 1, 2, 10))))
    split = int(n * 0.85)
    paths = {}

    def jsonl(name, items):
        path = root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in items))
        return path

    paths["hh"] = jsonl(
        "hh-rlhf.jsonl",
        [
            {
                "chosen": f"\n\nHuman: {q}\n\nAssistant: The answer is {good}.",
                "rejected": f"\n\nHuman: {q}\n\nAssistant: The answer is {bad}.",
            }
            for q, good, bad in rows
        ],
    )
    uf = root / "ultrafeedback_binarized" / "data"
    uf.mkdir(parents=True, exist_ok=True)

    def msgs(q, answer):
        return [{"content": q, "role": "user"}, {"content": f"It is {answer}.", "role": "assistant"}]

    ufrows = [
        {
            "prompt": q,
            "prompt_id": f"{i:064x}",
            "chosen": msgs(q, good),
            "rejected": msgs(q, bad),
            "messages": msgs(q, good),
            "score_chosen": 8.0,
            "score_rejected": 3.0,
        }
        for i, (q, good, bad) in enumerate(rows)
    ]
    pd.DataFrame(ufrows[:split]).to_parquet(uf / "train_prefs-00000-of-00001.parquet")
    pd.DataFrame(ufrows[split:]).to_parquet(uf / "test_prefs-00000-of-00001.parquet")
    paths["ultrafeedback"] = uf.parent
    paths["alpaca"] = root / "alpaca_data.json"
    paths["alpaca"].write_text(
        json.dumps([{"instruction": q, "input": "", "output": f"The answer is {good}."} for q, good, _ in rows])
    )
    gsm = root / "gsm8k" / "main"
    gsm.mkdir(parents=True, exist_ok=True)
    grows = [
        {
            "question": f"Tom has {a - 3} apples and buys 3 more. How many apples does he have?",
            "answer": f"He has {a - 3} + 3 = <<{a - 3}+3={a}>>{a} apples.\n#### {a}",
        }
        for _, a, _ in rows
    ]
    pd.DataFrame(grows[:split]).to_parquet(gsm / "train-00000-of-00001.parquet")
    pd.DataFrame(grows[split:]).to_parquet(gsm / "test-00000-of-00001.parquet")
    paths["gsm8k"] = gsm.parent
    paths["sharegpt"] = root / "sharegpt.json"
    paths["sharegpt"].write_text(
        json.dumps(
            [
                {"id": str(i), "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": f"{good}."}]}
                for i, (q, good, _) in enumerate(rows)
            ]
        )
    )
    paths["kto"] = jsonl(
        "kto-mix.jsonl",
        [
            {
                "prompt": [{"role": "user", "content": q}],
                "completion": [{"role": "assistant", "content": f"It is {good if i % 2 else bad}."}],
                "label": bool(i % 2),
            }
            for i, (q, good, bad) in enumerate(rows)
        ],
    )
    return paths


def cases(model: str, d: dict[str, Path], steps: int, vllm: bool) -> dict[str, list[str]]:
    """name -> overrides. RL cases generate with vLLM where asked (GPU), else HF generate."""
    rollout = ["rollout=vllm"] if vllm else []
    small = ["algo.train_batch_samples=32"]
    rl = [
        *rollout,
        "algo.prompts_per_step=16",
        "algo.samples_per_prompt=4",
        "algo.train_batch_samples=64",
        "rollout.max_new_tokens=96",
        "reward=math",
        "eval.max_prompts=32",
    ]
    m = f"model.name_or_path={model}"
    uf = ["data.split=train_prefs", "data.eval_split=test_prefs"]
    return {
        "sft_alpaca": ["algo=sft", m, f"data.train={d['alpaca']}", *small],
        "sft_sharegpt": ["algo=sft", m, f"data.train={d['sharegpt']}", *small],
        "dpo_hh": ["algo=dpo", m, f"data.train={d['hh']}", *small],
        "dpo_ultrafeedback": ["algo=dpo", m, f"data.train={d['ultrafeedback']}", *uf, *small],
        "ipo_hh": ["algo=ipo", m, f"data.train={d['hh']}", *small],
        "kto_mix": ["algo=kto", m, f"data.train={d['kto']}", *small],
        "rm_ultrafeedback": ["algo=rm", m, f"data.train={d['ultrafeedback']}", *uf, *small],
        "grpo_gsm8k": ["algo=grpo", m, f"data.train=json@{d['gsm8k']}", *rl],
        "gspo_gsm8k": ["algo=gspo", m, f"data.train=json@{d['gsm8k']}", *rl],
        "ppo_gsm8k": ["algo=ppo", m, f"data.train=json@{d['gsm8k']}", *rl],
        "rloo_gsm8k": ["algo=rloo", m, f"data.train=json@{d['gsm8k']}", *rl],
        "prm": ["algo=prm", m, *small],
        "kd": ["algo=kd", m, f"algo.teacher.name_or_path={model}", f"data.train={d['alpaca']}", *small],
        "csft": ["algo=csft", m, *small],
        "rejection_sampling": ["algo=rejection_sampling", m, "algo.rounds=1", *rollout],
        "iterative_dpo": ["algo=iterative_dpo", m, "algo.iterations=1", *rollout, *small],
        "moe_sft": ["algo=sft", "model=tiny_moe", *small],
        "moe_dpo": ["algo=dpo", "model=tiny_moe", *small],
        "moe_grpo": [
            "algo=grpo",
            "model=tiny_moe",
            *rollout,
            "algo.prompts_per_step=16",
            "algo.samples_per_prompt=4",
            "rollout.max_new_tokens=960",
        ],
        "qlora_sft": ["algo=sft", m, "model.lora.rank=16", "model.lora.load_in_4bit=true", f"data.train={d['alpaca']}"],
        "qlora_dpo": ["algo=dpo", m, "model.lora.rank=16", "model.lora.load_in_4bit=true", f"data.train={d['hh']}"],
        "qlora_grpo": [
            "algo=grpo",
            m,
            "model.lora.rank=16",
            "model.lora.load_in_4bit=true",
            f"data.train=json@{d['gsm8k']}",
            *[x for x in rl if x != "rollout=vllm"],
        ],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=os.environ.get("RLHF_SMOL_DIR", "/tmp/smol"), help="a model folder")
    p.add_argument("--hw", default="cpu")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None)
    p.add_argument("--skip", nargs="*", default=[])
    p.add_argument("--list", action="store_true")
    p.add_argument("--work-dir", default="/tmp/rlhf-matrix")
    p.add_argument("--results", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results"))
    p.add_argument("extra", nargs="*", help="overrides for every case")
    args = p.parse_args(argv)
    work = Path(args.work_dir)
    data = write_public_sets(work / "data")
    import torch

    table = cases(args.model, data, args.steps, vllm=torch.cuda.is_available())
    if args.list:
        for k, v in table.items():
            print(f"{k:<20} python -m rlhf.run {' '.join(v)}")
        return 0
    unknown = [n for n in (args.only or []) + args.skip if n not in table]
    if unknown:
        raise SystemExit(f"unknown case(s) {unknown}; --list shows them")
    import dataclasses

    import ray
    from omegaconf import OmegaConf

    from rlhf.bench.runner import GpuMemoryPoller
    from rlhf.config.cli import rewrite_argv
    from rlhf.config.preflight import compose_config
    from rlhf.data.sources import resolve_data
    from rlhf.plan import resolve_plan
    from rlhf.run import execute

    results = []
    for name, overrides in table.items():
        if (args.only and name not in args.only) or name in args.skip:
            continue
        out = work / "runs" / name
        full = [
            *overrides,
            f"hw={args.hw}",
            f"algo.max_steps={args.steps}",
            "tracking=none",
            f"output_dir={out}",
            *args.extra,
        ]
        print(f"== {name}: python -m rlhf.run {' '.join(full)}", flush=True)
        tic = time.time()
        row = {"case": name, "overrides": full}
        try:
            import shutil

            shutil.rmtree(out, ignore_errors=True)
            dcfg = compose_config(rewrite_argv(full))
            cfg = OmegaConf.to_object(dcfg)
            plan = resolve_plan(dataclasses.replace(cfg, data=resolve_data(cfg.data)))
            # The planner's per-GPU estimate (its largest pool) beside the whole GPU's measured peak.
            row["planned_gib"] = round(max((m.total_gib for m in plan.memory), default=0.0), 2)
            row["plan"] = {
                "chosen": list(plan.chosen),
                "memory": [(m.role, round(m.total_gib, 2)) for m in plan.memory],
            }
            with GpuMemoryPoller() as poller:
                result = execute(dcfg, progress=False)
            row["gpu_peak_gib"] = round(poller.peak_mib / 1024, 2)
            row.update(ok=True, steps=result.steps, eval={k: v for k, v in result.eval.items() if "/" in k})
        except BaseException as e:  # noqa: BLE001 - every case is reported, the next one runs
            if isinstance(e, KeyboardInterrupt):
                raise
            row.update(ok=False, error=f"{type(e).__name__}: {e}"[:2000], trace=traceback.format_exc()[-3000:])
            print(row["trace"], flush=True)
        finally:
            if ray.is_initialized():
                ray.shutdown()
        row["wall_s"] = round(time.time() - tic, 1)
        results.append(row)
        print(f"== {name}: {'ok' if row['ok'] else 'FAILED'} in {row['wall_s']}s", flush=True)
    dest = Path(args.results)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / f"algo_matrix_{args.hw}.json").write_text(json.dumps(results, indent=1, default=str))
    print("\ncase                 result   wall_s  steps  planned/measured GiB  eval")
    for r in results:
        ev = {k: round(v, 3) for k, v in (r.get("eval") or {}).items() if isinstance(v, float)}
        shown = {k: v for k, v in ev.items() if k.startswith("eval/") and ("accuracy" in k or "loss" in k)}
        print(
            f"{r['case']:<20} {'ok' if r['ok'] else 'FAILED':<8} {r['wall_s']:>6} {r.get('steps', '-'):>6}  "
            f"{r.get('planned_gib', '-')}/{r.get('gpu_peak_gib', '-'):<14} {shown or r.get('error', '')[:150]}"
        )
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
