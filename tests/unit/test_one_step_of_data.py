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
