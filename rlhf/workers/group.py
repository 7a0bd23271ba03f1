"""A group of Ray actors playing one role: N ranks on a placement group, call a method on all of them.

After OpenRLHF's actor-group launcher: the driver creates the actors, rank 0 picks the rendezvous address,
and every rank joins one torch.distributed group for its role.

Every wait on a call is bounded without bounding the call: each rank beats from a thread of its own
(rlhf/workers/base.py), and a rank whose heartbeat stops for `stall_timeout_s` (a process stopped with SIGSTOP,
swapping, wedged in C code) ends the wait with the role, rank, host, pid, the method and where it stood. A rank
that dies is reported with the reason Ray or the kernel gives, out-of-memory kills named as such with the fix.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import time
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

# Seconds a rank may go without a heartbeat (it beats every second) before a call on it is declared stalled;
# the run sets it from the config key `stall_timeout_s` (set_stall_timeout).
DEFAULT_STALL_TIMEOUT_S = 300.0
# A rank that has not beaten once (its process is still starting: imports, a JIT build) gets at least this long.
STARTUP_GRACE_S = 120.0
_stall_timeout_s = DEFAULT_STALL_TIMEOUT_S
# A call still running after this long gets a warning naming where each rank on it is (its last beat's frames),
# and again after each further interval: a slow call shows where its time goes, a hung one where it hangs.
LONG_CALL_NOTICE_S = 180.0

# What to change when a rank runs out of memory.
MEMORY_FIX = (
    "use a smaller algo.micro_batch_per_gpu, engine.offload_optimizer=true (and engine.offload_params=true with "
    "engine.zero_stage=3), or engine.gradient_checkpointing=true; for rollout engines lower "
    "rollout.gpu_memory_utilization"
)


def set_stall_timeout(seconds: Optional[float]) -> None:
    """The stall bound of groups created from now on in this process (None: the default)."""
    global _stall_timeout_s
    _stall_timeout_s = float(seconds) if seconds else DEFAULT_STALL_TIMEOUT_S


def stall_timeout() -> float:
    return _stall_timeout_s


class RoleError(RuntimeError):
    """A role's actor failed; names the role and rank."""


class RoleStalledError(RoleError):
    """A rank stopped beating while a call was running on it."""


class RoleOutOfMemoryError(RoleError):
    """A rank was killed for using too much memory."""


class _Rank:
    """What the driver knows of one rank: its last heartbeat, when it last changed, its memory cgroup."""

    def __init__(self, rank: int, actor_id: Optional[str]):
        self.rank, self.actor_id = rank, actor_id
        self.beat: Optional[dict] = None
        self.changed: Optional[float] = None  # driver's monotonic clock when the counter last moved
        self.oom: Optional[tuple[Path, int]] = None  # (counter file, oom kills seen) on this host

    def who(self) -> str:
        if not self.beat:
            return f"rank {self.rank}"
        return f"rank {self.rank} (pid {self.beat['pid']} on host {self.beat['host']})"

    @property
    def local_pid(self) -> Optional[int]:
        if self.beat and self.beat.get("host") == socket.gethostname():
            return int(self.beat["pid"])
        return None


class ActorGroup:
    def __init__(
        self,
        role: str,
        actor_cls,
        num_workers: int,
        *,
        gpus_per_worker: float,
        args: Sequence[Any] = (),
        placement_group=None,
        bundle_offset: int = 0,
        timeout_s: Optional[float] = None,
        stall_timeout_s: Optional[float] = None,
        concurrency_groups: Optional[dict[str, int]] = None,
    ):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from rlhf.workers.base import RankWorker

        self.role = role
        # A hard bound on one call, on top of the stall bound (None: a call may take as long as it keeps beating).
        self.timeout_s = timeout_s
        self.stall_timeout_s = float(stall_timeout_s or _stall_timeout_s)
        # Only RankWorker subclasses beat; for other classes a wait is bounded by timeout_s alone.
        self.beats = isinstance(actor_cls, type) and issubclass(actor_cls, RankWorker)
        self.placement_group = placement_group
        self.created = time.monotonic()
        self.created_at = time.time()  # Unix time the actors were asked for (start-up figures: startup_times)
        self.stalled: Optional[int] = None  # the rank found stalled, killed at shutdown
        # Calls submitted to a named concurrency group run on that group's thread, beside the default group's
        # calls, which stay one at a time and in order (the collectives need that).
        remote_cls = (
            ray.remote(concurrency_groups=dict(concurrency_groups))(actor_cls)
            if concurrency_groups
            else ray.remote(actor_cls)
        )
        self.actors = []
        for rank in range(num_workers):
            # Roles sharing a GPU bundle ({"GPU": 1, "CPU": 1}) split its CPU as they split the GPU; a whole
            # CPU each would leave the second role unschedulable inside the bundle (a silent wait).
            shared = placement_group is not None and 0 < gpus_per_worker < 1
            opts: dict[str, Any] = {
                "num_cpus": gpus_per_worker if shared else 1,
                "num_gpus": gpus_per_worker,
                "name": None,
            }
            if placement_group is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + rank
                )
            opts.pop("name")
            self.actors.append(remote_cls.options(**opts).remote(rank, num_workers, *args))
        self.ranks = [_Rank(r, _actor_id(a)) for r, a in enumerate(self.actors)]

    def __len__(self) -> int:
        return len(self.actors)

    def run(self, method: str, *args, per_rank: Optional[Sequence[tuple]] = None, timeout_s=None, **kwargs) -> list:
        """Call `method` on every rank and wait; per_rank gives each rank its own positional args."""
        refs = self.submit(method, *args, per_rank=per_rank, **kwargs)
        return self.wait(refs, method, timeout_s)

    def submit(self, method: str, *args, per_rank=None, concurrency_group: Optional[str] = None, **kwargs) -> list:
        if self.beats:
            # Each known rank's cgroup OOM count before the call: a rank killed before the first poll of the
            # wait (a fast allocation) is then still judged against the cgroup it is in now.
            for state in self.ranks:
                pid = state.local_pid
                if pid is not None:
                    state.oom = _oom_counter(pid) or state.oom
        refs = []
        for rank, actor in enumerate(self.actors):
            a = per_rank[rank] if per_rank is not None else args
            call = getattr(actor, method)
            if concurrency_group is not None:
                call = call.options(concurrency_group=concurrency_group)
            refs.append(call.remote(*a, **kwargs))
        return refs

    def wait(self, refs: list, what: str = "call", timeout_s=None) -> list:
        """Results in rank order; the first failure, a stalled rank or the timeout stops the run with the role
        and rank named."""
        import ray

        # Classes that do not beat keep a plain bound on the whole call.
        timeout = timeout_s or self.timeout_s or (None if self.beats else 1800.0)
        started = time.monotonic()
        # Polls short enough to notice a stall well within its bound, long enough to cost nothing.
        poll = min(2.0, max(self.stall_timeout_s / 10, 0.2))
        pending = list(refs)
        if self.beats:
            self._read_beats(range(len(refs)))  # who each rank is, and its cgroup's OOM count before the call
        notice = LONG_CALL_NOTICE_S
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=poll if self.beats else timeout)
            if not done:
                ranks = [refs.index(p) for p in pending]
                if timeout and time.monotonic() - started > timeout:
                    raise RoleError(
                        f"role {self.role}: {what} did not finish within {timeout:.0f}s on ranks {ranks}; "
                        "a rank may be hung or out of memory"
                    )
                if self.beats:
                    self._check_alive(ranks, what, started)
                    ran = time.monotonic() - started
                    if ran >= notice:
                        log.warning(self._long_call_message(ranks, what, ran))
                        notice += LONG_CALL_NOTICE_S
                continue
            try:
                ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - re-raised with the rank named
                raise self._failure(refs.index(done[0]), what, e) from e
        return ray.get(refs)

    # ---- liveness ----------------------------------------------------------------------------------------
    def _read_beats(self, ranks: Sequence[int]) -> None:
        from ray.experimental.internal_kv import _internal_kv_get

        from rlhf.workers.base import HEARTBEAT_NAMESPACE, heartbeat_key

        now = time.monotonic()
        for r in ranks:
            state = self.ranks[r]
            if state.actor_id is None:
                continue
            try:
                raw = _internal_kv_get(heartbeat_key(state.actor_id), namespace=HEARTBEAT_NAMESPACE)
            except Exception:  # noqa: BLE001 - the store is briefly unreachable: judge on the next poll
                continue
            if not raw:
                continue
            beat = json.loads(raw)
            if state.beat is None or beat["n"] != state.beat["n"] or beat["pid"] != state.beat["pid"]:
                state.beat, state.changed = beat, now
            pid = state.local_pid
            if pid is not None:
                state.oom = _oom_counter(pid) or state.oom

    def _check_alive(self, ranks: Sequence[int], what: str, started: float) -> None:
        self._read_beats(ranks)
        now = time.monotonic()
        for r in ranks:
            state = self.ranks[r]
            if state.changed is None:
                waited = now - self.created
                if waited > max(self.stall_timeout_s, STARTUP_GRACE_S):
                    raise RoleStalledError(
                        f"role {self.role} rank {r} never started: no heartbeat {waited:.0f}s after its actor was "
                        f"created (waiting in {what}). It may be waiting for resources (GPUs or CPUs held by "
                        "another job) or its process failed to start: see the worker logs under the Ray session "
                        "directory (/tmp/ray/session_latest/logs)"
                    )
                continue
            silent = now - state.changed
            if silent > self.stall_timeout_s:
                self.stalled = r
                raise RoleStalledError(self._stall_message(state, what, silent, now - started))

    def _long_call_message(self, ranks: Sequence[int], what: str, ran: float) -> str:
        where = "; ".join(f"{self.ranks[r].who()} at {(self.ranks[r].beat or {}).get('where', '?')}" for r in ranks)
        return f"role {self.role}: {what} has run {ran:.0f}s and is still running on {where}"

    def _stall_message(self, state: _Rank, what: str, silent: float, waited: float) -> str:
        beat = state.beat or {}
        pid = state.local_pid
        status = _process_state(pid) if pid is not None else None
        why = {
            "T": "its process is stopped (SIGSTOP or a debugger; `kill -CONT` resumes it)",
            "t": "its process is stopped by a debugger",
            "D": "its process is blocked in the kernel (disk or network I/O, or a GPU driver call)",
            "Z": "its process has exited",
        }.get(status or "", "the process is alive but not running Python: stopped, swapping, or stuck in C code")
        return (
            f"role {self.role} {state.who()} stopped responding during {what}: no heartbeat for {silent:.0f}s "
            f"(limit stall_timeout_s={self.stall_timeout_s:g}; the call had run {waited:.0f}s); {why}. Its last "
            f"beat was at {beat.get('where', '?')}. `kill -USR1 {beat.get('pid', '<pid>')}` prints its stacks "
            "into the worker log; if a call can legitimately block that long, raise stall_timeout_s=<seconds>"
        )

    # ---- failures ----------------------------------------------------------------------------------------
    def _failure(self, rank: int, what: str, e: BaseException) -> RoleError:
        import ray.exceptions as rex

        if self.beats:
            self._read_beats([rank])  # its last beat names its pid and host
        state = self.ranks[rank]
        head = f"role {self.role} {state.who()} failed in {what}"
        text = str(e)
        oom_kills = _oom_rise(state)
        if isinstance(e, rex.OutOfMemoryError) or "memory monitor" in text or oom_kills:
            how = (
                f"the kernel's out-of-memory killer ended it ({oom_kills})"
                if oom_kills
                else "Ray's memory monitor killed it: the node ran low on memory"
            )
            return RoleOutOfMemoryError(f"{head}: out of memory: {how}. To fit, {MEMORY_FIX}")
        if isinstance(e, (rex.RayActorError, rex.WorkerCrashedError, rex.TaskCancelledError)):
            if "INTENDED_USER_EXIT" in text or "ray.kill" in text:
                return RoleError(f"{head}: its actor was killed (ray.kill)")
            return RoleError(
                f"{head}: its process died without an error (killed by a signal, or crashed). The usual cause is "
                f"an out-of-memory kill; if so, {MEMORY_FIX}. The worker's log under "
                "/tmp/ray/session_latest/logs holds its last lines"
            )
        return RoleError(f"{head}: {_root(e)}")

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        # A stopped process cannot act on Ray's kill request: end it here (SIGKILL works on a stopped process).
        pid = self.ranks[self.stalled].local_pid if self.stalled is not None else None
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        self._forget_beats()
        self.actors = []
        if self.placement_group is not None:
            # Give the GPUs back to the cluster: a later run in this process (a sweep point, a test) would
            # otherwise find them reserved. Roles sharing a pool remove it once; later calls find it gone.
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.placement_group)
            except Exception:  # noqa: BLE001 - already removed by a role sharing the pool
                pass
            self.placement_group = None

    def _forget_beats(self) -> None:
        if not self.beats:
            return
        try:
            from ray.experimental.internal_kv import _internal_kv_del

            from rlhf.workers.base import HEARTBEAT_NAMESPACE, heartbeat_key

            for state in self.ranks:
                if state.actor_id:
                    _internal_kv_del(heartbeat_key(state.actor_id), namespace=HEARTBEAT_NAMESPACE)
        except Exception:  # noqa: BLE001 - Ray already down: the keys went with it
            pass


def _actor_id(actor) -> Optional[str]:
    try:
        return actor._actor_id.hex()
    except AttributeError:
        return None


def _process_state(pid: int) -> Optional[str]:
    """The one-letter state of a local process (R, S, D, T, Z, ...), or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[0]


def _oom_counter(pid: int) -> Optional[tuple[Path, int]]:
    """The out-of-memory kill counter of a local process's memory cgroup: (file, count), or None."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):  # cgroup v1
            file = Path("/sys/fs/cgroup/memory") / path.lstrip("/") / "memory.oom_control"
            break
    else:
        v2 = [line.split(":", 2)[2] for line in lines if line.startswith("0::")]
        if not v2:
            return None
        file = Path("/sys/fs/cgroup") / v2[0].lstrip("/") / "memory.events"
    count = _read_oom_kills(file)
    return (file, count) if count is not None else None


def _read_oom_kills(file: Path) -> Optional[int]:
    try:
        for line in file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


def _oom_rise(state: _Rank) -> Optional[str]:
    """'oom_kill a -> b in <file>' when the counter of the rank's cgroup rose since the driver last read it."""
    if state.oom is None:
        return None
    file, before = state.oom
    after = _read_oom_kills(file)
    if after is None or after <= before:
        return None
    return f"oom_kill {before} -> {after} in {file}"


def _root(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None and cause is not e:
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def make_placement_group(num_bundles: int, gpus_per_bundle: float, timeout_s: float = 120.0):
    """A placement group of GPU bundles (one per rank), waited for with a timeout and a clear error."""
    import ray
    from ray.util.placement_group import placement_group

    bundles = [{"GPU": gpus_per_bundle, "CPU": 1} for _ in range(num_bundles)]
    pg = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        avail = ray.available_resources()
        raise RoleError(
            f"could not reserve {num_bundles} GPU bundles within {timeout_s:.0f}s (cluster has "
            f"{avail.get('GPU', 0):g} free GPUs); check hw=<profile> against the cluster, or other jobs holding GPUs"
        )
    return pg
