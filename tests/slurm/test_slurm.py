"""A sweep through the Submitit Slurm launcher on a real Slurm cluster (scripts/start_slurm.sh makes one here).

Two tiny SFT points become two Slurm jobs (profile conf/hydra/launcher/slurm_cpu.yaml, one CPU each so both run
at once on a 2-core node); both finish and reach MLflow as children of the sweep's parent run, tagged with their
Slurm job ids.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slurm


def _slurm_problem() -> str | None:
    if shutil.which("sinfo") is None:
        return "no Slurm here (sinfo not found): run scripts/start_slurm.sh as root to start a one-node cluster"
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo failed ({e}): is slurmctld running? scripts/start_slurm.sh starts it"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}; scripts/start_slurm.sh starts slurmctld and slurmd"
    states = out.stdout.split()
    if not any(s.startswith(("idle", "mixed", "allocated", "completing")) for s in states):
        return f"no usable Slurm node (states: {states or 'none'}); see sinfo -R"
    return None


@pytest.fixture(scope="module", autouse=True)
def needs_slurm():
    problem = _slurm_problem()
    if problem:
        pytest.skip(problem)


@pytest.mark.timeout(1200)
def test_two_point_sweep_through_slurm_reaches_mlflow(tmp_path):
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.callbacks import PARENT_FILE, child_runs
    from rlhf.tracking.lineage import OBJECTIVE

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RLHF_PARENT_RUN_ID", None)
    sweep_dir = tmp_path / "sweep"
    args = [
        "-m",
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=20",
        "algo=sft",
        "algo.lr=1e-4,3e-4",
        "algo.max_steps=1",
        "data.sources.tiny_chat.max_samples=32",
        "data.sources.tiny_chat.eval_split=null",
        "tracking.log_model=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.run", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=1100
    )
    logs = "\n".join(p.read_text()[-2000:] for p in sweep_dir.glob(".submitit/*/*_log.*"))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-4000:]}\njob logs:\n{logs}"

    parent = json.loads((sweep_dir / PARENT_FILE).read_text())
    client = MlflowClient(uri)
    children = child_runs(client, parent["experiment_id"], parent["run_id"])
    assert len(children) == 2
    job_ids = {c.data.tags.get("slurm.job_id") for c in children}
    assert None not in job_ids and len(job_ids) == 2, "each point ran as its own Slurm job"
    assert all(c.info.status == "FINISHED" and OBJECTIVE in c.data.metrics for c in children)
    assert sorted(float(c.data.params["algo.lr"]) for c in children) == [1e-4, 3e-4]
    assert client.get_run(parent["run_id"]).info.status == "FINISHED"
