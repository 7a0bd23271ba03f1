"""The README's first command, `make run`: the embedded default (GRPO on the tiny chat model, on CPU) through
the Makefile, its environment and the CLI, with outputs, Hydra's run directory and the MLflow store under tmp.

`-o .make/installed` tells make to treat the install stamp as up to date: the test runs the `run` recipe and
the Makefile's exported environment, not a pip install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Third-party lines a run must not print unless asked to (-v): rlhf/quiet.py.
NOISE = (
    "Failed to load weights",
    "Token authentication is enabled",
    "Setting accelerator to CPU",
    "dataset source can be interpreted",
    "requires_grad",
    "UserWarning",
    "FutureWarning",
    "Writing model shards",
    "Loading weights",
    "INFO mlflow",
)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
def test_make_run_trains_and_reports(tmp_path):
    from mlflow.tracking import MlflowClient

    out = tmp_path / "out"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = f"output_dir={out} tracking.tracking_uri={uri} hydra.run.dir={tmp_path}/hydra"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-o", ".make/installed", "run", f"PYTHON={sys.executable}", f"ARGS={args}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "pip install" not in proc.stdout, "make run must not reinstall when told the stamp is current"

    # What ran: the default algorithm on the tiny model, on CPU, every step.
    head = re.search(r"== rlhf: (\w+) on (\S+) \(cpu, 1 rank\(s\)\) finished (\d+) steps in [\d.]+s", text)
    assert head, text[-3000:]
    assert head.group(1) == "grpo" and head.group(2) == "tiny:llama_chat" and int(head.group(3)) > 0
    # Start vs end of a reward: "<metric>  <first> -> <last>".
    assert re.search(r"^\s+rollout/reward_mean\s+-?[\d.]+ ->\s+-?[\d.]+$", text, re.M), text[-3000:]
    held_out = re.search(r"^\s+held-out reward\s+(-?[\d.]+) ->\s+(-?[\d.]+)", text, re.M)
    assert held_out, text[-3000:]
    # Two terms of weight 1, each in [0, 1] (conf/reward/numeric.yaml): the format and the exact match.
    assert 0.0 <= float(held_out.group(1)) <= 2.0 and 0.0 <= float(held_out.group(2)) <= 2.0
    # The task's accuracy (exact match on the 100 held-out prompts, greedy), start -> end; the reward rises.
    accuracy = re.search(r"^\s+held-out accuracy\s+([\d.]+) ->\s+([\d.]+)", text, re.M)
    assert accuracy, text[-3000:]
    start, end = float(accuracy.group(1)), float(accuracy.group(2))
    assert 0.0 <= start <= 1.0 and 0.0 <= end <= 1.0
    # The warmed model guesses the answer (0.00 at the start; the warm-up is fixed, so every seed starts there)
    # and RL finds the rule: 0.97 to 1.00 at the end over seeds 0-4. The margin of 0.5 is ten times the binomial
    # standard deviation of a 100-prompt accuracy (0.05 at most) and far beyond the spread between seeds.
    assert start <= 0.2, (start, end)
    assert end >= start + 0.5, (start, end)
    assert float(held_out.group(2)) > float(held_out.group(1)), held_out.groups()
    # What the run said it would do, and nothing from third-party libraries (rlhf/quiet.py).
    assert re.search(r"^run: 20 steps of 8 prompts x \d+ samples", text, re.M), text[:3000]
    noise = [line for line in text.splitlines() if any(n in line for n in NOISE)]
    assert not noise, noise[:10]
    # Where the model went, the MLflow run and how to browse it.
    model = re.search(r"^\s+model\s+(\S+)$", text, re.M)
    assert model and Path(model.group(1)) == out / "final", text[-3000:]
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "config.json").exists()
    run = re.search(r"^\s+mlflow\s+run (\w+) in (\S+)$", text, re.M)
    assert run and run.group(2) == uri, text[-3000:]
    assert re.search(rf"^\s+browse\s+mlflow ui --backend-store-uri {re.escape(uri)}$", text, re.M), text[-3000:]
    logged = MlflowClient(uri).get_run(run.group(1))
    assert logged.info.status == "FINISHED" and logged.data.tags["algo"] == "grpo"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_verbose_shows_what_the_default_hides(tmp_path):
    """`-v` lets third-party warnings through, in the driver and in the Ray workers."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS", "RAY_AUTH_MODE", "RLHF_VERBOSE")
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.run",
            "-v",
            "algo.max_steps=1",
            "eval.max_prompts=8",
            f"output_dir={tmp_path}/out",
            f"tracking.tracking_uri=sqlite:///{tmp_path}/mlflow.db",
            f"hydra.run.dir={tmp_path}/hydra",
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=850,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-4000:]
    assert "Token authentication is enabled" in text, text[-3000:]
    # DeepSpeed names its CPU fallback in the driver and again in each worker process.
    worker_lines = [
        line for line in text.splitlines() if "Setting accelerator to CPU" in line and "Worker pid=" in line
    ]
    assert worker_lines, text[-3000:]
