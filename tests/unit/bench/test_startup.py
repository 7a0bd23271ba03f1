"""The harness's start-up figures leave out its own preparation (model folder, compose, plan)."""

from __future__ import annotations

import pytest

from rlhf.bench.runner import without_prep


def test_preparation_is_taken_out_of_the_launch_figures_and_kept_apart():
    raw = {
        "startup/ray_s": 6.0,
        "startup/before_loop_s": 40.0,
        "startup/launch_to_first_step_s": 143.0,
    }
    out = without_prep(raw, 25.0)
    assert out["startup/before_loop_s"] == pytest.approx(15.0)
    assert out["startup/launch_to_first_step_s"] == pytest.approx(118.0)
    assert out["startup/before_loop_raw_s"] == 40.0 and out["startup/launch_to_first_step_raw_s"] == 143.0
    assert out["startup/bench_prep_s"] == 25.0 and out["startup/ray_s"] == 6.0
    assert raw["startup/before_loop_s"] == 40.0  # the input is left alone


def test_missing_figures_stay_missing_and_nothing_goes_negative():
    out = without_prep({"startup/before_loop_s": 3.0}, 5.0)
    assert out["startup/before_loop_s"] == 0.0
    assert "startup/launch_to_first_step_s" not in out
