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
