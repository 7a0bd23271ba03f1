"""The peer baseline: TRL's GRPOTrainer (vLLM colocated) on the same workloads as `python -m rlhf.bench`.

  python benchmarks/trl_grpo.py a --steps 4            # (a) random-init Qwen2.5-0.5B shape, 64 x 8, 128 + 512 tokens
  python benchmarks/trl_grpo.py e --max-time 300       # (e) SmolLM2-135M-Instruct on the default zero-rule task

TRL (>= 1.16, with vLLM) must be installed; nothing of TRL is copied here. The workloads mirror
conf/bench/grpo_qwen0_5b.yaml and conf/bench/tta_smollm2.yaml: the same model folders (rlhf/bench/models.py),
prompts, sampling (temperature 1, fixed response length for (a)), one optimizer step per rollout batch, no KL,
the same learning rate, and for (e) the same rewards (the project's numeric_format + math_exact_match, called
as TRL reward functions) and the same held-out greedy accuracy on 100 prompts every 10 steps, its time counted
in the wall clock as the project's is. Per step it records wall time and, where TRL reports them, generation
and training times. The JSON report goes to --results (default $OUT, else benchmarks/results/).
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
T_PROCESS = time.time()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _config(cls, **wanted):
    """The config with the fields this TRL version has; the others are reported, not silently dropped."""
    names = {f.name for f in dataclasses.fields(cls)}
    missing = sorted(k for k in wanted if k not in names)
    if missing:
        print(f"trl_grpo: this TRL has no {missing}; left out", flush=True)
    return cls(**{k: v for k, v in wanted.items() if k in names})


def _texts(completions) -> list[str]:
    return [c[-1]["content"] if isinstance(c, list) else c for c in completions]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["a", "e"])
    p.add_argument("--steps", type=int, default=4, help="(a): steps to run (the first is the warm-up)")
    p.add_argument("--max-time", type=float, default=300.0, help="(e): training wall-time budget, seconds")
    p.add_argument("--max-steps", type=int, default=120)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--results", default=os.environ.get("OUT") or str(REPO / "benchmarks" / "results"))
    p.add_argument("--work-dir", default="/tmp/rlhf-bench/trl")
    args = p.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from rlhf.bench.models import resolve_model as _resolve

    prep = {"s": 0.0}

    def resolve_model(spec: str):
        # Building the model folder is the harness's preparation, not the run's start-up (as in rlhf.bench).
        tic = time.time()
        try:
            return _resolve(spec)
        finally:
            prep["s"] += time.time() - tic

    if args.workload == "a":
        model_dir = resolve_model("shape:qwen2_5_0_5b")
        rows = _jsonl(REPO / "benchmarks" / "data" / "prompts128" / "train.jsonl")
        train = Dataset.from_list([{"prompt": r["prompt"]} for r in rows])
        held_out: list[dict] = []
        prompts, gens, new_tokens, lr, steps = 64, 8, 512, 1e-6, args.steps

        def reward(prompts, completions, **kw):  # any dense reward: (a) measures time, not learning
            return [float(len(t) % 7) for t in _texts(completions)]

        rewards = [reward]
        extra = dict(
            generation_kwargs={"ignore_eos": True, "min_tokens": new_tokens},
            # As the project's workload since the planner stopped forcing it: 16 x 640 tokens fit without.
            gradient_checkpointing=False,
            max_steps=steps,
        )
    else:
        from rlhf.rewards.functions import math_exact_match, numeric_format

        model_dir = resolve_model("smollm2")
        data = REPO / "rlhf" / "assets" / "data" / "zero"
        chat = lambda r: [{"role": "user", "content": r["prompt"]}]  # noqa: E731
        train = Dataset.from_list([{"prompt": chat(r), "answer": r["answer"]} for r in _jsonl(data / "train.jsonl")])
        held_out = _jsonl(data / "test.jsonl")[:100]
        prompts, gens, new_tokens, lr = 32, 8, 128, 1e-6

        def fmt(prompts, completions, **kw):
            return numeric_format(prompts, _texts(completions))

        def exact(prompts, completions, answer, **kw):
            return math_exact_match(prompts, _texts(completions), answer=answer)

        rewards = [fmt, exact]
        extra = dict(max_steps=args.max_steps)

    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    batch = prompts * gens
    per_device = 32 if args.workload == "e" else 16
    cfg = _config(
        GRPOConfig,
        output_dir=str(Path(args.work_dir) / args.workload),
        use_vllm=True,
        vllm_mode="colocate",
        vllm_gpu_memory_utilization=0.35,
        vllm_enable_sleep_mode=False,
        num_generations=gens,
        per_device_train_batch_size=per_device,
        gradient_accumulation_steps=batch // per_device,
        generation_batch_size=batch,
        max_completion_length=new_tokens,
        num_iterations=1,
        beta=0.0,
        learning_rate=lr,
        lr_scheduler_type="constant",
        temperature=1.0,
        bf16=True,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=args.seed,
        num_train_epochs=100,
        **extra,
    )

    class Clock(TrainerCallback):
        """Per-step wall time, the first step's start, and (e) held-out greedy accuracy every 10 steps."""

        def __init__(self):
            self.t0, self.steps, self.evals, self.first_step_at, self.tic = time.time(), [], [], None, None
            self.stop_at = self.t0 + args.max_time if args.workload == "e" else None

        def on_step_begin(self, a, state, control, **kw):
            self.tic = time.time()
            if self.first_step_at is None:
                self.first_step_at = self.tic

        def on_step_end(self, a, state, control, model=None, **kw):
            self.steps.append({"step": state.global_step, "step_s": time.time() - self.tic})
            if held_out and state.global_step % 10 == 0:
                self.evaluate(model, state.global_step)
            if self.stop_at and time.time() > self.stop_at:
                control.should_training_stop = True

        def on_log(self, a, state, control, logs=None, **kw):
            if logs and self.steps:
                self.steps[-1].update({k: v for k, v in logs.items() if isinstance(v, (int, float))})

        @torch.no_grad()
        def evaluate(self, model, step):
            from rlhf.rewards.functions import math_exact_match

            was = model.training
            model.eval()
            texts = [
                tok.apply_chat_template(
                    [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
                )
                for r in held_out
            ]
            tok.padding_side = "left"
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            out = model.generate(**enc, max_new_tokens=new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            answers = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            acc = sum(math_exact_match(texts, answers, answer=[r["answer"] for r in held_out])) / len(held_out)
            now = time.time()
            # elapsed_s: from the training clock's start; since_launch_s: from the process start (less the
            # harness's model preparation), the origin of the project's run/elapsed_s.
            since_launch = now - T_PROCESS - prep["s"]
            self.evals.append(
                {"step": step, "elapsed_s": now - self.t0, "since_launch_s": since_launch, "eval/accuracy": acc}
            )
            print(f"trl_grpo: step {step} held-out accuracy {acc:.3f} at {time.time() - self.t0:.1f}s", flush=True)
            model.train(was)

    model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.bfloat16)
    clock = Clock()
    trainer = GRPOTrainer(
        model=model, reward_funcs=rewards, args=cfg, train_dataset=train, processing_class=tok, callbacks=[clock]
    )
    if held_out:
        clock.evaluate(trainer.model, 0)
    trainer.train()
    if held_out and (not clock.evals or clock.evals[-1]["step"] != len(clock.steps)):
        clock.evaluate(trainer.model, len(clock.steps))
    import trl

    measured = clock.steps[1:] if args.workload == "a" else clock.steps
    report = {
        "peer": f"trl {trl.__version__}",
        "workload": args.workload,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "launch_to_first_step_s": (clock.first_step_at or time.time()) - T_PROCESS - prep["s"],
        "launch_to_first_step_raw_s": (clock.first_step_at or time.time()) - T_PROCESS,
        "bench_prep_s": prep["s"],
        "steps_run": len(clock.steps),
        "mean_step_s": sum(s["step_s"] for s in measured) / max(len(measured), 1),
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0,
        "steps": clock.steps,
        "evals": clock.evals,
        "wall_s": time.time() - clock.t0,
    }
    out = Path(args.results)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"trl_{args.workload}.json"
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: v for k, v in report.items() if k not in ("steps",)}, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
