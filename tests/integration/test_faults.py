"""Faults injected into real runs: kill -9 of the driver and of a role, SIGSTOP of a role, a reward server that
misbehaves, a disk that fills up, a damaged newest checkpoint, a finished directory run again.

Each case asserts a bounded time to a clear error (the bound is in the test), that nothing of the run is left
running, and that the resumed run ends exactly as the uninterrupted one (weights, logged metrics, each step
logged once). The tiny SFT run of test_offline_e2e (4 steps, one checkpoint every step) and a short GRPO run.
Killed runs are real `python -m rlhf.run` processes; resumed and reference runs run in this process. The
module prints a summary: cases run, the longest time to error, steps lost per kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf.engines import checkpoint as ck
from rlhf.launch.reaper import _stat, _tree
from tests.integration.conftest import SMALL_DATA, metric_history, run, weights
from tests.unit.rewards import conftest as reward_servers
from tests.unit.rewards import test_remote_deadline as reward_deadline

pytestmark = [pytest.mark.timeout(900), pytest.mark.faults]

ROOT = Path(__file__).resolve().parents[2]
STEPS = 4
SFT = [
    "algo=sft",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "algo.epochs=1",
    "algo.save_every=1",
    "algo.keep_checkpoints=1",
    *SMALL_DATA["sft"],
]
GRPO = [
    "algo=grpo",
    "algo.prompts_per_step=4",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "rollout.max_new_tokens=12",
    "data.sources.tiny_math.max_samples=64",
    "eval.max_prompts=8",
]
# Every process of a killed run is gone this soon after the kill (the watcher of rlhf/launch/reaper.py).
NOTHING_LEFT_S = 10.0

# The scripted and the byte-at-a-time reward servers of tests/unit/rewards, as fixtures of this module too.
scripted_server = reward_servers.scripted_server
trickle = reward_deadline.trickle

# Rows of the closing summary: (case, seconds to the error or None, steps lost or None).
SUMMARY: list[tuple[str, float | None, int | None]] = []


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    yield
    if not SUMMARY:
        return
    times = [t for _, t, _ in SUMMARY if t is not None]
    lost = [(case, n) for case, _, n in SUMMARY if n is not None]
    lines = [
        "",
        f"fault cases run: {len(SUMMARY)}",
        *(
            f"  {case:<58} {'' if t is None else f'error after {t:5.1f}s'}{'' if n is None else f'  steps lost {n}'}"
            for case, t, n in SUMMARY
        ),
        f"longest time to error: {max(times):.1f}s" if times else "longest time to error: -",
        "steps lost per kill: " + ", ".join(f"{n}" for _, n in lost) if lost else "",
    ]
    # Shown in the terminal whatever the capture mode (a fixture's teardown output is captured otherwise).
    plugins = request.config.pluginmanager
    reporter, capture = plugins.getplugin("terminalreporter"), plugins.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        for line in lines:
            (reporter.write_line if reporter else print)(line)


# ---- helpers -----------------------------------------------------------------------------------------------
def _cli(out: Path, mlflow_uri: str, *overrides: str) -> tuple[subprocess.Popen, Path]:
    """`python -m rlhf.run` on `out`, its output in out.log."""
    log = out.parent / f"{out.name}.log"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rlhf.run",
            f"output_dir={out}",
            f"tracking.tracking_uri={mlflow_uri}",
            "tracking.log_model=false",
            *overrides,
        ],
        cwd=ROOT,
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
    )
    return proc, log


def _wait_for(what: str, predicate, timeout_s: float, proc: subprocess.Popen, log: Path, poll_s: float = 0.02):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        time.sleep(poll_s)
    raise AssertionError(f"no {what} within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


def _tree_of(pid: int) -> dict[int, int]:
    st = _stat(pid)
    return _tree({pid: st[1]}) if st else {}


def _alive(tree: dict[int, int]) -> list[tuple[int, str]]:
    return [(pid, st[2]) for pid, start in tree.items() if (st := _stat(pid)) is not None and st[1] == start]


def _assert_nothing_left(tree: dict[int, int]) -> float:
    """Wait for every process of `tree` to end; returns how long it took."""
    started = time.monotonic()
    while _alive(tree) and time.monotonic() - started < NOTHING_LEFT_S:
        time.sleep(0.2)
    assert not _alive(tree), f"processes of the run still running {NOTHING_LEFT_S:.0f}s on: {_alive(tree)}"
    return time.monotonic() - started


def _role_pid(tree: dict[int, int], title: str) -> int:
    """The pid of a role's Ray worker (its process title is `ray::<Class>`, cut to 15 characters)."""
    found = [pid for pid, name in _alive(tree) if name == f"ray::{title}"[:15]]
    assert found, f"no ray::{title} among {_alive(tree)}"
    return found[0]


def _run_id(out: Path) -> str:
    return json.loads((out / "rlhf_run.json").read_text())["mlflow_run_id"]


def _status(mlflow_uri: str, rid: str) -> str:
    from mlflow.tracking import MlflowClient

    return MlflowClient(mlflow_uri).get_run(rid).info.status


def _checkpoint_step(out: Path) -> int:
    latest = ck.latest_checkpoint(out / "checkpoints")
    return int(latest.name.split("_")[-1]) if latest else 0


def _assert_same_run(result, reference, mlflow_uri: str, rid: str, ref_rid: str) -> None:
    """The resumed run ends like the uninterrupted one: weights, final evaluation, each step logged once."""
    assert result.steps == reference.steps
    a, b = weights(reference.model_dir), weights(result.model_dir)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    key = "train/loss" if "train/loss" in reference.last else "train/policy_loss"
    history, expected = metric_history(mlflow_uri, rid, key), metric_history(mlflow_uri, ref_rid, key)
    assert sorted(history) == sorted(expected) == list(range(1, reference.steps + 1))
    for step, value in expected.items():
        assert history[step] == pytest.approx(value, rel=1e-5, abs=1e-6), (step, history[step], value)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_uri)
    assert len(client.get_metric_history(rid, key)) == reference.steps, "a step was logged twice"


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory, mlflow_uri):
    out = tmp_path_factory.mktemp("sft_reference") / "run"
    result = run(out, mlflow_uri, *SFT, f"algo.max_steps={STEPS}")
    return result, out


# ---- kill -9 of the driver -----------------------------------------------------------------------------------
def _kill_driver_when(out: Path, mlflow_uri: str, args: list[str], when) -> None:
    """Start the run, kill -9 its driver once `when(out, proc, log)` returns, and check that every process of the
    run (Ray, its workers, the MLflow run's guard) is gone soon after."""
    proc, log = _cli(out, mlflow_uri, *args)
    try:
        when(out, proc, log)
        tree = _tree_of(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    _assert_nothing_left(tree)


def _kill_mid_step(out: Path, proc, log) -> None:
    # After the first checkpoint, at a random moment of a later step (seeded, so a failure replays); steps of the
    # tiny model take well under a second on an idle machine, so the moment stays within the next one or two.
    _wait_for("the step-1 checkpoint", lambda: _checkpoint_step(out) >= 1, 300, proc, log)
    time.sleep(random.Random(13).uniform(0.05, 0.4))


def _kill_in_checkpoint_write(out: Path, proc, log) -> None:
    tmp = ck.temp_sibling(out / "checkpoints" / ck.step_dir_name(2))
    _wait_for("the step-2 checkpoint being written", tmp.exists, 300, proc, log, poll_s=0.005)


def _kill_after_last_checkpoint(out: Path, proc, log) -> None:
    # The last step's checkpoint is published: the driver is evaluating or writing final/.
    _wait_for(f"the step-{STEPS} checkpoint", lambda: _checkpoint_step(out) == STEPS, 300, proc, log, poll_s=0.005)


@pytest.mark.parametrize(
    "when",
    [_kill_mid_step, _kill_in_checkpoint_write, _kill_after_last_checkpoint],
    ids=["mid-step", "checkpoint-write", "final-write"],
)
def test_kill_9_of_the_driver_then_resume_ends_as_the_uninterrupted_run(
    when, tmp_path, mlflow_uri, sft_reference, capsys
):
    reference, ref_out = sft_reference
    out = tmp_path / "run"
    _kill_driver_when(out, mlflow_uri, [*SFT, f"algo.max_steps={STEPS}"], when)
    rid = _run_id(out)
    logged = max(metric_history(mlflow_uri, rid, "train/loss"), default=0)
    assert _status(mlflow_uri, rid) == "KILLED"  # by the run's guard, once the driver's pipe closed
    assert not (out / "finished.json").exists()
    resumed_from = _checkpoint_step(out)
    capsys.readouterr()
    result = run(out, mlflow_uri, *SFT, f"algo.max_steps={STEPS}")
    printed = capsys.readouterr().out
    assert _run_id(out) == rid, "the resumed run continues the killed attempt's MLflow run"
    if resumed_from:
        assert f"resuming at step {resumed_from}/{STEPS}" in printed
    if when is _kill_after_last_checkpoint:
        assert resumed_from == STEPS, "a kill after the last step's checkpoint retrains nothing"
    _assert_same_run(result, reference, mlflow_uri, rid, _run_id(ref_out))
    assert _status(mlflow_uri, rid) == "FINISHED"
    SUMMARY.append((f"kill -9 driver, {when.__name__[1:]}", None, max(logged - resumed_from, 0)))


# ---- kill -9 and SIGSTOP of a role -----------------------------------------------------------------------------
def _kill_role_mid_run(out: Path, mlflow_uri: str, args: list[str], title: str, role: str) -> tuple[str, float, int]:
    """Start the run, kill -9 the role's rank mid-run; assert the run stops within 30 s naming the role, leaves
    nothing behind and is marked FAILED. Returns (run id, seconds to the error, last step logged)."""
    proc, log = _cli(out, mlflow_uri, *args)
    try:
        _kill_mid_step(out, proc, log)
        tree = _tree_of(proc.pid)
        pid = _role_pid(tree, title)
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        rc = proc.wait(timeout=60)
        took = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc != 0
    assert f"role {role} rank 0 (pid {pid} on host" in text and "its process died" in text, text[-3000:]
    assert took < 30, took
    _assert_nothing_left(tree)
    rid = _run_id(out)
    assert _status(mlflow_uri, rid) == "FAILED"
    metric = "train/loss" if "algo=sft" in args else "rollout/reward_mean"
    return rid, took, max(metric_history(mlflow_uri, rid, metric), default=0)


def test_kill_9_of_a_role_stops_the_run_naming_it_then_resume(tmp_path, mlflow_uri, sft_reference):
    reference, ref_out = sft_reference
    out = tmp_path / "run"
    args = [*SFT, f"algo.max_steps={STEPS}"]
    rid, took, logged = _kill_role_mid_run(out, mlflow_uri, args, "TrainerWorker", "actor")
    resumed_from = _checkpoint_step(out)
    result = run(out, mlflow_uri, *args)
    _assert_same_run(result, reference, mlflow_uri, rid, _run_id(ref_out))
    SUMMARY.append(("kill -9 of the actor role mid-step", took, max(logged - resumed_from, 0)))


PPO = [
    "algo=ppo",
    "algo.samples_per_prompt=2",
    "algo.prompts_per_step=4",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "algo.save_every=1",
    "rollout.max_new_tokens=12",
    "data.sources.tiny_math.max_samples=64",
    "eval.max_prompts=8",
]


@pytest.mark.parametrize("title,role", [("CriticWorker", "critic"), ("ReferenceWorker", "ref")])
def test_kill_9_of_a_ppo_role_stops_the_run_naming_it_then_resume(tmp_path, mlflow_uri, title, role):
    """The critic and the reference model of a PPO run, killed mid-run: the run stops naming the role, leaves
    nothing behind, and a new start in the directory resumes from the checkpoint and finishes."""
    out = tmp_path / "run"
    rid, took, logged = _kill_role_mid_run(out, mlflow_uri, [*PPO, f"algo.max_steps={STEPS}"], title, role)
    resumed_from = _checkpoint_step(out)
    assert resumed_from >= 1
    result = run(out, mlflow_uri, *PPO, f"algo.max_steps={STEPS}")
    assert result.steps == STEPS and _run_id(out) == rid  # the same MLflow run continues
    steps = sorted(metric_history(mlflow_uri, rid, "rollout/reward_mean"))
    assert steps == list(range(1, STEPS + 1)), steps  # each step logged once
    SUMMARY.append((f"kill -9 of the PPO {role} role mid-step", took, max(logged - resumed_from, 0)))


def test_sigstop_of_a_role_stops_the_run_within_the_stall_bound(tmp_path, mlflow_uri):
    stall = 10
    out = tmp_path / "run"
    proc, log = _cli(out, mlflow_uri, *SFT, "algo.max_steps=40", f"stall_timeout_s={stall}")
    try:
        _wait_for("the step-1 checkpoint", lambda: _checkpoint_step(out) >= 1, 300, proc, log)
        tree = _tree_of(proc.pid)
        pid = _role_pid(tree, "TrainerWorker")
        os.kill(pid, signal.SIGSTOP)
        stopped = time.monotonic()
        rc = proc.wait(timeout=stall + 60)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert rc != 0
    assert f"role actor rank 0 (pid {pid} on host" in text and "stopped responding during train_step" in text, text[
        -3000:
    ]
    assert "its process is stopped (SIGSTOP" in text
    # The bound: stall_timeout_s, one poll (1 s) and the driver's shutdown.
    assert took < stall + 15, took
    _assert_nothing_left(tree)  # the stopped process too
    assert _status(mlflow_uri, _run_id(out)) == "FAILED"
    SUMMARY.append((f"SIGSTOP of the actor role (stall_timeout_s={stall})", took, None))


# ---- a finished directory, both families; the on-policy last step --------------------------------------------
def test_a_finished_offline_directory_is_not_trained_again(sft_reference, mlflow_uri):
    from rlhf.launch.run_dir import RunDirError

    reference, out = sft_reference
    assert json.loads((out / "finished.json").read_text())["steps"] == STEPS
    assert _checkpoint_step(out) == STEPS  # the last step is checkpointed
    started = time.monotonic()
    with pytest.raises(RunDirError, match=r"already finished \(sft, 4 steps"):
        run(out, mlflow_uri, *SFT, f"algo.max_steps={STEPS}")
    SUMMARY.append(("finished offline directory run again", time.monotonic() - started, None))


@pytest.fixture(scope="module")
def grpo_reference(tmp_path_factory, mlflow_uri):
    out = tmp_path_factory.mktemp("grpo_reference") / "run"
    result = run(out, mlflow_uri, *GRPO, "algo.max_steps=2", "algo.save_every=1")
    return result, out


def test_a_finished_onpolicy_directory_is_not_trained_again(grpo_reference, mlflow_uri):
    from rlhf.launch.run_dir import RunDirError

    reference, out = grpo_reference
    assert json.loads((out / "finished.json").read_text())["steps"] == 2
    assert _checkpoint_step(out) == 2
    started = time.monotonic()
    with pytest.raises(RunDirError, match=r"already finished \(grpo, 2 steps"):
        run(out, mlflow_uri, *GRPO, "algo.max_steps=2", "algo.save_every=1")
    SUMMARY.append(("finished on-policy directory run again", time.monotonic() - started, None))


def test_onpolicy_kill_9_after_the_last_checkpoint_retrains_nothing(tmp_path, mlflow_uri, grpo_reference):
    reference, ref_out = grpo_reference
    out = tmp_path / "run"
    args = [*GRPO, "algo.max_steps=2", "algo.save_every=1"]
    _kill_driver_when(
        out,
        mlflow_uri,
        args,
        lambda out, proc, log: _wait_for(
            "the step-2 checkpoint", lambda: _checkpoint_step(out) == 2, 400, proc, log, poll_s=0.005
        ),
    )
    rid = _run_id(out)
    result = run(out, mlflow_uri, *args)
    assert result.steps == 2 and _run_id(out) == rid
    history = metric_history(mlflow_uri, rid, "rollout/reward_mean")
    assert sorted(history) == [1, 2]
    expected = metric_history(mlflow_uri, _run_id(ref_out), "rollout/reward_mean")
    assert history == pytest.approx(expected, abs=1e-6)
    a, b = weights(reference.model_dir), weights(result.model_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    SUMMARY.append(("kill -9 driver (GRPO), after the last checkpoint", None, 0))


# ---- a driver killed and never resumed -----------------------------------------------------------------------
def test_a_run_whose_driver_was_killed_is_marked_killed_at_once_and_a_fresh_start_begins_anew(tmp_path, mlflow_uri):
    from mlflow.tracking import MlflowClient

    from rlhf.tracking.lineage import TAG_END_REASON

    out = tmp_path / "run"
    # Every process gone: the run's guard included, which marks the run and exits.
    _kill_driver_when(
        out,
        mlflow_uri,
        [*SFT, "algo.max_steps=2", "algo.save_every=0"],
        lambda out, proc, log: _wait_for(
            "step 1 logged", lambda: (out / "rlhf_run.json").exists() and _logged(mlflow_uri, out), 300, proc, log
        ),
    )
    rid = _run_id(out)
    killed = MlflowClient(mlflow_uri).get_run(rid)
    assert killed.info.status == "KILLED"  # with no new start in the directory
    assert "its driver died without ending it" in killed.data.tags[TAG_END_REASON]
    # No checkpoint to resume (save_every=0): the next start trains from scratch in a new MLflow run.
    result = run(out, mlflow_uri, *SFT, "algo.max_steps=2", "algo.save_every=0")
    assert MlflowClient(mlflow_uri).get_run(rid).info.status == "KILLED"
    assert _run_id(out) != rid and result.steps == 2


def _logged(mlflow_uri: str, out: Path) -> bool:
    try:
        return bool(metric_history(mlflow_uri, _run_id(out), "train/loss"))
    except Exception:  # noqa: BLE001 - the record is being written
        return False


# ---- a reward server that misbehaves, in the loop ------------------------------------------------------------
# mode -> what the server does with every scoring request: (status, body, seconds before it answers)
SCRIPTS = {
    "stalls": (200, b'{"rewards": []}', 3600.0),
    "500": (500, b'{"error": "boom"}', 0.0),
    "malformed-json": (200, b'{"rewards": [1.0,', 0.0),
}


@pytest.mark.parametrize(
    "mode,pattern",
    [
        ("refuses", r"refused|connect"),
        ("stalls", r"timed out|deadline|did not answer|within"),
        ("trickles", r"timed out|deadline|did not answer|within"),
        ("500", r"500"),
        ("malformed-json", r"JSON|json"),
    ],
)
def test_a_misbehaving_reward_server_stops_the_run_in_bounded_time(
    mode,
    pattern,
    tmp_path,
    mlflow_uri,
    scripted_server,
    trickle,
):
    import socket

    from rlhf.rewards.remote import RemoteReward

    if mode == "trickles":
        url = trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 180\r\n\r\n", b'{"rewards": [1.0]}' * 10, 1.0)
    elif mode == "refuses":
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{s.getsockname()[1]}/score"  # closed again: nothing listens there
    else:
        status, body, delay = SCRIPTS[mode]
        url = scripted_server(lambda n, payload: (status, body, delay)).url
    timeout_s, retries = 2.0, 1
    bound = RemoteReward(url, timeout_s=timeout_s, max_retries=retries).max_batch_wall_s
    started = time.monotonic()
    with pytest.raises(Exception, match=pattern) as err:
        run(
            tmp_path / "run",
            mlflow_uri,
            *GRPO,
            "algo.max_steps=1",
            "reward=remote",
            f"reward.sources.remote.url={url}",
            f"reward.sources.remote.timeout_s={timeout_s}",
            f"reward.sources.remote.max_retries={retries}",
        )
    took = time.monotonic() - started
    assert url in str(err.value) or url.rsplit("/", 1)[0] in str(err.value), str(err.value)
    # Role start-up and the start-of-training evaluation (it scores too), then at most the client's batch bound.
    assert took < 180 + bound, (took, bound)
    SUMMARY.append((f"reward server {mode} (client bound {bound:.1f}s)", took, None))


# ---- disk and checkpoint damage ------------------------------------------------------------------------------
def _checkpoint_bytes(root: Path) -> int:
    latest = ck.latest_checkpoint(root)
    return sum(p.stat().st_size for p in latest.rglob("*") if p.is_file())


@pytest.fixture
def mount_tmpfs(tmp_path):
    mounts = []

    def mount(size_bytes: int) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, mlflow_uri, mount_tmpfs):
    # Measure one checkpoint of this run on a roomy disk, then give the run room for one and a half.
    probe = tmp_path / "probe"
    run(probe, mlflow_uri, *SFT, "algo.max_steps=2")
    size = _checkpoint_bytes(probe / "checkpoints")
    disk = mount_tmpfs(int(size * 1.5) + (1 << 20))
    out = disk / "run"
    start = time.monotonic()
    with pytest.raises(Exception, match=r"not enough disk space for the step-2 checkpoint|disk is full") as info:
        run(out, mlflow_uri, *SFT, "algo.max_steps=4")
    took = time.monotonic() - start
    assert took < 600
    assert "Traceback" not in str(info.value).splitlines()[0]
    root = out / "checkpoints"
    assert ck.latest_checkpoint(root) == root / "step_000001"
    assert not list(root.glob(".tmp-*")), "a failed save must not leave its partial directory on the full disk"
    SUMMARY.append(("full disk at the step-2 checkpoint", took, None))


def test_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, mlflow_uri, capsys):
    out = tmp_path / "run"
    keep = [*SFT, "algo.keep_checkpoints=3"]
    run(out, mlflow_uri, *keep, "algo.max_steps=3")
    # As if it had been killed after its step-3 checkpoint: no finished marker.
    (out / "finished.json").unlink()
    root = out / "checkpoints"
    newest = ck.latest_checkpoint(root)
    assert newest == root / "step_000003"
    shard = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    capsys.readouterr()
    result = run(out, mlflow_uri, *keep, "algo.max_steps=4")
    assert result.steps == 4
    printed = capsys.readouterr().out
    assert "skipping damaged checkpoint step_000003" in printed and shard.name in printed
    SUMMARY.append(("damaged newest checkpoint", None, None))
