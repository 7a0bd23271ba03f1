"""The loop of offline algorithms (SFT, pre-training, RM, DPO family, KTO): step, log, evaluate, save."""

from __future__ import annotations

import time
from pathlib import Path

from rlhf.controllers.profiling import profiled_step
from rlhf.plan import Plan
from rlhf.types import RunResult


def run_offline(cfg, plan: Plan, tracker, output_dir: Path, progress: bool = True) -> RunResult:
    from tqdm import tqdm

    from rlhf.controllers.checkpoints import resume_checkpoint, save_checkpoint
    from rlhf.training.metrics import combine_rank_metrics as _sum
    from rlhf.training.steps import final_checkpoint_due, saved_by_the_loop
    from rlhf.workers.cluster import ensure_ray
    from rlhf.workers.group import ActorGroup, make_placement_group
    from rlhf.workers.trainer import TrainerSpec, TrainerWorker

    t0 = time.time()
    ensure_ray(num_gpus=plan.total_gpus, cpu_processes=sum(r.num_workers for r in plan.roles))
    role = plan.role("actor")
    spec = TrainerSpec(
        algo=cfg.algo,
        model=cfg.model,
        data=cfg.data,
        engine=cfg.engine,
        plan=plan,
        seed=cfg.seed,
        output_dir=str(output_dir),
        resume=cfg.resume,
    )
    pg = make_placement_group(role.num_workers, 1.0) if plan.device == "cuda" else None
    group = ActorGroup(
        "actor", TrainerWorker, role.num_workers, gpus_per_worker=1.0 if pg else 0.0, args=(spec,), placement_group=pg
    )
    try:
        addr, port = group.run("rendezvous")[0]
        info = group.run("setup", addr, port)[0]
        tracker.log_text(info["train_data"] + "\n" + info["eval_data"], "data_summary.txt")
        tracker.log_params(
            {
                "derived.train_samples": info["train_samples"],
                "derived.total_steps": info["total_steps"],
                "derived.trainable_params": info["trainable_params"],
            }
        )
        print(f"data: {info['train_data']}")
        if info["eval_data"]:
            print(f"eval: {info['eval_data']}")
        total = info["total_steps"]
        roles = {"actor": group}

        def save(step: int) -> None:
            save_checkpoint(
                roles,
                output_dir,
                step,
                algo=a.name,
                model=cfg.model.name_or_path,
                state={"total_steps": total},
                keep=a.keep_checkpoints,
            )

        state = (
            resume_checkpoint(roles, output_dir, algo=cfg.algo.name, model=cfg.model.name_or_path)
            if cfg.resume
            else None
        )
        start = int(state["step"]) if state else 0
        if start:
            print(f"resuming at step {start}/{total}")
        first: dict = {}
        last: dict = {}
        a = cfg.algo
        from rlhf.controllers.budget import WallClock

        clock = WallClock(a.max_time, started=t0)
        print(
            f"run: {total} optimizer steps of {plan.train_batch_samples} samples ({info['train_samples']} training "
            "samples)" + (f"; time limit {clock.limit:.0f}s (algo.max_time={a.max_time})" if clock.limit else "")
        )
        bar = tqdm(range(start, total), desc=a.name, disable=not progress, dynamic_ncols=True)
        done = start
        for step in bar:
            if step > start and clock.out_of_time():
                print(clock.stop_message(done, total))
                break
            tic = time.time()
            with profiled_step(cfg.profile_step, step + 1, roles, output_dir):
                stats = _sum(group.run("train_step", step))
            clock.record(time.time() - tic)
            tracker.log_metrics(stats, step + 1)
            first = first or stats
            last = stats
            bar.set_postfix(
                {
                    k.split("/")[-1]: f"{v:.3g}"
                    for k, v in stats.items()
                    if k in ("train/loss", "train/accuracy", "train/reward_accuracy")
                }
            )
            done = step + 1
            if a.eval_every and done % a.eval_every == 0 and done < total:
                tracker.log_metrics(_sum(group.run("evaluate")), done)
            if saved_by_the_loop(a.save_every, done, total):
                save(done)
        planned = total
        if final_checkpoint_due(a.save_every, start, done, planned):
            save(done)
        if done < planned:
            tracker.set_tags({"stopped_early": f"algo.max_time after step {done} of {planned}"})
        total = done
        evals = _sum(group.run("evaluate"))
        tracker.log_metrics(evals, total)
        evals["run/planned_steps"] = float(planned)
        final_dir = output_dir / "final"
        run_info = {
            "algo": a.name,
            "steps": total,
            "model": cfg.model.name_or_path,
            "mlflow_run_id": tracker.run_id,
            "mlflow_tracking_uri": tracker.uri,
        }
        model_dir = group.run("save_model", str(final_dir), run_info)[0]
        group.run("close")
    finally:
        group.shutdown()
    from rlhf.algos.registry import get_algo

    metric = get_algo(a.name).metric
    value = evals.get(metric, last.get(metric.replace("eval/", "train/")))
    return RunResult(
        algo=a.name,
        steps=total,
        model_dir=model_dir,
        first=first,
        last=last,
        eval=evals,
        wall_s=time.time() - t0,
        objective=(metric, value) if value is not None else None,
    )
