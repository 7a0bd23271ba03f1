"""The entry point: compose the config, resolve the plan, track the run, run the algorithm's controller.

  python -m rlhf.run                                   # tiny model on CPU (the embedded default)
  python -m rlhf.run algo=dpo model=qwen2_5_0_5b hw=h100x1          # one GPU
  python -m rlhf.run algo=ppo model=llama3_8b hw=a100x8             # one node of 8 GPUs
  python -m rlhf.run -m hydra/launcher=submitit_slurm algo=ppo model=llama3_8b hw=a100x16   # Slurm
  python -m rlhf.run mode=plan algo=grpo model=qwen2_5_7b hw=h100x8                # print the plan only
  python -m rlhf.run algo=sft --cfg job                                               # show the config
"""

from __future__ import annotations

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


# One table from algorithm family to its loop; modules load lazily so `mode=plan` never imports Ray.
CONTROLLERS = {
    "offline": "rlhf.controllers.offline:run_offline",
    "onpolicy": "rlhf.controllers.onpolicy:run_onpolicy",
}


def _controller(family: str):
    import importlib

    module, fn = CONTROLLERS[family].split(":")
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
        return {"hydra.job": hc.job.name, "hydra.job_num": hc.job.get("num", 0),
                "hydra.mode": str(hc.mode), "hydra.sweep_dir": hc.sweep.dir}
    except ValueError:
        return {}


def execute(dcfg: DictConfig, progress: bool = True):
    """Run one composed config end to end; returns the RunResult (None in plan mode)."""
    from rlhf.plan import resolve_plan
    from rlhf.tracking.mlflow_tracker import git_commit, make_tracker

    cfg = OmegaConf.to_object(dcfg)
    plan = resolve_plan(cfg)
    if cfg.mode == "plan":
        print(plan.table())
        return None
    out = _output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(dcfg))
    (out / "plan.json").write_text(plan.to_json())
    tracker = make_tracker(cfg.tracking, run_name=f"{cfg.algo.name}-{Path(cfg.model.name_or_path).name}",
                           parent_run_id=os.environ.get("RLHF_PARENT_RUN_ID"))
    tracker.set_tags({"algo": cfg.algo.name, "model": cfg.model.name_or_path, "hw": cfg.hw.name,
                      "git_commit": git_commit(), "output_dir": str(out), **_hydra_job()})
    tracker.log_params(OmegaConf.to_container(dcfg, resolve=True))
    tracker.log_text(OmegaConf.to_yaml(dcfg), "config.yaml")
    tracker.log_text(plan.to_json(), "plan.json")
    tracker.log_text(plan.table(), "plan.txt")
    print(plan.table())
    status = "FAILED"
    try:
        result = _controller(plan.family)(cfg, plan, tracker, out, progress=progress)
        if result.model_dir and cfg.tracking.log_model and _dir_size(result.model_dir) < 1 << 30:
            tracker.log_artifacts(result.model_dir, "model")
        if result.objective:
            tracker.log_metrics({"objective/" + result.objective[0].replace("/", "_"): result.objective[1]},
                                result.steps)
        status = "FINISHED"
    finally:
        tracker.end(status)
    _summary(cfg, plan, result, tracker, out)
    return result


def _dir_size(path: str) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _summary(cfg, plan, result, tracker, out: Path) -> None:
    lines = [
        "",
        f"== rlhf: {cfg.algo.name} on {cfg.model.name_or_path} ({plan.device}, {plan.world_size} rank(s)) "
        f"finished {result.steps} steps in {result.wall_s:.1f}s",
    ]
    keys = [k for k in result.last if k.startswith(("train/", "rollout/", "reward/"))
            and not k.endswith(("lr", "grad_norm", "tokens"))]
    for k in sorted(keys)[:8]:
        a, b = result.first.get(k), result.last.get(k)
        if a is not None and b is not None:
            lines.append(f"   {k:<28} {a:10.4f} -> {b:10.4f}")
    for k, v in sorted(result.eval.items())[:6]:
        lines.append(f"   {k:<28} {v:10.4f}")
    lines.append(f"   model      {result.model_dir}")
    lines.append(f"   outputs    {out}")
    if tracker.run_id:
        lines.append(f"   mlflow     run {tracker.run_id} in {tracker.uri}")
        lines.append(f"   browse     {tracker.ui_hint()}")
    print("\n".join(lines))


@hydra.main(version_base=None, config_path="../conf", config_name="config")
def hydra_main(dcfg: DictConfig) -> Optional[float]:
    from rlhf.plan import PlanError

    try:
        result = execute(dcfg)
    except PlanError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    if result is None or result.objective is None:
        return None
    # Sweepers (Optuna) minimize or maximize this value.
    return float(result.objective[1])


def main() -> None:
    from rlhf.config.preflight import preflight

    problem = preflight(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    hydra_main()


if __name__ == "__main__":
    main()
