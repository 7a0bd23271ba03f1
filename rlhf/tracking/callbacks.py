"""A parent MLflow run per Hydra multirun, with one child run per sweep point.

Registered in the `hydra.callbacks` block of conf/config.yaml. `on_multirun_start` (in the launching process)
creates the parent run, exports its id as $RLHF_PARENT_RUN_ID and writes `<sweep dir>/mlflow_parent.json`;
each job (in-process, a submitit job, a Ray task) starts its run as a child of it: from the environment
variable when the launcher passes the environment on (basic, submitit local and Slurm), else from the file
(a Ray task on a standing cluster sees only the shared file system). `on_multirun_end` records the children's
best objective on the parent and closes it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

ENV_PARENT = "RLHF_PARENT_RUN_ID"
PARENT_FILE = "mlflow_parent.json"
TAG_SWEEP_ROLE = "rlhf.sweep"
# The swept keys, comma-separated, for jobs that name their child run by them.
ENV_SWEPT = "RLHF_SWEPT_KEYS"


def experiment_id(client, name: str, uri: str) -> str:
    """The id of experiment `name`, created beside a sqlite store's file when missing (race-safe)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    kwargs = {}
    if uri.startswith("sqlite:///"):
        kwargs["artifact_location"] = (Path(uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    try:
        return client.create_experiment(name, **kwargs)
    except Exception:  # noqa: BLE001 - a concurrent process created it first
        return client.get_experiment_by_name(name).experiment_id


def sweep_parent(sweep_dir: Optional[str] = None) -> Optional[dict]:
    """{"run_id", "tracking_uri"} of the multirun this job belongs to, or None outside a tracked multirun.

    Also exports the parent's tracking URI when the job has none of its own, so the child lands in the same
    store as its parent whatever directory the job runs in.
    """
    found = None
    if os.environ.get(ENV_PARENT):
        found = {"run_id": os.environ[ENV_PARENT], "tracking_uri": os.environ.get("MLFLOW_TRACKING_URI")}
    else:
        sweep_dir = sweep_dir or _hydra_sweep_dir()
        path = Path(sweep_dir) / PARENT_FILE if sweep_dir else None
        if path is not None and path.is_file():
            found = json.loads(path.read_text())
    if found and found.get("tracking_uri") and not os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = found["tracking_uri"]
    return found


def _hydra_sweep_dir() -> Optional[str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return str(hc.sweep.dir) if hc.mode == RunMode.MULTIRUN else None


def best_child(runs: list, higher_is_better: Optional[bool] = None) -> Optional[Any]:
    """The finished run with the best `objective` metric; direction from the runs' tag unless given."""
    from rlhf.tracking.lineage import OBJECTIVE, TAG_OBJECTIVE_DIRECTION

    scored = [r for r in runs if r.info.status == "FINISHED" and OBJECTIVE in r.data.metrics]
    if not scored:
        return None
    if higher_is_better is None:
        higher_is_better = scored[0].data.tags.get(TAG_OBJECTIVE_DIRECTION, "maximize") == "maximize"
    key = (lambda r: r.data.metrics[OBJECTIVE]) if higher_is_better else (lambda r: -r.data.metrics[OBJECTIVE])
    return max(scored, key=key)


def child_runs(client, experiment: str, parent_run_id: str) -> list:
    return client.search_runs(
        [experiment], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000
    )


class MLflowSweepCallback(Callback):
    """Hydra callback: parent run per multirun (see the module docstring)."""

    def __init__(self) -> None:
        self._parent: Optional[dict] = None
        self._set_env: list[str] = []

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from rlhf.tracking.mlflow_tracker import default_tracking_uri, git_commit

        tracking = config.get("tracking")
        if tracking is None or tracking.backend == "none":
            return
        uri = tracking.tracking_uri or default_tracking_uri()
        client = MlflowClient(uri)
        exp_id = experiment_id(client, tracking.experiment, uri)
        hc = config.hydra
        sweep_dir = Path(str(hc.sweep.dir)).resolve()
        name = f"sweep-{hc.job.config_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {
            TAG_SWEEP_ROLE: "parent",
            "sweep.dir": str(sweep_dir),
            "sweep.config": str(hc.job.config_name),
            "sweep.sweeper": str(hc.runtime.choices.get("hydra/sweeper")),
            "sweep.launcher": str(hc.runtime.choices.get("hydra/launcher")),
            "sweep.overrides": " ".join(hc.overrides.task),
            "git_commit": git_commit(),
        }
        params = OmegaConf.select(config, "hydra.sweeper.params")
        if params:
            tags["sweep.params"] = json.dumps(OmegaConf.to_container(params, resolve=False))
        run = client.create_run(exp_id, run_name=name, tags=tags)
        run_id = run.info.run_id
        client.log_text(run_id, OmegaConf.to_yaml(config, resolve=False), "multirun_config.yaml")
        self._parent = {"run_id": run_id, "tracking_uri": uri, "experiment_id": exp_id, "swept": swept_keys(config)}
        sweep_dir.mkdir(parents=True, exist_ok=True)
        (sweep_dir / PARENT_FILE).write_text(json.dumps(self._parent, indent=2) + "\n")
        for key, value in (
            (ENV_PARENT, run_id),
            ("MLFLOW_TRACKING_URI", uri),
            (ENV_SWEPT, ",".join(self._parent["swept"])),
        ):
            if os.environ.get(key) != value:
                os.environ[key] = value
                self._set_env.append(key)
        log.info("sweep parent run %s in %s", run_id, uri)

    def on_job_end(self, config: DictConfig, job_return: Any = None, **kwargs: Any) -> None:
        """Name the point's child run by its swept values (`kl_coef=0.05 lr=0.0001`)."""
        from mlflow.tracking import MlflowClient

        parent = sweep_parent()
        name = child_run_name(config, (parent or {}).get("swept") or os.environ.get(ENV_SWEPT, "").split(","))
        if parent is None or not name:
            return
        try:
            client = MlflowClient(parent.get("tracking_uri"))
            out = str(Path(config.get("output_dir") or config.hydra.runtime.output_dir).resolve())
            runs = client.search_runs(
                [parent["experiment_id"]]
                if parent.get("experiment_id")
                else [client.get_run(parent["run_id"]).info.experiment_id],
                filter_string=f"tags.mlflow.parentRunId = '{parent['run_id']}' and tags.output_dir = '{out}'",
            )
            for run in runs:
                client.set_tag(run.info.run_id, "mlflow.runName", name)
        except Exception as e:  # noqa: BLE001 - a name is cosmetic; never fail the point for it
            log.warning("could not name the child run %s: %s", name, e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from mlflow.tracking import MlflowClient

        from rlhf.tracking.lineage import OBJECTIVE, TAG_OBJECTIVE_METRIC

        if self._parent is None:
            return
        run_id = self._parent["run_id"]
        client = MlflowClient(self._parent["tracking_uri"])
        try:
            children = child_runs(client, self._parent["experiment_id"], run_id)
            finished = [r for r in children if r.info.status == "FINISHED"]
            client.log_metric(run_id, "sweep/children", len(children))
            client.log_metric(run_id, "sweep/finished", len(finished))
            best = best_child(children, _sweeper_direction(config))
            if best is not None:
                client.log_metric(run_id, "best_" + OBJECTIVE, best.data.metrics[OBJECTIVE])
                client.set_tag(run_id, "best_run_id", best.info.run_id)
                client.set_tag(run_id, TAG_OBJECTIVE_METRIC, best.data.tags.get(TAG_OBJECTIVE_METRIC, ""))
                log.info("sweep best %s=%.4g in run %s", OBJECTIVE, best.data.metrics[OBJECTIVE], best.info.run_id)
            ok = bool(children) and len(finished) == len(children)
            client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        finally:
            for key in self._set_env:
                os.environ.pop(key, None)
            self._set_env, self._parent = [], None


def swept_keys(config: DictConfig) -> list[str]:
    """The keys a multirun varies: its sweeper's params and the command line's sweep overrides."""
    from rlhf.config.preflight import _is_sweep

    keys = [str(k) for k in (OmegaConf.select(config, "hydra.sweeper.params") or {})]
    for o in OmegaConf.select(config, "hydra.overrides.task") or []:
        key = str(o).split("=", 1)[0].lstrip("+~")
        if _is_sweep(str(o)) and key not in keys:
            keys.append(key)
    return keys


def child_run_name(config: DictConfig, swept: list[str]) -> Optional[str]:
    """`lr=0.0001 kl_coef=0.05` from the point's overrides of the swept keys (full keys when leaves repeat)."""
    values = {}
    for o in OmegaConf.select(config, "hydra.overrides.task") or []:
        key, _, value = str(o).partition("=")
        if key.lstrip("+~") in swept:
            values[key.lstrip("+~")] = value
    if not values:
        return None
    leaves = [k.rsplit(".", 1)[-1] for k in values]
    short = len(set(leaves)) == len(leaves)
    return " ".join(f"{k.rsplit('.', 1)[-1] if short else k}={v}" for k, v in values.items())


def _sweeper_direction(config: DictConfig) -> Optional[bool]:
    """Optuna's configured direction wins over the children's tags (the sweep optimized that way)."""
    direction = OmegaConf.select(config, "hydra.sweeper.direction")
    if isinstance(direction, str):
        return direction == "maximize"
    return None
