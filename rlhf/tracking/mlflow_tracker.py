"""Experiment tracking: MLflow (local sqlite store by default, any tracking URI) or nothing.

What a run records: the resolved config (flattened params + config.yaml artifact), the plan (plan.json and
plan.txt), tags (algo, model, hw, git commit, Hydra job, host), metrics named `<area>/<name>` per step, the
data sources as dataset inputs with content digests, system metrics (when psutil is installed and
`tracking.log_system_metrics=true`), and the final model directory (as an artifact, or its path).
A run of a sweep is a child of the sweep's parent run (`mlflow.parentRunId`, see rlhf/tracking/callbacks.py).
"""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path
from typing import Any, Optional

log = logging.getLogger(__name__)

DEFAULT_STORE_DIR = "mlruns"


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI, else a sqlite store under ./mlruns (the embedded store needs no server)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = Path(DEFAULT_STORE_DIR).resolve()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def git_commit(cwd: Optional[str] = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd or Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        sha = out.stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd or Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return (sha + ("-dirty" if dirty else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)):
        out[prefix[:-1]] = str(list(d))
    else:
        out[prefix[:-1]] = d
    return out


class NullTracker:
    run_id: Optional[str] = None
    uri: Optional[str] = None
    experiment_id: Optional[str] = None

    def log_params(self, params: dict) -> None: ...
    def log_metrics(self, metrics: dict, step: int) -> None: ...
    def log_text(self, text: str, name: str) -> None: ...
    def log_dict(self, d: dict, name: str) -> None: ...
    def log_artifacts(self, path: str, name: Optional[str] = None) -> None: ...
    def set_tags(self, tags: dict) -> None: ...
    def log_inputs(self, digests: list, weights: dict) -> None: ...
    def end(self, status: str = "FINISHED") -> None: ...
    def ui_hint(self) -> str:
        return "tracking disabled (tracking=none)"


class MLflowTracker:
    def __init__(
        self,
        *,
        uri: Optional[str],
        experiment: str,
        run_name: Optional[str],
        parent_run_id=None,
        log_system_metrics: bool = False,
        resume_run_id: Optional[str] = None,
    ):
        import mlflow

        self.mlflow = mlflow
        self.uri = uri or default_tracking_uri()
        mlflow.set_tracking_uri(self.uri)
        exp = mlflow.get_experiment_by_name(experiment)
        if exp is None:
            kwargs = {}
            if self.uri.startswith("sqlite:///"):
                # Keep artifacts beside the sqlite file instead of the current directory.
                kwargs["artifact_location"] = (Path(self.uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
            try:
                self.experiment_id = mlflow.create_experiment(experiment, **kwargs)
            except Exception:  # noqa: BLE001 - a concurrent sweep point created it first
                self.experiment_id = mlflow.get_experiment_by_name(experiment).experiment_id
        else:
            self.experiment_id = exp.experiment_id
        tags = {"mlflow.parentRunId": parent_run_id} if parent_run_id else None
        # psutil samples CPU/memory; without it MLflow would only warn once per run.
        log_system_metrics = log_system_metrics and _has_psutil()
        # Steps the run logged before it was stopped, per metric: a resumed run retrains them from its checkpoint
        # and would log them a second time; their first values stay and the repeats are not logged. Per metric,
        # so an evaluation at the last trained step that the stopped run never reached is still logged.
        self.logged_through = -1
        self.last_step: dict[str, int] = {}
        if resume_run_id and self._run_exists(resume_run_id):
            # A requeued job continues its own run, so one sweep point stays one child.
            self.last_step = self._last_logged_steps(resume_run_id)
            self.logged_through = max(self.last_step.values(), default=-1)
            self.run = mlflow.start_run(run_id=resume_run_id, log_system_metrics=log_system_metrics)
            self._keep_end_reason_as_history()
        else:
            self.run = mlflow.start_run(
                experiment_id=self.experiment_id, run_name=run_name, tags=tags, log_system_metrics=log_system_metrics
            )
        self.run_id = self.run.info.run_id
        # Marks the run KILLED if this process dies without ending it (rlhf/tracking/run_guard.py).
        from rlhf.tracking.lineage import TAG_DRIVER
        from rlhf.tracking.run_guard import driver_id, start_guard

        driver = driver_id()
        self.mlflow.set_tag(TAG_DRIVER, driver)
        self.guard = start_guard(self.uri, self.run_id, driver)

    def _keep_end_reason_as_history(self) -> None:
        """A resumed run is no longer ended: why its earlier attempt stopped moves to `rlhf.interrupted`, and the
        end reason goes (a run that then finishes carries none)."""
        from rlhf.tracking.lineage import TAG_END_REASON

        reason = self.run.data.tags.get(TAG_END_REASON)
        if reason:
            self.mlflow.set_tag("rlhf.interrupted", reason)
            self.mlflow.delete_tag(TAG_END_REASON)

    def _last_logged_steps(self, run_id: str) -> dict[str, int]:
        client = self.mlflow.tracking.MlflowClient(self.uri)
        keys = [k for k in client.get_run(run_id).data.metrics if not k.startswith("system/")]
        return {k: max((m.step for m in client.get_metric_history(run_id, k)), default=-1) for k in keys}

    def _run_exists(self, run_id: str) -> bool:
        try:
            return self.mlflow.get_run(run_id).info.experiment_id == self.experiment_id
        except Exception:  # noqa: BLE001 - another store or a deleted run: start a fresh one
            return False

    def log_params(self, params: dict) -> None:
        flat = {k: ("None" if v is None else v) for k, v in flatten(params).items()}
        # A resumed run keeps its first config as params (MLflow refuses to change them); what the resuming
        # command changed is recorded as tags, so the run still tells which settings its later steps used.
        logged = self.mlflow.get_run(self.run_id).data.params
        # "None": a value the run's first attempt left to the planner (its params were the composed config's).
        changed = {k: v for k, v in flat.items() if k in logged and logged[k] not in (str(v)[:6000], "None")}
        if changed:
            log.warning(
                "resumed run %s: config changed since it started: %s",
                self.run_id,
                ", ".join(f"{k} {logged[k]} -> {v}" for k, v in sorted(changed.items())[:10]),
            )
            self.mlflow.set_tags({f"resumed_with.{k}": str(v)[:5000] for k, v in changed.items()})
        items = [(k, v) for k, v in flat.items() if k not in logged]
        for i in range(0, len(items), 100):
            self.mlflow.log_params(dict(items[i : i + 100]))

    def log_metrics(self, metrics: dict, step: int) -> None:
        clean = {
            k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and step > self.last_step.get(k, -1)
        }
        if clean:
            self.mlflow.log_metrics(clean, step=step)

    def log_text(self, text: str, name: str) -> None:
        self.mlflow.log_text(text, name)

    def log_dict(self, d: dict, name: str) -> None:
        self.mlflow.log_dict(d, name)

    def log_artifacts(self, path: str, name: Optional[str] = None) -> None:
        self.mlflow.log_artifacts(path, artifact_path=name)

    def set_tags(self, tags: dict) -> None:
        self.mlflow.set_tags({k: str(v) for k, v in tags.items()})

    def log_inputs(self, digests: list, weights: dict) -> None:
        from rlhf.tracking.datasets import log_dataset_inputs

        log_dataset_inputs(self.mlflow, digests, weights)

    def end(self, status: str = "FINISHED") -> None:
        self.mlflow.end_run(status=status)
        if self.guard is not None:
            self.guard.release()

    def ui_hint(self) -> str:
        if self.uri.startswith("sqlite:///"):
            return f"mlflow ui --backend-store-uri {self.uri}"
        return f"open {self.uri} (run {self.run_id})"


def _has_psutil() -> bool:
    import importlib.util

    return importlib.util.find_spec("psutil") is not None


def make_tracker(
    cfg, run_name: Optional[str] = None, parent_run_id: Optional[str] = None, resume_run_id: Optional[str] = None
):
    """A tracker for the tracking config slice (`TrackingConfig`); `resume_run_id` continues that run."""
    if cfg.backend == "none":
        return NullTracker()
    return MLflowTracker(
        uri=cfg.tracking_uri,
        experiment=cfg.experiment,
        run_name=cfg.run_name or run_name,
        parent_run_id=parent_run_id,
        log_system_metrics=cfg.log_system_metrics,
        resume_run_id=resume_run_id,
    )
