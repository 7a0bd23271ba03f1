"""The local Ray cluster a driver starts does not outlive it: kill -9 of the driver leaves no Ray process behind
(Ray's own agents linger 60-120 s without the watcher), and a normal shutdown leaves no watcher behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rlhf.launch.reaper import _stat, _tree

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="the watcher reads /proc (Linux)")

ROOT = Path(__file__).resolve().parents[3]

DRIVER = textwrap.dedent(
    """
    import os, sys, time
    import ray
    from rlhf.workers.cluster import ensure_ray

    ensure_ray(num_gpus=0)

    @ray.remote
    class Worker:
        def pid(self):
            return os.getpid()

    workers = [Worker.remote() for _ in range(2)]
    print("pids", *ray.get([w.pid.remote() for w in workers]), flush=True)
    if sys.argv[1] == "shutdown":
        ray.shutdown()
        print("down", flush=True)
    time.sleep(600)
    """
)


def _start(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, mode],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "RAY_AUTH_MODE": "disabled"},
    )
    for line in proc.stdout:
        if line.startswith("pids"):
            return proc, [int(p) for p in line.split()[1:]]
    raise AssertionError(f"the driver ended early (rc {proc.wait()})")


def _alive(tree: dict[int, int]) -> list[tuple[int, str]]:
    return [(pid, st[2]) for pid, start in tree.items() if (st := _stat(pid)) is not None and st[1] == start]


@pytest.mark.slow  # a local Ray cluster: left out of make test-fast
def test_kill_9_of_the_driver_leaves_no_ray_process_behind() -> None:
    proc, actor_pids = _start("kill")
    try:
        time.sleep(1.0)  # a snapshot of the full tree (the watcher takes one every 0.5 s)
        tree = _tree({proc.pid: _stat(proc.pid)[1]})
        tree.pop(proc.pid)
        names = {name for _, name in _alive(tree)}
        assert {"raylet", "gcs_server", "ray::DashboardA", "ray::RuntimeEnv"} <= names  # comm: 15 chars, names
        assert set(actor_pids) <= set(tree)
        os.kill(proc.pid, signal.SIGKILL)
        killed = time.monotonic()
        proc.wait()
        while _alive(tree) and time.monotonic() - killed < 10:
            time.sleep(0.2)
        left = _alive(tree)
        print(f"\nray processes left {time.monotonic() - killed:.1f}s after kill -9 of the driver: {left}")
        assert not left, f"still running after 10 s: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_a_normal_shutdown_leaves_no_watcher_behind() -> None:
    proc, _ = _start("shutdown")
    try:
        assert proc.stdout.readline().startswith("down")
        end = time.monotonic() + 10
        while time.monotonic() < end:
            kids = _tree({proc.pid: _stat(proc.pid)[1]})
            kids.pop(proc.pid)
            if not _alive(kids):
                break
            time.sleep(0.3)
        assert not _alive(kids), _alive(kids)
    finally:
        proc.kill()
        proc.wait()
