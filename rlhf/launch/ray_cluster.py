"""One Ray cluster across the nodes of a multi-node submitit (Slurm) job.

Submitit runs the same Hydra job on every task of the allocation (one task per node in the Slurm launcher
profiles). Rank 0 starts the Ray head, waits until every node has joined, exports $RAY_ADDRESS and runs the
training driver; the other ranks join as workers and block until the driver is done (a file in the job's
output directory) or the head stops answering. Ports come from the Slurm job id, so two jobs sharing a node
never collide, and the Ray processes of each rank are a child process group that is killed on the way out.

  python -m rlhf.run -m hydra/launcher=slurm_gpu hw=a100x16 model=llama3_8b algo=ppo   # 2 nodes, 1 cluster
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

DONE_FILE = ".ray_driver_done"
# The head port is PORT_BASE + 10 * (job id mod PORT_SLOTS); the next few ports serve the same head.
PORT_BASE = 20000
PORT_SLOTS = 900


@dataclass(frozen=True)
class Topology:
    rank: int
    num_nodes: int
    head_host: str
    job_id: str

    @property
    def is_head(self) -> bool:
        return self.rank == 0


def head_port(job_id: str) -> int:
    """The GCS port of a job's head, in [20000, 29000): e.g. job 123456 -> 20000 + 10 * (123456 % 900) = 21560."""
    digits = "".join(c for c in str(job_id) if c.isdigit()) or "0"
    return PORT_BASE + 10 * (int(digits) % PORT_SLOTS)


def job_topology() -> Optional[Topology]:
    """The node layout of the current submitit job when it spans several nodes, else None."""
    if "SUBMITIT_EXECUTOR" not in os.environ:
        return None
    import submitit

    env = submitit.JobEnvironment()
    if env.num_nodes <= 1:
        return None
    if env.num_tasks != env.num_nodes:
        raise RuntimeError(
            f"the Ray bootstrap needs one task per node, got {env.num_tasks} tasks on {env.num_nodes} nodes: "
            "set hydra.launcher.tasks_per_node=1 (Ray starts the per-GPU processes itself)"
        )
    return Topology(rank=env.global_rank, num_nodes=env.num_nodes, head_host=env.hostnames[0], job_id=env.job_id)


def _ray_start(args: list[str], temp_dir: Path) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "ray.scripts.scripts",
        "start",
        "--block",
        "--disable-usage-stats",
        f"--temp-dir={temp_dir}",
        *args,
    ]
    # Own process group: stopping it stops this job's raylet and GCS, not another job's on the same node.
    return subprocess.Popen(cmd, start_new_session=True)


def _stop(proc: subprocess.Popen, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def wait_for_nodes(address: str, expected: int, timeout_s: float) -> int:
    """Block until `expected` Ray nodes are alive at `address`; raise naming the shortfall after `timeout_s`."""
    import ray

    deadline = time.time() + timeout_s
    ray.init(address=address, log_to_driver=False)
    try:
        while True:
            alive = sum(1 for n in ray.nodes() if n["Alive"])
            if alive >= expected:
                return alive
            if time.time() > deadline:
                raise TimeoutError(
                    f"only {alive} of {expected} nodes joined the Ray head at {address} within {timeout_s:.0f}s: "
                    "check the worker ranks' logs in the submitit folder (firewall, wrong interface, ports)"
                )
            time.sleep(2)
    finally:
        ray.shutdown()


@contextmanager
def submitit_ray_cluster(output_dir: Path, join_timeout_s: float = 600.0) -> Iterator[str]:
    """Yields "single" (no multi-node job: nothing started), "driver" on rank 0 or "worker" on the others.

    A worker has already served its node when the block is entered; the caller returns without training.
    """
    topo = job_topology()
    if topo is None:
        yield "single"
        return
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    done = output_dir / DONE_FILE
    head_ip = socket.gethostbyname(topo.head_host)
    port = head_port(topo.job_id)
    address = f"{head_ip}:{port}"
    temp_dir = Path("/tmp") / f"rlhf-ray-{topo.job_id}-{topo.rank}"
    # The head's raylet takes port+1/+2, a worker's port+4/+5: a worker sharing the head's host (several slurmd
    # on one machine) must not collide with it. Raylets check a worker port is free before handing it out.
    nm_port = port + 1 if topo.is_head else port + 4
    ports = [
        f"--node-manager-port={nm_port}",
        f"--object-manager-port={nm_port + 1}",
        f"--min-worker-port={port + 100}",
        f"--max-worker-port={port + 999}",
    ]
    # `ray start --head` turns token authentication on by default, but a joining `ray start` or `ray.init`
    # defaults to off and is refused: one mode for every Ray process of the job, all reading the same token
    # (~/.ray/auth_token on a shared home, or $RAY_AUTH_TOKEN). RAY_AUTH_MODE=disabled opts out on closed networks.
    os.environ.setdefault("RAY_AUTH_MODE", "token")
    if topo.is_head:
        done.unlink(missing_ok=True)
        proc = _ray_start(
            [
                "--head",
                f"--node-ip-address={head_ip}",
                f"--port={port}",
                f"--ray-client-server-port={port + 3}",
                "--include-dashboard=false",
                *ports,
            ],
            temp_dir,
        )
        try:
            wait_for_nodes(address, topo.num_nodes, join_timeout_s)
            os.environ["RAY_ADDRESS"] = address
            yield "driver"
        finally:
            done.write_text(address + "\n")
            _stop(proc)
        return
    deadline = time.time() + join_timeout_s
    while not _reachable(head_ip, port):
        if time.time() > deadline:
            raise TimeoutError(f"rank {topo.rank}: the Ray head at {address} did not come up in {join_timeout_s:.0f}s")
        time.sleep(2)
    proc = _ray_start([f"--address={address}", *ports], temp_dir)
    try:
        while not done.exists() and proc.poll() is None and _reachable(head_ip, port):
            time.sleep(5)
        yield "worker"
    finally:
        _stop(proc)
