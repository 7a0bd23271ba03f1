"""rlhf/tracking/run_guard.py: a run whose process dies without ending it is KILLED at once; an ended run is
left as its driver ended it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

SCRIPT = r"""
import os, signal, sys
from rlhf.tracking.mlflow_tracker import MLflowTracker
t = MLflowTracker(uri=sys.argv[1], experiment="guard", run_name="g")
print(t.run_id, flush=True)
if sys.argv[2] == "die":
    os.kill(os.getpid(), signal.SIGKILL)
t.end("FINISHED")
"""


def _status(uri: str, run_id: str, want: str, within_s: float = 30.0) -> str:
    from mlflow.tracking import MlflowClient

    deadline = time.monotonic() + within_s
    status = ""
    while time.monotonic() < deadline:
        status = MlflowClient(uri).get_run(run_id).info.status
        if status == want:
            break
        time.sleep(0.2)
    return status


@pytest.mark.parametrize("how,want", [("die", "KILLED"), ("end", "FINISHED")])
def test_guard_marks_only_a_run_its_driver_did_not_end(tmp_path, how, want):
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.lineage import TAG_END_REASON

    uri = f"sqlite:///{tmp_path}/m.db"
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, uri, how], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    run_id = out.stdout.split()[0]
    assert (out.returncode == -signal.SIGKILL) == (how == "die"), out.stderr[-2000:]
    assert _status(uri, run_id, want) == want
    time.sleep(1.0)  # the guard of an ended run must not touch it later either
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == want
    assert (TAG_END_REASON in run.data.tags) == (how == "die")
    assert os.path.exists(tmp_path / "m.db")


def test_a_run_resumed_by_another_driver_is_left_alone(tmp_path):
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.lineage import TAG_DRIVER
    from rlhf.tracking.run_guard import mark_killed

    uri = f"sqlite:///{tmp_path}/m.db"
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("e"), tags={TAG_DRIVER: "222@host"})
    assert not mark_killed(uri, run.info.run_id, "111@host")  # a newer driver resumed it
    assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert mark_killed(uri, run.info.run_id, "222@host")
    assert client.get_run(run.info.run_id).info.status == "KILLED"
