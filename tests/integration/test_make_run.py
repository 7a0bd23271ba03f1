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
        cwd=REPO, env=env, capture_output=True, text=True, timeout=850,
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
    assert 0.0 <= float(held_out.group(1)) <= 1.0 and 0.0 <= float(held_out.group(2)) <= 1.0
    # Where the model went, the MLflow run and how to browse it.
    model = re.search(r"^\s+model\s+(\S+)$", text, re.M)
    assert model and Path(model.group(1)) == out / "final", text[-3000:]
    assert (out / "final" / "model.safetensors").exists() and (out / "final" / "config.json").exists()
    run = re.search(r"^\s+mlflow\s+run (\w+) in (\S+)$", text, re.M)
    assert run and run.group(2) == uri, text[-3000:]
    assert re.search(rf"^\s+browse\s+mlflow ui --backend-store-uri {re.escape(uri)}$", text, re.M), text[-3000:]
    logged = MlflowClient(uri).get_run(run.group(1))
    assert logged.info.status == "FINISHED" and logged.data.tags["algo"] == "grpo"
