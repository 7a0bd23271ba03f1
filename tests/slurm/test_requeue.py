"""A Slurm job cut by its timeout signal is requeued and resumes from its last checkpoint, in one MLflow run.

One SFT point goes through the Submitit Slurm launcher (conf/hydra/launcher/slurm_cpu.yaml) on the local
cluster (scripts/start_slurm.sh). Once its first checkpoint is on disk the test sends the job USR2, the signal
Slurm sends `signal_delay_s` before a time limit; submitit counts it as a timeout (a limit under 10 minutes
makes every USR2 one, see submitit's SignalHandler.has_timed_out), checkpoints the Hydra launcher's callable
and runs `scontrol requeue`. A real time limit is not used: Slurm may send the signal up to a minute early,
before any checkpoint exists, and the shortest limit is one minute.

Asserted: Slurm restarted the job once, submitit logged the requeue, the second attempt resumed at the saved
step (not 0), the final model exists, and one MLflow run holds every step 1..N exactly once: the steps before
the checkpoint from the first attempt, those after it from the second.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from tests.slurm.test_slurm import REPO, _slurm_problem

pytestmark = pytest.mark.slurm

# 48 rows / 16 samples a step x 2 epochs = 6 steps; a checkpoint every 2 leaves steps 3..6 (several seconds
# each on this CPU) between the first checkpoint and the end, so the signal lands while the job trains.
TOTAL_STEPS = 16  # long enough that the cut lands mid-run on a fast machine too
SAVE_EVERY = 2


@pytest.fixture(scope="module", autouse=True)
def needs_slurm():
    problem = _slurm_problem()
    if problem:
        pytest.skip(problem)


def _wait_for(what: str, predicate, timeout_s: float, proc: subprocess.Popen, logs) -> object:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            pytest.fail(f"the sweep exited ({proc.returncode}) while waiting for {what}\njob logs:\n{logs()}")
        time.sleep(0.5)
    pytest.fail(f"no {what} within {timeout_s:.0f}s\njob logs:\n{logs()}")


def _job_field(job_id: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    m = re.search(rf"\b{field}=(\S+)", out)
    return m.group(1) if m else None


@pytest.mark.timeout(600)
def test_requeued_job_resumes_from_its_checkpoint_in_the_same_mlflow_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from rlhf.engines.checkpoint import STATE_FILE, latest_checkpoint
    from rlhf.tracking.callbacks import PARENT_FILE, child_runs

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}
    env.pop("RLHF_PARENT_RUN_ID", None)
    sweep_dir = tmp_path / "sweep"
    point_dir = sweep_dir / "0"
    args = [
        "-m",
        "hydra/launcher=slurm_cpu",
        "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.timeout_min=5",
        "hydra.launcher.signal_delay_s=30",
        "algo=sft",
        f"algo.save_every={SAVE_EVERY}",
        "algo.max_steps=100",
        f"data.sources.tiny_chat.max_samples={8 * TOTAL_STEPS}",
        "data.sources.tiny_chat.eval_split=null",
        "tracking.log_model=false",
        f"hydra.sweep.dir={sweep_dir}",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.run", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def logs() -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(sweep_dir.glob(".submitit/*/*_log.*"))
        )

    job_id = None
    try:
        job_dir = _wait_for(
            "submitit job folder",
            lambda: next((d for d in sweep_dir.glob(".submitit/*") if re.fullmatch(r"\d+(_\d+)?", d.name)), None),
            120,
            proc,
            logs,
        )
        job_id = job_dir.name
        first_ckpt = _wait_for(
            "first checkpoint", lambda: latest_checkpoint(point_dir / "checkpoints"), 240, proc, logs
        )
        saved_step = json.loads((first_ckpt / STATE_FILE).read_text())["step"]
        subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
        _wait_for("requeue", lambda: _job_field(job_id, "Restarts") not in (None, "0"), 60, proc, logs)
        # A requeued job waits about two minutes (Slurm's BeginTime, set once the cut attempt has ended) before
        # it is eligible again; start it as soon as it is pending.
        # (Once Restarts is 1 the cut attempt is over: any state but PENDING means the second one started.)
        state = _wait_for(
            "requeued job pending or running again",
            lambda: (
                _job_field(job_id, "JobState") in ("PENDING", "RUNNING", "COMPLETED") and _job_field(job_id, "JobState")
            ),
            90,
            proc,
            logs,
        )
        if state == "PENDING":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)
        out, _ = proc.communicate(timeout=420)
    finally:
        if proc.poll() is None:
            proc.kill()
            if job_id:
                subprocess.run(["scancel", job_id], timeout=30)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-4000:]}\njob logs:\n{logs()}"

    assert _job_field(job_id, "Restarts") == "1", "Slurm ran the job twice: once cut, once to the end"
    job_log = "\n".join(p.read_text() for p in job_dir.glob("*_log.*"))
    assert "this job is timed-out" in job_log and f"Requeued job {job_id}" in job_log, job_log[-4000:]
    resumed = re.findall(r"resuming at step (\d+)/(\d+)", job_log)
    assert len(resumed) == 1, f"exactly one attempt resumes, found {resumed}\n{job_log[-4000:]}"
    start, total = map(int, resumed[0])
    assert total == TOTAL_STEPS
    # The signal came after the checkpoint at `saved_step`; a later one may have landed before the job stopped.
    assert saved_step <= start < TOTAL_STEPS and start % SAVE_EVERY == 0, (saved_step, start)
    assert (point_dir / "final" / "config.json").is_file(), "the second attempt saved the final model"

    parent = json.loads((sweep_dir / PARENT_FILE).read_text())
    client = MlflowClient(uri)
    children = child_runs(client, parent["experiment_id"], parent["run_id"])
    assert len(children) == 1, f"one MLflow run across both attempts, got {[c.info.run_id for c in children]}"
    run = children[0]
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("slurm.job_id") == job_id
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "train/loss"))
    # Attempt 1 logged 1..k (k >= start), attempt 2 start+1..6: every step is there, those up to the checkpoint
    # once; a step past the checkpoint but before the signal is logged by both attempts.
    assert set(steps) == set(range(1, TOTAL_STEPS + 1)), steps
    assert steps[:start] == list(range(1, start + 1)), f"steps up to {start} were not retrained: {steps}"
