"""From a checkpoint or model directory back to the run that made it: config, data digests, commit, parent.

  python -m rlhf.lineage outputs/2026-11-24/13-51-45/checkpoints/step_000040
  python -m rlhf.lineage multirun/ppo_kl/2026-11-24_14-00-00/3/final --json
  python -m rlhf.lineage /shared/ckpt/llama3_8b-ppo/final --config     # print the resolved config too

The directory's `rlhf_run.json` (written when the run starts, copied into `final/`) names the MLflow run and
its tracking URI; when a directory was copied without it, the run is found by its `output_dir` tag.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional


class LineageError(LookupError):
    pass


def _find_by_output_dir(client, path: Path) -> Optional[str]:
    """The newest run whose output_dir tag is `path` or one of its parents (searches every experiment)."""
    from rlhf.tracking.lineage import TAG_OUTPUT_DIR

    experiments = [e.experiment_id for e in client.search_experiments()]
    for folder in (path, *path.parents):
        runs = client.search_runs(
            experiments,
            filter_string=f"tags.{TAG_OUTPUT_DIR} = '{folder}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if runs:
            return runs[0].info.run_id
    return None


def find_lineage(path: str, tracking_uri: Optional[str] = None) -> dict:
    """Everything recorded about the run that wrote `path`: ids, tags, params, data inputs, objective."""
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.lineage import OBJECTIVE, read_run_record
    from rlhf.tracking.mlflow_tracker import default_tracking_uri

    target = Path(path).resolve()
    if not target.exists():
        raise LineageError(f"{target} does not exist: give a run's output, checkpoint or final model directory")
    record = read_run_record(target)
    uri = tracking_uri or (record or {}).get("mlflow_tracking_uri") or default_tracking_uri()
    client = MlflowClient(uri)
    run_id = record["mlflow_run_id"] if record else _find_by_output_dir(client, target)
    if run_id is None:
        raise LineageError(
            f"no rlhf_run.json in {target} or its parents, and no run in {uri} has an output_dir tag matching it: "
            "pass --tracking-uri of the store the run logged to"
        )
    run = client.get_run(run_id)
    tags = run.data.tags
    return {
        "path": str(target),
        "record_file": (record or {}).get("record_file"),
        "tracking_uri": uri,
        "run_id": run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "experiment_id": run.info.experiment_id,
        "parent_run_id": tags.get("mlflow.parentRunId"),
        "git_commit": tags.get("git_commit"),
        "output_dir": tags.get("output_dir"),
        "checkpoint_dir": tags.get("checkpoint_dir"),
        "objective": {
            "metric": tags.get("objective.metric"),
            "direction": tags.get("objective.direction"),
            "value": run.data.metrics.get(OBJECTIVE),
        },
        "data": [
            {
                "name": i.dataset.name,
                "digest": i.dataset.digest,
                "source": json.loads(i.dataset.source),
                **{t.key: t.value for t in i.tags if not t.key.startswith("mlflow.")},
            }
            for i in run.inputs.dataset_inputs
        ],
        "tags": {k: v for k, v in tags.items() if k.startswith(("algo", "model", "hw", "host.", "slurm.", "hydra."))},
        "params": dict(run.data.params),
    }


def resolved_config(lineage: dict) -> str:
    """The run's resolved config.yaml, as logged."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(lineage["tracking_uri"])
    local = client.download_artifacts(lineage["run_id"], "config.yaml")
    return Path(local).read_text()


def format_lineage(info: dict) -> str:
    lines = [
        f"run         {info['run_id']} ({info['run_name']}, {info['status']})",
        f"store       {info['tracking_uri']} (experiment {info['experiment_id']})",
        f"parent      {info['parent_run_id'] or '-'}",
        f"commit      {info['git_commit']}",
        f"output_dir  {info['output_dir']}",
        f"objective   {info['objective']['metric']} = {info['objective']['value']} ({info['objective']['direction']})",
    ]
    for d in info["data"]:
        lines.append(f"data        {d['name']}: digest {d['digest']} from {d['source'].get('uri') or d['source']}")
    for k, v in sorted(info["tags"].items()):
        lines.append(f"  {k:<22} {v}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rlhf.lineage", description=__doc__.split("\n\n")[0])
    parser.add_argument("path", help="output, checkpoint (checkpoints/step_*) or final model directory")
    parser.add_argument("--tracking-uri", help="MLflow store (default: the one in rlhf_run.json)")
    parser.add_argument("--json", action="store_true", help="print the lineage as JSON")
    parser.add_argument("--config", action="store_true", help="also print the resolved config")
    args = parser.parse_args(argv)
    try:
        info = find_lineage(args.path, args.tracking_uri)
    except LineageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(info, indent=2) if args.json else format_lineage(info))
    if args.config:
        print(resolved_config(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
