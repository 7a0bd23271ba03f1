"""One run per output directory: an exclusive lock while a run lives, and a marker once it has finished.

Two runs on one `output_dir` would resume from each other's live checkpoints and both write `final/`. The lock
is an `flock` on `<output_dir>/.rlhf.lock`: the kernel drops it when its process dies (kill -9 included), so a
stale lock never blocks; the file also records who held it (pid, host, start time), so a takeover after a crash
is reported with the dead run's identity. `finished.json` marks a run that ended normally: re-running such a
directory with resume=true says so instead of training again.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Optional

LOCK_FILE = ".rlhf.lock"
FINISHED_FILE = "finished.json"

# Locks held by this process, by directory: a second run in the same process (tests, sweeps run in-process)
# takes over its own earlier claim instead of blocking on it.
_HELD: dict[str, RunDirClaim] = {}


class RunDirError(RuntimeError):
    """The output directory cannot be used for this run; the message says why and what to do."""


@dataclass
class RunDirClaim:
    path: Path
    handle: IO[str]

    def release(self) -> None:
        """Clean end: the lock file is emptied (no stale-lock report next time) and unlocked."""
        if _HELD.get(str(self.path)) is self:
            del _HELD[str(self.path)]
        try:
            self.handle.seek(0)
            self.handle.truncate()
            self.handle.flush()
            fcntl.flock(self.handle, fcntl.LOCK_UN)
        finally:
            self.handle.close()


def _holder(text: str) -> Optional[dict]:
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return None
    return info if isinstance(info, dict) else None


def _describe(info: Optional[dict]) -> str:
    if not info:
        return "a run that left no details"
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("started", 0))))
    return f"pid {info.get('pid')} on host {info.get('host')}, started {started}: {info.get('command', '?')}"


def finished_info(out: Path) -> Optional[dict]:
    """The finished marker of `out`, or None when the run there never finished."""
    marker = Path(out) / FINISHED_FILE
    if not marker.is_file():
        return None
    return _holder(marker.read_text()) or {}


def claim_run_dir(out: Path, *, resume: bool) -> RunDirClaim:
    """Lock `out` for this run (creating it) or raise RunDirError naming the live holder or the finished run.

    With resume=true a finished directory is refused (there is nothing to resume); with resume=false its marker
    is removed, since the run starts over.
    """
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    own = _HELD.pop(str(out), None)
    if own is not None:
        own.release()
    handle = open(out / LOCK_FILE, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = _describe(_holder(handle.read()))
        handle.close()
        raise RunDirError(
            f"output_dir {out} is in use by another run ({holder}). Two runs in one directory would resume from "
            "each other's checkpoints: wait for that run to end, stop it, or give this one another output_dir=..."
        ) from None
    handle.seek(0)
    previous = _holder(handle.read())
    if previous:
        print(f"rlhf: taking over {out}: the run that held it is gone ({_describe(previous)})", file=sys.stderr)
    finished = finished_info(out)
    if finished is not None:
        if resume:
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
            steps = finished.get("steps", "?")
            model = finished.get("model_dir") or out / "final"
            raise RunDirError(
                f"output_dir {out} holds a run that already finished ({finished.get('algo', '?')}, {steps} steps, "
                f"model in {model}); there is nothing to resume. To train on "
                f"from it: model.name_or_path={model} with a new output_dir=...; "
                "to train again from scratch in this directory: resume=false"
            )
        (out / FINISHED_FILE).unlink()
    handle.seek(0)
    handle.truncate()
    handle.write(
        json.dumps(
            {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": " ".join(sys.argv)}
        )
    )
    handle.flush()
    claim = RunDirClaim(out, handle)
    _HELD[str(out)] = claim
    return claim


def mark_finished(out: Path, info: dict) -> None:
    """Write the finished marker atomically (a crash while writing leaves no marker, never half of one)."""
    out = Path(out)
    tmp = out / f".{FINISHED_FILE}.tmp"
    tmp.write_text(json.dumps({**info, "finished": time.time()}, indent=2, sort_keys=True))
    os.replace(tmp, out / FINISHED_FILE)
