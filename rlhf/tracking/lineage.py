"""Link a run's directories to its MLflow run, and record what the run was made from.

Every run writes `rlhf_run.json` into its output directory when it starts (the final model gets a copy from
the workers), holding the MLflow run id, the tracking URI and the sweep's parent run. Any path inside the
output directory (a `checkpoints/step_*` folder, `final/`) leads back to the run, hence to its resolved
config, plan, data digests and git commit (`python -m rlhf.lineage <dir>`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

RUN_FILE = "rlhf_run.json"
# Tags every run carries; lineage lookups and reports read them.
TAG_OUTPUT_DIR = "output_dir"
TAG_CHECKPOINT_DIR = "checkpoint_dir"
TAG_OBJECTIVE_METRIC = "objective.metric"
TAG_OBJECTIVE_DIRECTION = "objective.direction"
# The objective under one name in every run, so a sweep's runs compare with one query.
OBJECTIVE = "objective"


def write_run_record(output_dir: Path, tracker, parent_run_id: Optional[str]) -> Path:
    """Write `<output_dir>/rlhf_run.json` (run id, tracking URI, experiment, parent run)."""
    from rlhf.engines.checkpoint import write_text_atomic

    record = {
        "mlflow_run_id": tracker.run_id,
        "mlflow_tracking_uri": tracker.uri,
        "mlflow_experiment_id": tracker.experiment_id,
        "mlflow_parent_run_id": parent_run_id,
        "output_dir": str(output_dir),
    }
    path = Path(output_dir) / RUN_FILE
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
    return path


def read_run_record(path: Path) -> Optional[dict]:
    """The run record for a path inside an output directory: its own, its `final/`'s, or a parent's."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        for candidate in (folder / RUN_FILE, folder / "final" / RUN_FILE):
            if candidate.is_file():
                record = json.loads(candidate.read_text())
                if record.get("mlflow_run_id"):
                    return {**record, "record_file": str(candidate)}
    return None


def previous_run_id(output_dir: Path) -> Optional[str]:
    """The MLflow run of an earlier attempt in this output directory, when training will resume from its
    checkpoint (a requeued job); None when there is nothing to resume, so a rerun gets a fresh run."""
    from rlhf.engines.checkpoint import latest_checkpoint

    path = Path(output_dir) / RUN_FILE
    if not path.is_file() or latest_checkpoint(Path(output_dir) / "checkpoints") is None:
        return None
    return json.loads(path.read_text()).get("mlflow_run_id")


def log_lineage(tracker, cfg, output_dir: Path) -> None:
    """Data sources with content digests, host facts and where checkpoints go (cfg: the typed RunConfig)."""
    from rlhf.tracking.datasets import source_digests
    from rlhf.tracking.host import host_tags

    if tracker.run_id is None:
        return  # tracking=none: no need to read every data file
    digests = source_digests(cfg.data)
    tracker.log_inputs(digests, {name: src.weight for name, src in cfg.data.sources.items()})
    tracker.set_tags(
        {
            **host_tags(),
            TAG_CHECKPOINT_DIR: str(Path(output_dir) / "checkpoints"),
            **{f"data.{d.name}.digest": d.digest for d in digests},
        }
    )


def log_objective(tracker, metric: str, value: float, higher_is_better: bool, step: int) -> None:
    """The value a sweep optimizes, under one name, with its source metric and direction as tags."""
    tracker.set_tags(
        {TAG_OBJECTIVE_METRIC: metric, TAG_OBJECTIVE_DIRECTION: "maximize" if higher_is_better else "minimize"}
    )
    tracker.log_metrics({OBJECTIVE: value}, step)


# Set on an MLflow run that was left RUNNING by a driver that died without ending it (kill -9, a node lost).
TAG_END_REASON = "rlhf.end_reason"
# The process that runs (or last resumed) an MLflow run, "<pid>@<host>": its guard acts only for that driver.
TAG_DRIVER = "rlhf.driver"


def close_orphaned_run(output_dir: Path, keep: Optional[str] = None) -> Optional[str]:
    """Mark KILLED the MLflow run that the last driver in `output_dir` left RUNNING, unless it is `keep` (the
    run this start resumes). Returns the run id it closed, or None.

    Called once this process holds the directory's lock (rlhf/launch/run_dir.py), so the driver recorded in
    `rlhf_run.json` is known to be gone: a run still RUNNING there can only be one whose driver was killed
    with -9 (or lost its node) and never came back to end it. The end time is its last logged metric's.
    """
    path = Path(output_dir) / RUN_FILE
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    run_id, uri = record.get("mlflow_run_id"), record.get("mlflow_tracking_uri")
    if not run_id or not uri or run_id == keep:
        return None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    try:
        run = client.get_run(run_id)
    except Exception:  # noqa: BLE001 - the store moved or the run was deleted: nothing to close
        return None
    if run.info.status != "RUNNING":
        return None
    last = [
        (m.step, m.timestamp)
        for key in run.data.metrics
        if not key.startswith("system/")
        for m in client.get_metric_history(run_id, key)
    ]
    step, ended = max(last, default=(-1, run.info.start_time))
    client.set_tag(
        run_id,
        TAG_END_REASON,
        f"its driver died without ending it (last logged step {step}); marked KILLED by the next start "
        f"in {Path(output_dir).resolve()}",
    )
    client.set_terminated(run_id, status="KILLED", end_time=ended)
    return run_id
