"""Run one workload through the real entry point and turn its records into a report.

The run writes output_dir/metrics.jsonl (rlhf/controllers/onpolicy.py): a start-up record, one record per step
(timing/*, perf/*, rollout/*) and one per evaluation. The report keeps the steps after the warm-up, their
means, the start-up breakdown, peak memory per role (torch's counters, from the run) and for the whole GPU
(nvidia-smi, polled), and for ``report: accuracy`` the held-out accuracy against wall time.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator

from rlhf.bench.workloads import Workload

# Per-step figures the report keeps (those a run logs; missing ones are left out).
STEP_KEYS = (
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
    "timing/idle_s",
    "timing/overlap_s",
    "perf/tokens_per_s",
    "perf/tokens_per_s_per_gpu",
    "perf/generate_tokens_per_s",
    "perf/train_tflop",
    "perf/logprobs_tflop",
    "perf/mfu",
    "perf/mfu_logprobs",
    "rollout/staleness",
    "rollout/is_ratio_mean",
    "rollout/logprob_mismatch",
    "rollout/response_len_mean",
    "rollout/reward_mean",
)


class BenchInterrupted(Exception):
    """The run was stopped from outside (SIGTERM, e.g. `timeout`) or ran past the harness's --time-limit."""


@contextlib.contextmanager
def interruptible(limit_s: float | None) -> Iterator[None]:
    """SIGTERM, and SIGALRM after ``limit_s`` seconds, raise BenchInterrupted in the main thread: the run's own
    cleanup (its roles and engines shut down) runs, and the harness still reports the steps recorded so far.
    Outside the main thread (no signal handlers there) the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame):
        why = f"--time-limit={limit_s:g}s reached" if signum == signal.SIGALRM else "stopped by SIGTERM"
        raise BenchInterrupted(why)

    old_term = signal.signal(signal.SIGTERM, stop)
    old_alarm = signal.signal(signal.SIGALRM, stop)
    if limit_s:
        signal.setitimer(signal.ITIMER_REAL, limit_s)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old_alarm)
        signal.signal(signal.SIGTERM, old_term)


class GpuMemoryPoller:
    """Largest total used GPU memory (MiB, all processes, GPU 0) seen by nvidia-smi while running; 0 without
    nvidia-smi."""

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
                if shutil.which("nvidia-smi") is None:
                    return
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def overrides_for(w: Workload, out: Path, extra: list[str], model_dir: Path | None) -> list[str]:
    """The run's Hydra overrides: the workload's, its step count (report: step), no tracker, its output folder,
    the built model, then the command line's (which win)."""
    args = list(w.overrides)
    if w.report == "step":
        # A one-step off-policy run's last step has no next step to generate beside its update: one more step
        # runs, and the summary leaves it out (``summarize``).
        extra_step = 1 if generates_ahead([*args, *extra]) else 0
        args.append(f"algo.max_steps={w.warmup_steps + w.measure_steps + extra_step}")
    if model_dir is not None:
        args.append(f"model.name_or_path={model_dir}")
    return [*args, "tracking=none", f"output_dir={out}", *extra]


def generates_ahead(overrides: list[str]) -> bool:
    """Whether the overrides switch on ``algo.async_rollout`` (the last setting wins)."""
    value = "false"
    for o in overrides:
        key, _, v = o.partition("=")
        if key.lstrip("+~") == "algo.async_rollout":
            value = v.strip().lower()
    return value in ("true", "1", "yes")


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def steps_recorded(records: list[dict]) -> list[dict]:
    return [r for r in records if "timing/step_s" in r]


def summarize(w: Workload, records: list[dict]) -> dict:
    """The report's body from metrics.jsonl records: per measured step, their means, start-up, evaluations."""
    steps = steps_recorded(records)
    # The measured steps only: not a one-step off-policy run's extra last step (``overrides_for``).
    measured = (
        steps[w.warmup_steps : w.warmup_steps + w.measure_steps] if w.report == "step" else steps[w.warmup_steps :]
    )
    per_step = [{"step": int(r["step"]), **{k: r[k] for k in STEP_KEYS if k in r}} for r in measured]
    keys = sorted({k for r in per_step for k in r if k != "step"})
    mean = {k: sum(r[k] for r in per_step if k in r) / max(sum(k in r for r in per_step), 1) for k in keys}
    startup = next((r for r in records if any(k.startswith("startup/") for k in r)), {})
    evals = [
        {
            "step": int(r["step"]),
            "elapsed_s": r["run/elapsed_s"],
            **{k: v for k, v in r.items() if k.startswith("eval/")},
        }
        for r in records
        if any(k.startswith("eval/") for k in r)
    ]
    return {
        "measured_steps": len(per_step),
        "warmup_steps": min(w.warmup_steps, len(steps)),
        "mean": mean,
        "steps": per_step,
        "startup": {k: v for k, v in startup.items() if k.startswith("startup/")},
        "evals": evals,
    }


def time_to_accuracy(evals: list[dict], target: float) -> float | None:
    """Wall seconds (from the driver's start) of the first evaluation whose held-out accuracy reaches target."""
    for e in evals:
        if e.get("eval/accuracy", -1.0) >= target:
            return e["elapsed_s"]
    return None


def offline_estimate(cfg, plan, last: dict) -> dict:
    """SFT/DPO-like runs keep no per-step records: their last step's time, and FLOPs counted as if every packed
    row were full (plan.seq_len tokens), so MFU is an upper estimate. DPO counts chosen and rejected rows and
    the reference model's forward."""
    from rlhf.bench.flops import forward_flops, mfu, training_flops
    from rlhf.models.arch import find_arch

    step_s = float(last.get("timing/step_s", 0.0))
    rows = plan.train_batch_samples * (2 if plan.reference else 1)
    lengths = [plan.seq_len] * rows
    arch = find_arch(cfg.model.name_or_path)
    flops = training_flops(arch, lengths) + (forward_flops(arch, lengths) if plan.reference else 0.0)
    gpus = max(plan.total_gpus, 1)
    out = {
        "timing/step_s": step_s,
        "perf/tokens_per_s_per_gpu_full_rows": rows * plan.seq_len / max(step_s, 1e-9) / gpus,
        "perf/train_tflop_full_rows": flops / 1e12,
    }
    if cfg.hw.peak_tflops > 0:
        out["perf/mfu_full_rows"] = mfu(flops, step_s, gpus, cfg.hw.peak_tflops)
    return out


def run_workload(
    w: Workload, work: Path, extra: list[str], target: float | None = None, time_limit_s: float | None = None
) -> dict:
    """One workload end to end; returns its report (JSON-ready). A run stopped by SIGTERM or ``time_limit_s``
    (seconds from the run's start) still reports what it recorded, with ``interrupted`` saying why."""
    import dataclasses

    import ray
    from omegaconf import OmegaConf

    from rlhf.bench.models import resolve_model
    from rlhf.config.preflight import compose_config
    from rlhf.data.sources import resolve_data
    from rlhf.plan import resolve_plan
    from rlhf.run import execute

    t_prep = time.time()
    model_dir = resolve_model(w.model)
    out = work / w.name
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resumed one
    overrides = overrides_for(w, out, extra, model_dir)
    print(f"== {w.name}: python -m rlhf.run {' '.join(overrides)}", flush=True)
    dcfg = compose_config(overrides)
    cfg = OmegaConf.to_object(dcfg)
    plan = resolve_plan(dataclasses.replace(cfg, data=resolve_data(cfg.data)))
    t0 = time.time()
    # Building the model folder and the harness's own compose and plan are not part of a run's start-up: a
    # user's `python -m rlhf.run` starts from a model folder that exists.
    prep_s = t0 - t_prep
    result, interrupted = None, None
    with GpuMemoryPoller() as poller:
        try:
            with interruptible(time_limit_s):
                result = execute(dcfg, progress=False)
        except BenchInterrupted as e:
            interrupted = str(e)
            print(f"== {w.name}: {interrupted}; reporting the steps recorded so far", flush=True)
    wall = time.time() - t0
    records = read_records(out / "metrics.jsonl")
    ray.shutdown()  # the next workload starts its own roles on a free GPU
    final = result.eval if result is not None else {}
    report = {
        "workload": w.name,
        "description": w.description,
        "overrides": overrides,
        "algo": plan.algo,
        "device": _device_name(),
        "gpus": plan.total_gpus,
        "peak_tflops": cfg.hw.peak_tflops,
        "wall_s": wall,
        "steps_run": result.steps if result is not None else len(steps_recorded(records)),
        **summarize(w, records),
        "memory": {k: v for k, v in final.items() if k.startswith("memory/")},
        "check": {k: v for k, v in final.items() if k.startswith("check/")},
        "final_eval": {k: v for k, v in final.items() if k.startswith("eval/")},
    }
    if interrupted:
        report["interrupted"] = interrupted
    report["memory"]["memory/nvidia_smi_peak_gib"] = poller.peak_mib / 1024
    report["startup"] = without_prep(report.get("startup") or {}, prep_s)
    if not report["steps"] and result is not None:
        report["mean"] = offline_estimate(cfg, plan, result.last)
    if w.report == "accuracy" and target is not None:
        report["time_to_accuracy_s"] = time_to_accuracy(report["evals"], target)
        report["target_accuracy"] = target
    return report


def without_prep(startup: dict, prep_s: float) -> dict:
    """The run's start-up figures less the harness's preparation (model folder, its compose and plan), which
    ran in the same process before the run: kept as startup/bench_prep_s, the raw figures as *_raw_s."""
    out = dict(startup)
    out["startup/bench_prep_s"] = prep_s
    for key in ("startup/before_loop_s", "startup/launch_to_first_step_s"):
        if key in out:
            out[key.removesuffix("_s") + "_raw_s"] = out[key]
            out[key] = max(out[key] - prep_s, 0.0)
    return out


def _device_name() -> str:
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return "cpu"


def table(report: dict) -> str:
    """A few lines: the measured means, start-up and memory."""
    m = report["mean"]
    cols = [
        ("step_s", "timing/step_s"),
        ("gen_s", "timing/generate_s"),
        ("engine_s", "timing/generate_engine_s"),
        ("logp_s", "timing/logprobs_s"),
        ("train_s", "timing/train_s"),
        ("sync_s", "timing/weight_sync_s"),
        ("idle_s", "timing/idle_s"),
        ("overlap_s", "timing/overlap_s"),
        ("tok/s/gpu", "perf/tokens_per_s_per_gpu"),
        ("gen_tok/s", "perf/generate_tokens_per_s"),
        ("mfu", "perf/mfu"),
    ]
    present = [(c, k) for c, k in cols if k in m]
    lines = [
        f"{report['workload']} on {report['device']}: {report['measured_steps']} measured step(s) after "
        f"{report['warmup_steps']} warm-up, wall {report['wall_s']:.1f}s"
        + (f" (interrupted: {report['interrupted']})" if report.get("interrupted") else ""),
        "  " + " ".join(f"{c:>10}" for c, _ in present),
        "  " + " ".join(f"{m[k]:>10.4g}" for _, k in present),
    ]
    if report["startup"]:
        s = report["startup"]
        lines.append("  startup " + ", ".join(f"{k.split('/', 1)[1]}={v:.1f}" for k, v in s.items()))
    mem = {k.split("/", 1)[1]: round(v, 2) for k, v in report["memory"].items() if v}
    if mem:
        lines.append(f"  memory GiB {mem}")
    for e in report["evals"]:
        if "eval/accuracy" in e:
            lines.append(f"  eval at {e['elapsed_s']:.1f}s (step {e['step']}): accuracy {e['eval/accuracy']:.3f}")
    return "\n".join(lines)
