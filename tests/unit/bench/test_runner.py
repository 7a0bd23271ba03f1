"""The harness's step accounting: a one-step off-policy workload runs one step more than it measures (its last
step has nothing to generate ahead), and the summary keeps exactly the measured steps."""

from __future__ import annotations

from pathlib import Path

from rlhf.bench.runner import generates_ahead, overrides_for, summarize
from rlhf.bench.workloads import Workload, load


def test_async_workloads_run_one_extra_step_that_is_not_measured():
    sync, overlap = load("grpo_qwen0_5b"), load("grpo_qwen0_5b_overlap")
    out = Path("/tmp/x")
    steps = sync.warmup_steps + sync.measure_steps
    assert f"algo.max_steps={steps}" in overrides_for(sync, out, [], None)
    assert f"algo.max_steps={steps + 1}" in overrides_for(overlap, out, [], None)
    # The command line's setting wins.
    assert f"algo.max_steps={steps + 1}" in overrides_for(sync, out, ["algo.async_rollout=true"], None)
    assert f"algo.max_steps={steps}" in overrides_for(overlap, out, ["algo.async_rollout=false"], None)
    assert not generates_ahead(["algo.async_rollout_x=true"]) and generates_ahead(["+algo.async_rollout=True"])


def test_the_summary_keeps_the_measured_steps_only():
    w = Workload(name="w", warmup_steps=1, measure_steps=2)
    records = [{"step": i, "timing/step_s": float(10 * i)} for i in range(1, 5)]  # steps 1..4; 4 is the extra
    got = summarize(w, records)
    assert [s["step"] for s in got["steps"]] == [2, 3] and got["mean"]["timing/step_s"] == 25.0
    assert got["measured_steps"] == 2


def test_interruptible_turns_the_time_limit_and_sigterm_into_an_exception_and_restores_the_handlers():
    import os
    import signal
    import time

    from rlhf.bench.runner import BenchInterrupted, interruptible

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)
    tic = time.monotonic()
    try:
        with interruptible(0.3):
            time.sleep(10)
        raise AssertionError("the time limit did not stop the block")
    except BenchInterrupted as e:
        assert "--time-limit=0.3s reached" in str(e)
    assert time.monotonic() - tic < 5
    try:
        with interruptible(None):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)
        raise AssertionError("SIGTERM did not stop the block")
    except BenchInterrupted as e:
        assert "SIGTERM" in str(e)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGALRM)) == before
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)
