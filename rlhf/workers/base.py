"""What every Ray worker of a role shares: its rank, the rendezvous, seeding, logging, a heartbeat."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path

# Heartbeats go to Ray's key-value store (the GCS), one key per actor: the driver reads them while it waits on
# a call (rlhf/workers/group.py), so a stopped or wedged process is told apart from a long but alive one.
HEARTBEAT_NAMESPACE = "rlhf_heartbeat"
HEARTBEAT_INTERVAL_S = 1.0


def heartbeat_key(actor_id: str) -> str:
    return f"actor/{actor_id}"


def _call_frames() -> str:
    """Where the actor's calls are: the innermost frame (file:line in fn) of the main thread, or, in an actor
    with concurrency groups (calls on pool threads), of each thread inside this package's code."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    me = threading.get_ident()
    frames = sys._current_frames()
    main = frames.get(threading.main_thread().ident)
    busy = []
    for ident, frame in frames.items():
        if ident == me:
            continue
        f = frame
        while f is not None and not f.f_code.co_filename.startswith(here):
            f = f.f_back
        if f is not None:
            busy.append((frame, f))
    if not busy:
        busy = [(main, main)] if main is not None else []
    if not busy:
        return "?"

    def at(f) -> str:
        return f"{f.f_code.co_filename}:{f.f_lineno} in {f.f_code.co_name}"

    return "; ".join(at(inner) + ("" if own is inner else f" (from {at(own)})") for inner, own in busy)


def start_heartbeat(interval_s: float = HEARTBEAT_INTERVAL_S) -> bool:
    """Beat from a daemon thread of this actor: a counter, the pid, the host and where the main thread is.

    A thread keeps beating while a call computes (torch and tokenizers release the interpreter lock), and stops
    with the whole process under SIGSTOP, a swap storm or a hard deadlock in C code. Returns False outside a Ray
    actor (a worker class built in the driver's own process for a test).
    """
    try:
        import ray
        from ray.experimental.internal_kv import _internal_kv_initialized, _internal_kv_put

        actor_id = ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - no Ray here: nothing to beat to
        return False
    if not actor_id or not _internal_kv_initialized():
        return False
    key, pid, host = heartbeat_key(actor_id), os.getpid(), socket.gethostname()

    def beat(n: int) -> None:
        record = {"n": n, "pid": pid, "host": host, "t": time.time(), "where": _call_frames()}
        _internal_kv_put(key, json.dumps(record), overwrite=True, namespace=HEARTBEAT_NAMESPACE)

    def loop() -> None:
        n = 1
        while True:
            time.sleep(interval_s)
            n += 1
            try:
                beat(n)
            except Exception:  # noqa: BLE001 - the GCS is going away with the run; the driver notices the silence
                time.sleep(interval_s)

    beat(0)
    threading.Thread(target=loop, name="rlhf-heartbeat", daemon=True).start()
    return True


class RankWorker:
    def __init__(self, rank: int, world_size: int):
        import faulthandler
        import signal

        # Start-up phases of this rank (seconds), read by the driver after setup (``startup_times``).
        self._startup: dict[str, float] = {}

        # First, so that a process stopped while it loads its model is found as surely as one stopped mid-step.
        start_heartbeat()

        # `kill -USR1 <pid>` prints every thread's stack into the worker log: the first thing to look at in a hang.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.rank = rank
        self.world_size = world_size
        logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
        # CPU runs: the driver gives each process its share of the cores (RLHF_CPU_THREADS); oversubscribed
        # intra-op threads make tiny models 10-20x slower.
        threads = os.environ.get("RLHF_CPU_THREADS")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        # Per-file progress bars from every rank would bury the driver's own bar in the log.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        # The driver's -v / verbose=true (RLHF_VERBOSE) decides whether third-party warnings show here too.
        from rlhf.quiet import set_verbose

        set_verbose(None)
        self._ready_at = time.time()  # the constructor done: process start, imports (and a separate engine)

    def phase(self, name: str):
        """``with self.phase("model"): ...`` adds the block's seconds to this rank's start-up phase `name`."""
        import contextlib

        @contextlib.contextmanager
        def timed():
            tic = time.time()
            try:
                yield
            finally:
                self._startup[name] = self._startup.get(name, 0.0) + time.time() - tic

        return timed()

    def startup_times(self) -> dict:
        """When the constructor finished (``ready_at``, Unix time) and the seconds of each start-up phase."""
        return {"ready_at": self._ready_at, **self._startup}

    # ---- profiling (config key profile_step) ------------------------------------------------------------
    def profile_start(self) -> None:
        """Start torch's profiler in this process: host operators of every thread (a colocated engine generates
        in its own) and, on GPUs, every kernel and copy."""
        import torch
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        try:
            extra = {"experimental_config": torch._C._profiler._ExperimentalConfig(profile_all_threads=True)}
        except (AttributeError, TypeError):  # an older torch: the calling thread only
            extra = {}
        self._profiler = profile(activities=activities, **extra)
        self._profiler.__enter__()

    def profile_stop(self, directory: str, role: str) -> list[str]:
        """Stop the profiler; write ``<role>_rank<r>.txt`` (operators by device time and by host time) and the
        Chrome trace ``<role>_rank<r>.json.gz`` into ``directory``. Returns the paths written."""
        import gzip
        import shutil

        import torch

        prof, self._profiler = getattr(self, "_profiler", None), None
        if prof is None:
            return []
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        prof.__exit__(None, None, None)
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        stem = out / f"{role}_rank{self.rank}"
        averages = prof.key_averages()
        sections = []
        if torch.cuda.is_available():
            sections.append(("device time", averages.table(sort_by="self_cuda_time_total", row_limit=60)))
        sections.append(("host time", averages.table(sort_by="self_cpu_time_total", row_limit=60)))
        text = "".join(f"# {role} rank {self.rank}: operators by self {what}\n{table}\n\n" for what, table in sections)
        stem.with_suffix(".txt").write_text(text)
        raw = stem.with_suffix(".json")
        prof.export_chrome_trace(str(raw))
        trace = Path(f"{raw}.gz")
        with open(raw, "rb") as src, gzip.open(trace, "wb") as dst:
            shutil.copyfileobj(src, dst)
        raw.unlink()
        return [str(stem.with_suffix(".txt")), str(trace)]

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the role's process group."""
        from rlhf.engines.dist import free_port, node_ip

        return node_ip(), free_port()

    def init_dist(self, master_addr: str, master_port: int, device: str) -> None:
        from rlhf.engines.dist import init_distributed

        init_distributed(self.rank, self.world_size, master_addr, master_port, device)

    @staticmethod
    def seed_everything(seed: int) -> None:
        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def close(self) -> None:
        from rlhf.engines.dist import destroy_distributed

        destroy_distributed()

    def ping(self) -> int:
        return os.getpid()
