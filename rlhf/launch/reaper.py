"""The local Ray cluster a run starts does not outlive the run's driver, however the driver ends.

Ray ties its GCS and raylet to the driver with a parent-death signal, but the raylet's children (the dashboard
and runtime-env agents, the workers) only poll for their parent and then wait up to a minute on a GCS that is
already gone: after `kill -9` of the driver they linger 60-120 s, holding memory, GPUs and ports.

`start_reaper()` runs this file as a small watcher process before `ray.init`. The driver holds the write end of
its stdin and names the processes Ray started (`watch`); the watcher keeps a snapshot of their process tree.
When its stdin reaches end of file (the driver died, or exited) it kills, with SIGKILL, whatever is left of
that tree and every worker of those raylets (found by the RAY_RAYLET_PID in their environment). After a normal
`ray.shutdown()` nothing is left and it simply exits; it also exits on its own once everything it watches is
gone. Linux only (it reads /proc); elsewhere it is not started.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Iterable, Optional

SNAPSHOT_EVERY_S = 0.5


def _stat(pid: int) -> Optional[tuple[int, int, str]]:
    """(parent pid, start time in clock ticks, comm) of a live process, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None  # exited; only its parent's wait is missing
    return int(fields[1]), int(fields[19]), comm


def _all_pids() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _tree(roots: dict[int, int]) -> dict[int, int]:
    """pid -> start time of the live processes of `roots` (pid -> start time) and all their descendants."""
    table = {pid: st for pid in _all_pids() if (st := _stat(pid)) is not None}
    alive = {pid: start for pid, start in roots.items() if pid in table and table[pid][1] == start}
    frontier = list(alive)
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start, _) in table.items():
            if ppid == parent and pid not in alive:
                alive[pid] = start
                frontier.append(pid)
    return alive


def _workers_of(raylets: Iterable[int]) -> dict[int, int]:
    """Processes whose environment names one of these raylets (Ray's workers carry RAY_RAYLET_PID)."""
    marks = {f"RAY_RAYLET_PID={pid}".encode() for pid in raylets}
    found = {}
    for pid in _all_pids():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marks.intersection(env) and (st := _stat(pid)) is not None:
            found[pid] = st[1]
    return found


def reap(known: dict[int, int], raylets: Iterable[int]) -> list[int]:
    """SIGKILL every live process of `known` (pid -> start time, checked against pid reuse), their
    descendants and the raylets' workers; returns the pids signalled."""
    targets = {**_tree(known), **_workers_of(raylets)}
    targets.pop(os.getpid(), None)
    for pid, start in targets.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return sorted(targets)


def watch_loop(stdin: IO[bytes]) -> None:
    """The watcher: read `watch <pid>` lines until end of file, snapshotting the watched trees meanwhile."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the driver's terminal is the driver's to handle
    roots: dict[int, int] = {}
    raylets: set[int] = set()
    snapshot: dict[int, int] = {}
    buffer = b""
    fd = stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], SNAPSHOT_EVERY_S)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                reap({**snapshot, **roots}, raylets)
                return
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                words = line.decode().split()
                if len(words) == 2 and words[0] == "watch" and (st := _stat(int(words[1]))) is not None:
                    roots[int(words[1])] = st[1]
                    if st[2] == "raylet":
                        raylets.add(int(words[1]))
        if roots:
            snapshot = {**snapshot, **_tree({**snapshot, **roots})}
            snapshot = {pid: start for pid, start in snapshot.items() if (st := _stat(pid)) and st[1] == start}
            if not snapshot and not _workers_of(raylets):
                return  # the cluster was shut down normally


class Reaper:
    """The driver's end: name the processes to watch; closing (or dying) hands them to the watcher."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def watch(self, pids: Iterable[int]) -> None:
        assert self.proc.stdin is not None
        try:
            for pid in pids:
                self.proc.stdin.write(f"watch {pid}\n".encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass  # the watcher is gone (it exits once everything it watched has ended)

    def close(self) -> None:
        if self.proc.stdin is not None and not self.proc.stdin.closed:
            self.proc.stdin.close()


def children(pid: Optional[int] = None) -> set[int]:
    """The direct children of a process (this one by default)."""
    pid = os.getpid() if pid is None else pid
    return {p for p in _all_pids() if (st := _stat(p)) is not None and st[0] == pid}


def start_reaper() -> Optional[Reaper]:
    """Start the watcher (None where /proc is missing). Its stdin pipe is the only link to this driver."""
    if not Path("/proc/self/stat").exists():
        return None
    proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the driver's process group: a signal to the group leaves it to reap
        close_fds=True,
    )
    return Reaper(proc)


if __name__ == "__main__":
    watch_loop(sys.stdin.buffer)
    # Give the kernel a moment to deliver the kills before the process table is read by whoever waits on us.
    time.sleep(0.1)
