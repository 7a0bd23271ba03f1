"""Benchmark of one on-policy RL step with vLLM rollouts, colocated on one GPU, through the real entry point.

For each algorithm (GRPO, PPO) it runs ``rlhf.run``'s ``execute`` with ``rollout=vllm placement=colocated
hw=h100x1`` on a random-init model of Qwen2.5-0.5B's shape (built offline here, bf16, vocabulary 151936, tied
embeddings, with the tiny offline tokenizer whose ids all fit the vocabulary) and fixed-length responses
(``rollout.ignore_eos=true``), and reports the last step's time with its breakdown (generation, log-prob
passes of actor/ref/critic, training, weight sync), tokens/s, peak GPU memory per role process
(torch.cuda.max_memory_allocated) and of the whole GPU (nvidia-smi, polled), and the run's closing
consistency check (vLLM greedy outputs and log-probs after the final weight sync against the trainer's model).

  python benchmarks/rl_step.py                                # GRPO and PPO, 3 steps each, JSON to $OUT or .
  python benchmarks/rl_step.py --algos grpo --steps 3 --prompts 64 --samples 8 --max-new-tokens 512

Extra ``key=value`` arguments after ``--`` are passed to the run as Hydra overrides
(e.g. ``-- rollout.gpu_memory_utilization=0.4 engine=zero3``).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# Qwen2.5-0.5B(-Instruct)'s config.json numbers: 494M parameters with tied embeddings.
QWEN2_5_0_5B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_hidden_layers=24,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    rope_theta=1000000.0,
    rms_norm_eps=1e-6,
    tie_word_embeddings=True,
    use_sliding_window=False,
    hidden_act="silu",
)
# Random init gives near-uniform next-token distributions over 152k tokens, whose greedy choice flips on
# rounding; scaling the (tied) embeddings sharpens the output so the greedy check means something. The input
# side is unaffected: every layer normalizes its input (RMSNorm).
SHARPEN = 8.0


def build_model(out_dir: Path, seed: int = 0) -> Path:
    """Write a random-init Qwen2.5-0.5B-shaped model (bf16) with the tiny offline tokenizer into out_dir."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, Qwen2Config

    from rlhf.models.tiny import tiny_model_dir

    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir("qwen2"))
    if len(tokenizer) > QWEN2_5_0_5B["vocab_size"]:
        raise ValueError(
            f"tokenizer of {len(tokenizer)} ids does not fit the {QWEN2_5_0_5B['vocab_size']}-token vocabulary"
        )
    config = Qwen2Config(
        **QWEN2_5_0_5B,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(SHARPEN)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.rename(out_dir)
    return out_dir


class GpuMemoryPoller:
    """Largest total used GPU memory (MiB, all processes, GPU 0) seen by nvidia-smi while running."""

    def __init__(self, every_s: float = 0.5):
        self.every_s, self.peak_mib, self._stop = every_s, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                ).stdout
                self.peak_mib = max(self.peak_mib, float(out.strip().splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def run_one(algo: str, model_dir: Path, out_dir: Path, args, extra: list[str]) -> dict:
    """One `execute` of `algo`; returns the report row."""
    import ray

    from rlhf.config.preflight import compose_config
    from rlhf.run import execute

    # PPO's GAE takes any number of samples per prompt: both algorithms see the same rollout batch.
    prompts, samples = args.prompts, args.samples
    batch = prompts * samples
    overrides = [
        f"algo={algo}",
        "model=qwen2_5_0_5b",
        f"model.name_or_path={model_dir}",
        "hw=h100x1",
        "rollout=vllm",
        "placement=colocated",
        f"algo.max_steps={args.steps}",
        "algo.epochs=100",
        f"algo.prompts_per_step={prompts}",
        f"algo.samples_per_prompt={samples}",
        f"algo.train_batch_samples={batch}",
        f"algo.micro_batch_per_gpu={args.micro_batch}",
        "rollout.ignore_eos=true",
        f"rollout.max_new_tokens={args.max_new_tokens}",
        "engine.gradient_checkpointing=true",
        "tracking=none",
        f"output_dir={out_dir / algo}",
        *extra,
    ]
    print(f"== {algo}: python -m rlhf.run {' '.join(overrides)}", flush=True)
    t0 = time.time()
    with GpuMemoryPoller() as poller:
        result = execute(compose_config(overrides), progress=False)
    wall = time.time() - t0
    ray.shutdown()  # the next algorithm starts its own roles on a free GPU
    last = result.last
    keys = [
        "timing/step_s",
        "timing/generate_s",
        "timing/generate_engine_s",
        "timing/sleep_wake_s",
        "timing/reward_s",
        "timing/logprobs_s",
        "timing/logprobs_actor_done_s",
        "timing/logprobs_ref_done_s",
        "timing/logprobs_critic_done_s",
        "timing/train_s",
        "timing/train_policy_s",
        "timing/weight_sync_s",
        "perf/tokens_per_s",
        "rollout/logprob_mismatch",
        "rollout/response_len_mean",
    ]
    row = {
        "algo": algo,
        "steps": result.steps,
        "rollout_samples": batch,
        "wall_s": wall,
        **{k: last[k] for k in keys if k in last},
        "generated_tokens_per_s": batch
        * last.get("rollout/response_len_mean", 0.0)
        / max(last.get("timing/generate_engine_s", 0.0), 1e-9),
        **{k: v for k, v in result.eval.items() if k.startswith(("check/", "memory/"))},
        "memory/nvidia_smi_peak_gib": poller.peak_mib / 1024,
        "overrides": overrides,
    }
    return row


def main() -> None:
    import signal

    faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1 <pid>`: stacks of a stuck run
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", default="grpo,ppo")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=64, help="prompts per step (the data set has 160)")
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--work-dir", default=os.environ.get("OUT", "benchmarks/out"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides (after --)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
    work = Path(args.work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(Path(os.environ.get("RLHF_BENCH_MODEL", "/tmp/rlhf-bench/qwen2_5_0_5b_random")))
    rows = []
    for algo in args.algos.split(","):
        rows.append(run_one(algo, model_dir, work, args, args.overrides))
        (work / "rl_step.json").write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {work / 'rl_step.json'}")
    cols = [
        ("step_s", "timing/step_s"),
        ("gen_s", "timing/generate_s"),
        ("vllm_s", "timing/generate_engine_s"),
        ("sleep_s", "timing/sleep_wake_s"),
        ("logp_s", "timing/logprobs_s"),
        ("train_s", "timing/train_s"),
        ("sync_s", "timing/weight_sync_s"),
        ("tok/s", "perf/tokens_per_s"),
        ("gen_tok/s", "generated_tokens_per_s"),
        ("mismatch", "rollout/logprob_mismatch"),
        ("greedy_ok", "check/greedy_agreement"),
        ("lp_maxdiff", "check/logprob_max_abs_diff"),
        ("smi_GiB", "memory/nvidia_smi_peak_gib"),
    ]
    print(" ".join(f"{'algo':<6}") + " ".join(f"{c:>10}" for c, _ in cols))
    for r in rows:
        print(f"{r['algo']:<6}" + " ".join(f"{r.get(k, float('nan')):>10.4g}" for _, k in cols))
    for r in rows:
        mem = {k.split("/", 1)[1]: round(v, 2) for k, v in r.items() if k.startswith("memory/")}
        print(f"{r['algo']} memory GiB: {mem}")


if __name__ == "__main__":
    sys.exit(main())
