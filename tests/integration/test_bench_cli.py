"""The harness reports a run that is stopped from outside: `timeout` (SIGTERM) in the middle of a workload
leaves a report of the steps recorded so far, saying why it is short, and the command exits normally."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.cli
def test_cli_bench_stopped_by_sigterm_reports_the_recorded_steps(tmp_path: Path) -> None:
    work, results = tmp_path / "work", tmp_path / "results"
    env = {**os.environ, "RLHF_CPU_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rlhf.bench", "tiny", "--work-dir", str(work), "--results", str(results), "--",
         "algo.max_steps=200", "algo.eval_every=0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    records = work / "tiny" / "metrics.jsonl"
    deadline = time.monotonic() + 400
    steps = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists():
            steps = sum('"timing/step_s"' in line for line in records.read_text().splitlines())
        if steps >= 3:
            break
        time.sleep(0.5)
    assert steps >= 3, "the run recorded no steps"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out[-3000:]
    assert "stopped by SIGTERM; reporting the steps recorded so far" in out, out[-3000:]
    report = json.loads(next(results.glob("tiny-*.json")).read_text())
    assert report["interrupted"] == "stopped by SIGTERM"
    assert 3 <= report["steps_run"] < 200
    # The summary is of the steps that ran: the measured ones follow the two warm-up steps.
    assert report["warmup_steps"] == 2 and report["steps"][0]["step"] == 3
    assert report["mean"]["timing/step_s"] > 0
