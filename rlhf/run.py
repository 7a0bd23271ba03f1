"""The entry point: compose the config, resolve the plan, track the run, run the algorithm's controller.

python -m rlhf.run                                   # tiny model on CPU (the embedded default)
python -m rlhf.run algo=dpo model=qwen2_5_0_5b hw=h100x1          # one GPU
python -m rlhf.run algo=ppo model=llama3_8b hw=a100x8             # one node of 8 GPUs
python -m rlhf.run -m hydra/launcher=slurm_gpu algo=ppo model=llama3_8b hw=a100x16        # Slurm
python -m rlhf.run mode=plan algo=grpo model=qwen2_5_7b hw=h100x8                # print the plan only
python -m rlhf.run algo=sft --cfg job                                               # show the config
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from typing import Optional

import hydra
from omegaconf import DictConfig, OmegaConf

from rlhf.config.run import register_configs

log = logging.getLogger("rlhf")
register_configs()


def _controller(algo: str):
    """The algorithm's loop (rlhf/algos/registry.py); modules load lazily so `mode=plan` never imports Ray."""
    import importlib

    from rlhf.algos.registry import get_algo

    module, fn = get_algo(algo).controller.split(":")
    return getattr(importlib.import_module(module), fn)


def _output_dir(cfg) -> Path:
    if cfg.output_dir:
        return Path(cfg.output_dir).resolve()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir).resolve()
    except ValueError:
        return (Path("outputs") / time.strftime("%Y-%m-%d/%H-%M-%S")).resolve()


def _hydra_job() -> dict:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return {
            "hydra.job": hc.job.name,
            "hydra.job_num": hc.job.get("num", 0),
            "hydra.mode": str(hc.mode),
            "hydra.sweep_dir": hc.sweep.dir,
        }
    except ValueError:
        return {}


def execute(dcfg: DictConfig, progress: bool = True):
    """Run one composed config end to end; returns the RunResult (None in plan mode)."""
    from rlhf.data.check import DataCheckError, check_run_data
    from rlhf.data.sources import resolve_data
    from rlhf.launch.run_dir import claim_run_dir, mark_finished
    from rlhf.plan import PlanError, resolve_plan
    from rlhf.tracking.callbacks import sweep_parent
    from rlhf.tracking.lineage import (
        close_orphaned_run,
        log_lineage,
        log_objective,
        previous_run_id,
        write_run_record,
    )
    from rlhf.tracking.mlflow_tracker import git_commit, make_tracker
    from rlhf.workers.group import set_stall_timeout

    cfg = OmegaConf.to_object(dcfg)
    from rlhf.quiet import set_verbose

    set_verbose(True if cfg.verbose else None)  # None: as main() (or RLHF_VERBOSE) left it; quiet by default
    cfg = dataclasses.replace(cfg, data=resolve_data(cfg.data))  # data.train/eval/format -> data.sources
    # Every plan and data problem of the command, before Ray or any model starts: neither hides the other.
    try:
        plan = resolve_plan(cfg)
    except PlanError as e:
        try:
            check_run_data(cfg)
        except DataCheckError as d:
            raise PlanError([*e.problems, str(d).replace("\n", "\n    ")]) from None
        except Exception:  # noqa: BLE001 - a data check that cannot run on an unplanned config: the plan's say
            raise e from None
        raise
    data_report = check_run_data(cfg)
    _check_one_step_of_data(cfg, plan, data_report)
    if cfg.mode == "plan":
        print(plan.table())
        print(data_report.text())
        return None
    out = _output_dir(cfg)
    # Held until the run ends (released below; the kernel drops it if the process dies).
    claim = claim_run_dir(out, resume=cfg.resume)
    try:
        _check_resume(cfg, dcfg, out)
    except Exception:
        claim.release()
        raise
    (out / "config.yaml").write_text(OmegaConf.to_yaml(dcfg))
    (out / "plan.json").write_text(plan.to_json())
    # config.yaml is the command as composed (what a resume compares); resolved_config.yaml what runs.
    resolved = resolved_config(cfg)
    resolved_yaml = OmegaConf.to_yaml(resolved)
    (out / "resolved_config.yaml").write_text(resolved_yaml)
    sweep = sweep_parent()
    parent_run_id = sweep["run_id"] if sweep else None
    # A requeued or resumed job continues the MLflow run of its earlier attempt in the same output_dir; an
    # earlier attempt's run left RUNNING by a killed driver and not resumed here is marked KILLED.
    resume_run_id = previous_run_id(out) if cfg.resume else None
    closed = close_orphaned_run(out, keep=resume_run_id)
    if closed:
        print(f"rlhf: MLflow run {closed}, left running in {out} by a driver that was killed, is marked KILLED")
    tracker = make_tracker(
        cfg.tracking,
        run_name=f"{cfg.algo.name}-{Path(cfg.model.name_or_path).name}",
        parent_run_id=parent_run_id,
        resume_run_id=resume_run_id,
    )
    tracker.set_tags(
        {
            "algo": cfg.algo.name,
            "model": cfg.model.name_or_path,
            "hw": cfg.hw.name,
            "git_commit": git_commit(),
            "output_dir": str(out),
            **_hydra_job(),
        }
    )
    if tracker.run_id:
        write_run_record(out, tracker, parent_run_id)
    # The params are the values the run uses: the plan's choices (learning rate, batch, ZeRO stage) and the
    # model's own architecture filled in, not the composed config's blanks or its preset's stale numbers.
    tracker.log_params(resolved)
    tracker.log_text(OmegaConf.to_yaml(dcfg), "config.yaml")
    tracker.log_text(resolved_yaml, "resolved_config.yaml")
    tracker.log_text(plan.to_json(), "plan.json")
    tracker.log_text(plan.table(), "plan.txt")
    print(plan.table())
    print(data_report.text())
    status = "FAILED"
    try:
        log_lineage(tracker, cfg, out)
        set_stall_timeout(cfg.stall_timeout_s)  # the bound on a silent rank, for every role group of the run
        with _isolated(plan, out):
            result = _controller(plan.algo)(cfg, plan, tracker, out, progress=progress)
        if result.model_dir and cfg.tracking.log_model and _dir_size(result.model_dir) < 1 << 30:
            tracker.log_artifacts(result.model_dir, "model")
        if result.objective:
            tracker.log_metrics(
                {"objective/" + result.objective[0].replace("/", "_"): result.objective[1]}, result.steps
            )
            log_objective(tracker, *result.objective, _higher_is_better(plan), result.steps)
        status = "FINISHED"
        mark_finished(
            out,
            {
                "algo": cfg.algo.name,
                "steps": result.steps,
                "model_dir": result.model_dir,
                "mlflow_run_id": tracker.run_id,
            },
        )
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"  # Ctrl-C, or SIGTERM from Slurm/the user (rlhf.run.main turns it into SystemExit)
        raise
    finally:
        tracker.end(status)
        claim.release()
    _summary(cfg, plan, result, tracker, out)
    return result


def resolved_config(cfg) -> dict:
    """The typed config after planning, as plain containers: every value the run uses."""
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def _check_one_step_of_data(cfg, plan, report) -> None:
    """A data set smaller than one step, found while the check read it whole: refused before any process starts."""
    from rlhf.plan import PlanError

    limit = int(cfg.data.check_rows)
    if not report.sources or any(s.rows >= limit for s in report.sources):
        return  # a source longer than the check reads: its size is known only when it is loaded
    held = max(float(cfg.data.eval_fraction), 0.0)
    rows = sum(s.good - min(round(s.good * held), 500) for s in report.sources)
    onpolicy = plan.family == "onpolicy"
    need = cfg.algo.prompts_per_step if onpolicy else plan.train_batch_samples
    key = "algo.prompts_per_step" if onpolicy else "algo.train_batch_samples"
    if rows >= need:
        return
    chosen = any(key in c for c in getattr(plan, "chosen", ()))
    # The largest step the rows hold, never more rows than there are: a multiple of the ranks (the planner then
    # picks a micro-batch dividing it, unless one was given).
    world = 1 if onpolicy else plan.world_size
    micro_given = not any(c.startswith("algo.micro_batch_per_gpu=") for c in getattr(plan, "chosen", ()))
    unit = world * plan.micro_batch_per_gpu if not onpolicy and micro_given else world
    fit = rows // world * world
    if fit < 1:
        fix = f"add data: one step needs at least {world} rows (one per rank)"
    elif rows >= unit:
        fix = f"set {key}={rows // unit * unit} or add data"
    else:  # a given micro-batch larger than the rows: a smaller one too
        fix = f"set {key}={fit} and algo.micro_batch_per_gpu to a divisor of {fit // world}, or add data"
    raise PlanError(
        [
            f"the training data has about {rows} rows (after the held-out part), fewer than one step of {key}={need}"
            f"{' (chosen by the planner for this model)' if chosen else ''}; {fix}"
        ]
    )


def _check_resume(cfg, dcfg: DictConfig, out: Path) -> None:
    """Refuse a resuming command that changes what the checkpoint fixed; report what it changes and applies."""
    import json

    from rlhf.engines.checkpoint import STATE_FILE, latest_checkpoint
    from rlhf.launch.resume_check import check_resume

    ckpt = latest_checkpoint(out / "checkpoints") if cfg.resume else None
    if ckpt is None:
        return
    step = int(json.loads((ckpt / STATE_FILE).read_text()).get("step", 0))
    applied = check_resume(out, OmegaConf.to_container(dcfg, resolve=True), step)
    for key, (old, new) in applied.items():
        print(f"resume: {key} {old!r} -> {new!r} from step {step}")


def _isolated(plan, out: Path):
    """A sweep point gets its own local Ray (temp dir, namespace) that ends with it; a single run changes nothing."""
    from contextlib import nullcontext

    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from rlhf.launch.isolation import point_key, ray_namespace, sweep_point

    try:
        hc = HydraConfig.get()
    except ValueError:
        return nullcontext()
    if hc.mode != RunMode.MULTIRUN:
        return nullcontext()
    namespace = ray_namespace(hc.job.config_name, hc.job.get("num", 0), point_key(out))
    return sweep_point(out, namespace, num_gpus=plan.total_gpus, cpu_processes=sum(r.num_workers for r in plan.roles))


def _higher_is_better(plan) -> bool:
    from rlhf.algos.registry import get_algo

    return get_algo(plan.algo).higher_is_better


def _dir_size(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


# Shown first in the summary, when the run has them: what a user checks before anything else.
_HEADLINE = (
    "rollout/reward_mean",
    "train/loss",
    "train/policy_loss",
    "train/accuracy",
    "train/reward_accuracy",
    "train/margin",
    "rollout/kl",
    "rollout/response_len_mean",
)


def _summary(cfg, plan, result, tracker, out: Path) -> None:
    lines = [
        "",
        f"== rlhf: {cfg.algo.name} on {cfg.model.name_or_path} ({plan.device}, {plan.world_size} rank(s)) "
        f"finished {result.steps} steps in {result.wall_s:.1f}s",
    ]
    keys = [
        k
        for k in result.last
        if k.startswith(("train/", "rollout/", "reward/")) and not k.endswith(("lr", "grad_norm", "tokens", "_std"))
    ]
    ordered = [k for k in _HEADLINE if k in keys] + sorted(k for k in keys if k not in _HEADLINE)
    lines.append(f"   {'first step -> last step':<28}")
    for k in ordered[:8]:
        a, b = result.first.get(k), result.last.get(k)
        if a is not None and b is not None:
            lines.append(f"   {k:<28} {a:10.4f} -> {b:10.4f}")
    evals = dict(result.eval)
    planned = evals.pop("run/planned_steps", None)
    if planned is not None and planned > result.steps:
        lines.append(
            f"   stopped early by algo.max_time after {result.steps} of {planned:.0f} steps (saved, evaluated)"
        )
    # The task's verifiable accuracy first, then the reward: start -> end of training on the held-out prompts.
    for key, label in (
        ("accuracy", "held-out accuracy"),
        ("reward_mean", "held-out reward"),
        ("pass_at_", "held-out pass@"),
        ("maj_at_", "held-out maj@"),
    ):
        for k in sorted(k for k in list(evals) if k.startswith("eval/" + key)):
            suffix = k[len("eval/" + key) :] if key.endswith("_") else ""
            start, end = evals.pop(k.replace("eval/", "eval/start_"), None), evals.pop(k)
            if start is not None:
                lines.append(f"   {label + suffix:<28} {start:10.4f} -> {end:10.4f}   (start -> end of training)")
            else:
                lines.append(f"   {label + suffix:<28} {end:10.4f}")
    for k, v in sorted((k, v) for k, v in evals.items() if not k.startswith("eval/start_"))[:6]:
        lines.append(f"   {k:<28} {v:10.4f}")
    lines.append(f"   model      {result.model_dir}")
    lines.append(f"   outputs    {out}")
    if tracker.run_id:
        lines.append(f"   mlflow     run {tracker.run_id} in {tracker.uri}")
        lines.append(f"   browse     {tracker.ui_hint()}")
    print("\n".join(lines))


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def hydra_main(dcfg: DictConfig) -> Optional[float]:
    from rlhf.data.check import DataCheckError
    from rlhf.data.errors import DataError
    from rlhf.launch.ray_cluster import submitit_ray_cluster
    from rlhf.launch.resume_check import ResumeMismatchError
    from rlhf.launch.run_dir import RunDirError
    from rlhf.plan import PlanError

    try:
        # A multi-node submitit job: rank 0 leads a Ray cluster and trains, the other ranks only serve Ray.
        with submitit_ray_cluster(_output_dir(dcfg)) as role:
            if role == "worker":
                return None
            result = execute(dcfg)
    except (PlanError, RunDirError, ResumeMismatchError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except (DataCheckError, DataError) as e:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # -v: the traceback too
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if result is None or result.objective is None:
        return None
    # Sweepers (Optuna) minimize or maximize this value.
    return float(result.objective[1])


def _terminate(signum, _frame) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    import faulthandler
    import signal

    from rlhf.config.cli import rewrite_argv
    from rlhf.config.preflight import preflight
    from rlhf.quiet import set_verbose

    # `kill -USR1 <pid>` prints the driver's stacks (workers do the same): the first look at a hang.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    # SIGTERM (kill, Slurm's end of job) unwinds like Ctrl-C: the MLflow run is marked KILLED, the directory
    # lock is released and role processes are shut down, instead of the process vanishing mid-step.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate)

    # `-v` (or verbose=true) shows third-party warnings; quiet otherwise, here and in every Ray worker.
    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:])
    sys.argv[1:] = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")]
    set_verbose(verbose or any(a.lower() in ("verbose=true", "verbose=1") for a in sys.argv[1:]))
    # `+data.sources.<name>.<field>=v` (and reward.sources) grouped into one dict override Hydra can merge.
    sys.argv[1:] = rewrite_argv(sys.argv[1:])
    problem = preflight(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    hydra_main()


if __name__ == "__main__":
    main()
