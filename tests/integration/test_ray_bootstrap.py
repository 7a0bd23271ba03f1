"""The multi-node Ray bootstrap (rlhf/launch/ray_cluster.py) for real: two processes, one real Ray cluster.

Each process gets the environment submitit sees on one task of a 2-node Slurm job (node list
"localhost,localhost", so both "nodes" are this machine) and enters `submitit_ray_cluster`: rank 0 starts a
real Ray head and waits for the other node, rank 1 starts a real raylet that joins it and blocks until the
driver is done. Asserted: the driver sees 2 alive Ray nodes, the worker's block opens only after the driver's
block has closed, and both processes exit 0 within a bounded time with their Ray processes gone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# What one rank runs: the bootstrap, then (driver) count the nodes through the exported RAY_ADDRESS.
RANK_SCRIPT = """
import json, os, sys, time
from pathlib import Path
from rlhf.launch.ray_cluster import submitit_ray_cluster

out = Path(sys.argv[1])
record = {"rank": int(os.environ["SLURM_PROCID"])}
with submitit_ray_cluster(out / "job", join_timeout_s=120) as role:
    record["role"] = role
    record["entered"] = time.time()
    if role == "driver":
        import ray
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False)
        record["alive_nodes"] = sum(1 for n in ray.nodes() if n["Alive"])
        ray.shutdown()
        time.sleep(3)  # the worker must still be blocked meanwhile
    record["left"] = time.time()
(out / f"rank{record['rank']}.json").write_text(json.dumps(record))
"""


def _rank_env(rank: int, job_id: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_", "RAY_ADDRESS"))}
    env.update(
        {
            "SUBMITIT_EXECUTOR": "slurm",
            "SLURM_JOB_ID": job_id,
            "SLURM_JOB_NUM_NODES": "2",
            "SLURM_NTASKS": "2",
            "SLURM_JOB_NODELIST": "localhost,localhost",
            "SLURM_NODEID": str(rank),
            "SLURM_PROCID": str(rank),
            "SLURM_LOCALID": "0",
            "RAY_USAGE_STATS_ENABLED": "0",
        }
    )
    return env


def _ray_pids(job_id: str) -> list[int]:
    """Processes still running from this job's Ray temp dirs (/tmp/rlhf-ray-<job>-<rank>)."""
    out = subprocess.run(["pgrep", "-f", f"rlhf-ray-{job_id}-"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.timeout(300)
def test_two_ranks_form_one_ray_cluster_and_the_worker_waits_for_the_driver(tmp_path):
    # A job id whose head port slot is unlikely to be taken by a concurrent run: 20000 + 10 * (pid % 900).
    job_id = str(900_000 + os.getpid() % 900)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, str(tmp_path)],
            cwd=REPO,
            env=_rank_env(r, job_id),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outputs = []
    t0 = time.time()
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    wall = time.time() - t0
    for rank, (p, out) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, f"rank {rank} exited {p.returncode}:\n{out[-4000:]}"
    driver = json.loads((tmp_path / "rank0.json").read_text())
    worker = json.loads((tmp_path / "rank1.json").read_text())

    assert driver["role"] == "driver" and worker["role"] == "worker"
    assert driver["alive_nodes"] == 2, "the worker's raylet joined the head before the driver ran"
    assert worker["entered"] >= driver["left"], "the worker served its node until the driver's block closed"
    assert (tmp_path / "job" / ".ray_driver_done").is_file()
    assert wall < 240
    # Each rank stops its own Ray processes (head: GCS and raylet; worker: raylet) on the way out.
    deadline = time.time() + 30
    while _ray_pids(job_id) and time.time() < deadline:
        time.sleep(1)
    assert _ray_pids(job_id) == [], "Ray processes outlived their rank"
