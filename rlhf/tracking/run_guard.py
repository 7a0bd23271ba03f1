"""An MLflow run never stays RUNNING after its driver is gone, even when nothing starts in its directory again.

`start_guard(uri, run_id)` runs this file as a small watcher process holding the read end of a pipe whose write
end only the driver has. The driver's tracker calls `release()` when it ends the run (FINISHED, FAILED or
KILLED by a signal handler): the watcher reads `end` and exits without touching the run. If the pipe closes
without `end` (kill -9, an out-of-memory kill, a lost terminal), the watcher marks the run KILLED with the
`rlhf.end_reason` tag, as the next start in the directory would (rlhf/tracking/lineage.py
close_orphaned_run, which stays the fallback when the watcher itself could not run).
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Optional

END = b"end\n"
REASON = "its driver died without ending it (seen by the run's guard process when the driver's pipe closed)"


class Guard:
    """The driver's end of the pipe."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc

    def release(self) -> None:
        """The run was ended by the driver: the watcher leaves it alone and exits."""
        if self.proc.stdin is None or self.proc.stdin.closed:
            return
        try:
            self.proc.stdin.write(END)
            self.proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass


def driver_id() -> str:
    import socket

    return f"{os.getpid()}@{socket.gethostname()}"


def start_guard(uri: str, run_id: str, driver: str) -> Optional[Guard]:
    """Start the watcher for one run (None if it cannot be started: the next start's check remains). `driver`
    is the run's TAG_DRIVER value this driver set: a run resumed meanwhile by another driver is left alone."""
    try:
        proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), uri, run_id, driver],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a signal to the driver's process group leaves it to do its job
            close_fds=True,
        )
    except OSError:
        return None
    return Guard(proc)


def mark_killed(uri: str, run_id: str, driver: str) -> bool:
    """KILLED with the end reason, if the run is still RUNNING under `driver` (not resumed by another process);
    returns whether it was marked."""
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.lineage import TAG_DRIVER, TAG_END_REASON

    client = MlflowClient(uri)
    run = client.get_run(run_id)
    if run.info.status != "RUNNING" or run.data.tags.get(TAG_DRIVER, driver) != driver:
        return False
    client.set_tag(run_id, TAG_END_REASON, REASON)
    client.set_terminated(run_id, status="KILLED")
    return True


def main(uri: str, run_id: str, driver: str) -> None:
    data = b""
    fd = sys.stdin.fileno()
    while chunk := os.read(fd, 64):
        data += chunk
    if END not in data:
        mark_killed(uri, run_id, driver)


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the driver's terminal is the driver's to handle
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    main(sys.argv[1], sys.argv[2], sys.argv[3])
