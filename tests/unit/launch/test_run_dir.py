"""One run per output directory: a live holder is refused, a dead one is taken over, a finished run is not redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlhf.launch.run_dir import FINISHED_FILE, RunDirError, claim_run_dir, finished_info, mark_finished

ROOT = Path(__file__).resolve().parents[3]

_HOLD = """
import sys, time
from rlhf.launch.run_dir import claim_run_dir
claim_run_dir(sys.argv[1], resume=True)
print("held", flush=True)
time.sleep(120)
"""


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_live_holder_is_refused_and_a_killed_one_taken_over(tmp_path, capsys):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        with pytest.raises(RunDirError, match=rf"in use by another run \(pid {proc.pid} on host .*another output_dir"):
            claim_run_dir(out, resume=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    # The kernel dropped the dead process's lock; its record says who it was.
    claim = claim_run_dir(out, resume=True)
    assert f"the run that held it is gone (pid {proc.pid}" in capsys.readouterr().err
    assert json.loads((out / ".rlhf.lock").read_text())["pid"] == os.getpid()
    claim.release()
    # A clean release leaves nothing to report.
    claim_run_dir(out, resume=True).release()
    assert "gone" not in capsys.readouterr().err


def test_same_process_may_claim_again(tmp_path):
    first = claim_run_dir(tmp_path, resume=True)
    second = claim_run_dir(tmp_path, resume=True)  # e.g. a run that failed before releasing, retried in-process
    assert first.handle.closed and not second.handle.closed
    second.release()


def test_finished_run_is_not_resumed_and_resume_false_starts_over(tmp_path):
    claim_run_dir(tmp_path, resume=True).release()
    mark_finished(tmp_path, {"algo": "sft", "steps": 8, "model_dir": str(tmp_path / "final")})
    assert finished_info(tmp_path)["steps"] == 8
    with pytest.raises(RunDirError, match=r"already finished \(sft, 8 steps.*resume=false") as info:
        claim_run_dir(tmp_path, resume=True)
    assert f"To train on from it: model.name_or_path={tmp_path / 'final'} with a new output_dir" in str(info.value)
    claim = claim_run_dir(tmp_path, resume=False)
    assert not (tmp_path / FINISHED_FILE).exists()
    claim.release()


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MLFLOW_TRACKING_URI="sqlite:///" + str(Path(args[0].split("=", 1)[1]).parent / "m.db"))
    return subprocess.run(
        [sys.executable, "-m", "rlhf.run", *args, "tracking=none"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=240,
    )


def test_cli_refuses_a_busy_and_a_finished_directory_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    proc = _holder(out)
    try:
        start = time.monotonic()
        busy = _cli(f"output_dir={out}")
        assert busy.returncode == 2, busy.stderr[-2000:]
        assert f"in use by another run (pid {proc.pid}" in busy.stderr and "Traceback" not in busy.stderr
        assert time.monotonic() - start < 120
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    mark_finished(out, {"algo": "grpo", "steps": 20})
    done = _cli(f"output_dir={out}")
    assert done.returncode == 2 and "already finished (grpo, 20 steps" in done.stderr, done.stderr[-2000:]
    assert not (out / "checkpoints").exists()
