"""Standalone vLLM on a workload's generation alone: the ceiling for the in-loop generation figure.

  python benchmarks/vllm_standalone.py a                  # (a): Qwen2.5-0.5B shape, 64 prompts x 8, 512 new tokens
  python benchmarks/vllm_standalone.py a --gpu-memory-utilization 0.5 --repeats 3

The same model folder and prompts as `python -m rlhf.bench grpo_qwen0_5b` (conf/bench/grpo_qwen0_5b.yaml),
sampled at temperature 1 with exactly --new-tokens per response, with the project's engine arguments (sleep
mode on, token ids and the sampled token's processed log-prob back, no detokenization); one warm-up generate, then --repeats timed ones. Run it in the same device session as the
bench, so that `perf/generate_tokens_per_s` / this script's tokens/s is the in-loop share of the ceiling.
The JSON report goes to --results (default $OUT, else benchmarks/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _prompts(n: int) -> list[str]:
    rows = (REPO / "benchmarks" / "data" / "prompts128" / "train.jsonl").read_text().splitlines()
    return [json.loads(r)["prompt"] for r in rows if r.strip()][:n]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["a"])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--new-tokens", type=int, default=512)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5, help="the plan's value for (a)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-compile", action="store_true", help="as rollout.compile=false")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--model", default=None, help="a model folder (default: the workload's)")
    p.add_argument("--results", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results"))
    args = p.parse_args(argv)

    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    from rlhf.bench.models import resolve_model
    from rlhf.engines.vllm_engine import _engine_arg_exists, _sampling_param_exists, compilation_without_compile

    model = args.model or str(resolve_model("shape:qwen2_5_0_5b"))
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    device = "cpu" if current_platform.is_cpu() else current_platform.device_type
    # The project's engine arguments (rlhf/engines/vllm_engine.py), so that only the loop around it differs.
    options: dict = {"compilation_config": compilation_without_compile(device)} if args.no_compile else {}
    if _engine_arg_exists("logprobs_mode"):
        options["logprobs_mode"] = "processed_logprobs"
    t0 = time.time()
    llm = LLM(
        model=model,
        dtype="auto",
        gpu_memory_utilization=args.gpu_memory_utilization,
        enable_sleep_mode=current_platform.is_sleep_mode_available(),
        max_model_len=args.max_model_len,
        seed=0,
        **options,
    )
    start_s = time.time() - t0
    tokenizer = llm.get_tokenizer()
    prompts = [{"prompt_token_ids": tokenizer(t)["input_ids"][:128]} for t in _prompts(args.prompts)]
    params = SamplingParams(
        n=args.samples,
        temperature=1.0,
        max_tokens=args.new_tokens,
        min_tokens=args.new_tokens,
        ignore_eos=True,
        logprobs=0,
        detokenize=False,
        seed=0,
        **({"flat_logprobs": True} if _sampling_param_exists("flat_logprobs") else {}),
    )
    llm.generate(prompts, params, use_tqdm=False)  # warm-up: CUDA graphs, caches
    times, tokens = [], 0
    for _ in range(args.repeats):
        tic = time.time()
        out = llm.generate(prompts, params, use_tqdm=False)
        times.append(time.time() - tic)
        tokens = sum(len(c.token_ids) for o in out for c in o.outputs)
    mean = sum(times) / len(times)
    report = {
        "workload": f"{args.workload} generation, standalone vLLM",
        "device": _device_name(),
        "model": model,
        "prompts": args.prompts,
        "samples": args.samples,
        "new_tokens": args.new_tokens,
        "gpu_memory_utilization": args.gpu_memory_utilization,
        "compile": not args.no_compile,
        "engine_start_s": start_s,
        "generate_s": times,
        "generated_tokens": tokens,
        "tokens_per_s": tokens / mean,
    }
    out_dir = Path(args.results)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"vllm_standalone_{args.workload}-{_slug(report['device'])}.json"
    path.write_text(json.dumps(report, indent=2))
    print(
        f"standalone vLLM ({report['device']}): {tokens} tokens in {mean:.2f} s = {tokens / mean:.4g} tokens/s "
        f"(engine start {start_s:.1f} s); wrote {path}"
    )
    return 0


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")


if __name__ == "__main__":
    raise SystemExit(main())
