"""A data set smaller than one optimizer step is refused before any process starts, with a batch that fits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cli_refuses_too_few_rows_for_one_step_with_a_batch_that_fits(tmp_path):
    rows = tmp_path / "hh.jsonl"
    with open(rows, "w") as f:
        for i in range(40):
            h = f"\n\nHuman: What is {i} plus 2?\n\nAssistant:"
            f.write(json.dumps({"chosen": f"{h} {i + 2}.", "rejected": f"{h} {i + 3}."}) + "\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.run",
            "algo=dpo",
            "tracking=none",
            f"data.train={rows}",
            "algo.train_batch_samples=64",
            "algo.micro_batch_per_gpu=4",
            f"output_dir={tmp_path / 'out'}",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
        env=dict(os.environ, RAY_ADDRESS=""),
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    # 40 rows less the 5% hold-out (round(2.0) = 2) = 38; whole micro-batches of 4 on 1 rank: 36.
    assert "about 38 rows" in proc.stderr and "algo.train_batch_samples=36" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_the_advised_batch_never_exceeds_the_rows(tmp_path):
    # 3 rows (none held out: round(0.15) = 0) and the tiny preset's micro-batch of 4: the advice is 3, which the
    # planner then splits into micro-batches, not 4 (one micro-batch, more than the rows: refused again).
    rows = tmp_path / "pc.jsonl"
    rows.write_text(
        "".join(json.dumps({"prompt": f"What is {i} plus 1?", "completion": f"{i + 1}"}) + "\n" for i in range(3))
    )
    args = [sys.executable, "-m", "rlhf.run", "algo=sft", "tracking=none", f"data.train={rows}", "mode=plan"]
    env = dict(os.environ, RAY_ADDRESS="")
    proc = subprocess.run([*args, "algo.train_batch_samples=32"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 2 and "about 3 rows" in proc.stderr, proc.stderr[-2000:]
    assert "set algo.train_batch_samples=3 or add data" in proc.stderr
    # Following the advice plans.
    proc = subprocess.run([*args, "algo.train_batch_samples=3"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
