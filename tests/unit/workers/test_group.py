"""Actor groups on placement groups: GPUs reserved by a run are given back when its roles shut down; every wait
on a call is bounded by the ranks' heartbeats, and a rank that stops, dies or runs out of memory is named.

Ray accepts a logical GPU count on a machine without GPUs, so the reservation logic runs for real here.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from rlhf.workers.base import RankWorker

ray = pytest.importorskip("ray")


class _Echo:
    def __init__(self, rank: int, world_size: int, tag: str):
        self.rank, self.tag = rank, tag

    def who(self) -> str:
        return f"{self.tag}:{self.rank}"


@pytest.fixture(scope="module")
def one_logical_gpu():
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_roles_share_a_bundle_and_release_it(one_logical_gpu) -> None:
    from rlhf.workers.group import ActorGroup, RoleError, make_placement_group

    for run in range(2):  # the second run needs the GPU the first one held
        pg = make_placement_group(1, 1.0, timeout_s=20)
        # Two roles on one GPU bundle, a third of a GPU each (the colocated layout).
        actor = ActorGroup("actor", _Echo, 1, gpus_per_worker=1 / 3, args=("actor",), placement_group=pg, timeout_s=30)
        ref = ActorGroup("ref", _Echo, 1, gpus_per_worker=1 / 3, args=("ref",), placement_group=pg, timeout_s=30)
        assert actor.run("who") == ["actor:0"] and ref.run("who") == ["ref:0"], run
        actor.shutdown()
        ref.shutdown()
    with pytest.raises(RoleError, match="could not reserve 2 GPU bundles"):
        make_placement_group(2, 1.0, timeout_s=2)


class _Slow:
    def __init__(self, rank: int, world_size: int):
        self.rank = rank

    def work(self, seconds: float) -> int:
        import time

        time.sleep(seconds)
        return self.rank


def test_a_killed_rank_stops_the_call_with_its_role_and_rank(one_logical_gpu) -> None:
    """Killing one actor mid-call ends the wait at once with an error naming the role and rank (no hang)."""
    import time

    from rlhf.workers.group import ActorGroup, RoleError

    group = ActorGroup("critic", _Slow, 2, gpus_per_worker=0, timeout_s=120)
    assert group.run("work", 0.0) == [0, 1]
    refs = group.submit("work", 60.0)
    ray.kill(group.actors[1])
    started = time.time()
    with pytest.raises(RoleError, match=r"role critic rank 1 failed in work: its actor was killed"):
        group.wait(refs, "work")
    assert time.time() - started < 30
    group.shutdown()


class _Beating(RankWorker):
    """A role's rank as the run has them (RankWorker beats from a thread): busy work and memory on demand."""

    def spin(self, seconds: float) -> int:
        # Pure Python holding the interpreter lock between switches: the hardest case for a heartbeat thread.
        end, n = time.time() + seconds, 0
        while time.time() < end:
            n += 1
        return self.rank

    def grow(self, mib: int) -> int:
        chunks = [bytearray(1 << 20) for _ in range(mib)]
        return len(chunks)


def _pids(group) -> list[int]:
    return group.run("ping")


def _gone(pid: int, within_s: float) -> bool:
    end = time.time() + within_s
    while time.time() < end:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.2)
    return False


def test_a_stopped_rank_is_found_within_the_stall_bound_and_named(one_logical_gpu) -> None:
    """SIGSTOP on one rank mid-call: the wait ends within stall_timeout_s plus one poll, naming the role, rank,
    pid, host, method and that the process is stopped; shutting the group down ends the stopped process."""
    from rlhf.workers.group import ActorGroup, RoleStalledError

    group = ActorGroup("reward.rm", _Beating, 2, gpus_per_worker=0, stall_timeout_s=5)
    pids = _pids(group)
    refs = group.submit("spin", 60.0)
    time.sleep(1.0)
    os.kill(pids[1], signal.SIGSTOP)
    started = time.time()
    try:
        with pytest.raises(RoleStalledError) as err:
            group.wait(refs, "spin")
        took = time.time() - started
        text = str(err.value)
        assert (
            f"role reward.rm rank 1 (pid {pids[1]} on host {socket.gethostname()}) stopped responding during spin"
            in (text)
        ), text
        assert "its process is stopped (SIGSTOP" in text and "stall_timeout_s=5" in text
        assert "in spin" in text  # where its last beat found the main thread
        assert 4.0 <= took < 5 + 0.5 + 3, took  # the bound, one poll (0.5 s) and slack for a loaded machine
    finally:
        group.shutdown()
    assert _gone(pids[1], 10), "the stopped rank must not outlive its group"
    assert _gone(pids[0], 10)


def test_a_long_busy_call_does_not_trip_the_stall_bound(one_logical_gpu) -> None:
    """A call three times longer than the stall bound, alive the whole time, returns normally."""
    from rlhf.workers.group import ActorGroup

    group = ActorGroup("actor", _Beating, 1, gpus_per_worker=0, stall_timeout_s=5)
    try:
        started = time.time()
        assert group.run("spin", 15.0) == [0]
        assert time.time() - started >= 15.0
    finally:
        group.shutdown()


@pytest.fixture
def small_memory_cgroup():
    """A child of this process's memory cgroup (v1 or v2) holding at most 256 MiB of new allocations."""
    line = next((entry for entry in Path("/proc/self/cgroup").read_text().splitlines() if ":memory:" in entry), None)
    if line is not None:
        parent, limit_file, limit = (
            Path("/sys/fs/cgroup/memory") / line.split(":", 2)[2].lstrip("/"),
            "memory.limit_in_bytes",
            str(256 << 20),
        )
    else:
        v2 = Path("/proc/self/cgroup").read_text().split("0::", 1)[-1].strip()
        parent, limit_file, limit = Path("/sys/fs/cgroup") / v2.lstrip("/"), "memory.max", str(256 << 20)
    child = parent / f"rlhf-test-{os.getpid()}"
    try:
        child.mkdir()
        (child / limit_file).write_text(limit)
        (child / "memory.swappiness").write_text("0") if (child / "memory.swappiness").exists() else None
    except OSError as e:
        pytest.skip(f"cannot make a memory cgroup here: {e}")
    yield child
    for _ in range(50):
        try:
            child.rmdir()
            break
        except OSError:
            time.sleep(0.2)


def test_a_cgroup_out_of_memory_kill_reads_as_out_of_memory(one_logical_gpu, small_memory_cgroup) -> None:
    """The kernel kills a rank that outgrows its memory cgroup: the error says out of memory, names the role and
    rank, shows the cgroup's oom_kill count rising and gives the fix."""
    from rlhf.workers.group import ActorGroup, RoleOutOfMemoryError

    group = ActorGroup("actor", _Beating, 1, gpus_per_worker=0, stall_timeout_s=30)
    try:
        (pid,) = _pids(group)
        (small_memory_cgroup / "cgroup.procs").write_text(str(pid))
        started = time.time()
        with pytest.raises(RoleOutOfMemoryError) as err:
            group.run("grow", 2048)
        text = str(err.value)
        assert f"role actor rank 0 (pid {pid} on host {socket.gethostname()}) failed in grow: out of memory" in text
        assert "out-of-memory killer ended it (oom_kill 0 -> 1" in text, text
        assert "algo.micro_batch_per_gpu" in text and "engine.offload_optimizer=true" in text
        assert time.time() - started < 30
    finally:
        group.shutdown()


def test_a_rank_killed_by_a_signal_is_reported_as_a_death_with_the_likely_cause(one_logical_gpu) -> None:
    from rlhf.workers.group import ActorGroup, RoleError

    group = ActorGroup("ref", _Beating, 1, gpus_per_worker=0, stall_timeout_s=30)
    try:
        (pid,) = _pids(group)
        refs = group.submit("spin", 60.0)
        time.sleep(1.0)
        os.kill(pid, signal.SIGKILL)
        started = time.time()
        with pytest.raises(
            RoleError, match=rf"role ref rank 0 \(pid {pid} on host .*\) failed in spin: its process died"
        ) as err:
            group.wait(refs, "spin")
        assert "out-of-memory kill" in str(err.value) and time.time() - started < 30
    finally:
        group.shutdown()


def test_the_beat_names_the_call_threads_inside_the_package() -> None:
    """With concurrency groups an actor's calls run on pool threads: the beat's "where" names every thread
    inside the package's code (not just the main thread), and falls back to the main thread otherwise."""
    import threading

    import rlhf
    from rlhf.workers.base import _call_frames

    here = os.path.dirname(os.path.abspath(rlhf.__file__))
    release = threading.Event()
    # A function whose code object says it lives in the package, as an actor's method there would.
    scope: dict = {"release": release}
    exec(compile("def generate_call():\n    release.wait(10)\n", os.path.join(here, "fake_call.py"), "exec"), scope)
    t = threading.Thread(target=scope["generate_call"], daemon=True)
    t.start()
    try:
        time.sleep(0.1)
        where = _call_frames()
        assert "fake_call.py:2 in generate_call" in where, where
    finally:
        release.set()
        t.join()
    assert "fake_call.py" not in _call_frames()


def test_a_long_call_is_reported_with_where_its_ranks_are(one_logical_gpu, monkeypatch, caplog) -> None:
    """A call that runs past the notice interval, beating all along, gets a warning per interval naming each
    rank still on it and the frame its last beat found (a slow call shows where its time goes, a hung one where
    it hangs); the call itself still completes."""
    import logging

    import rlhf.workers.group as grp

    monkeypatch.setattr(grp, "LONG_CALL_NOTICE_S", 1.5)
    group = grp.ActorGroup("actor", _Beating, 1, gpus_per_worker=0, stall_timeout_s=30)
    try:
        _pids(group)
        with caplog.at_level(logging.WARNING, logger="rlhf.workers.group"):
            assert group.run("spin", 4.0) == [0]
        notes = [r.getMessage() for r in caplog.records if "is still running on" in r.getMessage()]
        assert 1 <= len(notes) <= 3, notes
        assert notes[0].startswith("role actor: spin has run ") and "rank 0" in notes[0], notes
        assert "in spin" in notes[0], notes
    finally:
        group.shutdown()


class _Phased(RankWorker):
    """A rank whose constructor and set-up take known times, rank 1 longer than rank 0."""

    def __init__(self, rank: int, world_size: int, init_s: float):
        time.sleep(init_s * (rank + 1))
        super().__init__(rank, world_size)

    def setup(self, model_s: float) -> None:
        with self.phase("model"):
            time.sleep(model_s * (self.rank + 1))
        with self.phase("engine"):
            pass
        with self.phase("model"):  # a phase entered twice adds up
            time.sleep(model_s)


def test_role_startup_takes_the_slowest_rank_of_each_phase(one_logical_gpu) -> None:
    from rlhf.controllers.onpolicy import role_startup
    from rlhf.workers.group import ActorGroup

    g = ActorGroup("actor", _Phased, 2, gpus_per_worker=0, args=(0.4,), timeout_s=60)
    try:
        g.run("setup", 0.3)
        out = role_startup({"actor": g})
    finally:
        g.shutdown()
    assert set(out) == {"startup/actor.init_s", "startup/actor.model_s", "startup/actor.engine_s"}
    # Rank 1: 0.3 * 2 + 0.3 in the model phase; its constructor slept 0.8 s after the ask for the actors.
    assert 0.9 <= out["startup/actor.model_s"] < 1.5
    assert 0.8 <= out["startup/actor.init_s"] < 15
    assert 0 <= out["startup/actor.engine_s"] < 0.1


def test_the_end_of_run_memory_figures_skip_a_role_that_does_not_answer(one_logical_gpu, monkeypatch) -> None:
    """Each role's peak comes from its ranks (0 GiB without a GPU); a role busy past the wait is left out of
    the figures instead of holding the run's end."""
    import rlhf.controllers.onpolicy as onpolicy
    from rlhf.workers.group import ActorGroup

    monkeypatch.setattr(onpolicy, "PEAK_MEMORY_WAIT_S", 2.0)
    idle = ActorGroup("actor", _Slow, 1, gpus_per_worker=0, timeout_s=120)
    busy = ActorGroup("critic", _Slow, 1, gpus_per_worker=0, timeout_s=120)
    try:
        assert idle.run("work", 0.0) == [0] and busy.run("work", 0.0) == [0]
        busy.submit("work", 30.0)  # the rank's one thread is taken: the figure's call waits behind it
        started = time.time()
        assert onpolicy._peak_memory({"actor": idle, "critic": busy}) == {"memory/actor_peak_alloc_gib": 0.0}
        assert time.time() - started < 15
    finally:
        idle.shutdown()
        busy.shutdown()
