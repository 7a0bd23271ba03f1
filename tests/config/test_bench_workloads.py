"""Every benchmark workload (conf/bench/*.yaml) loads, and its run composes and plans as `python -m rlhf.bench`
would start it, before any GPU time is spent on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf.bench.runner import overrides_for
from rlhf.bench.workloads import REPO, load, names
from rlhf.config.preflight import compose_config
from rlhf.data.sources import resolve_data
from rlhf.plan import resolve_plan


@pytest.mark.parametrize("name", names())
def test_workload_composes_and_plans(name, tmp_path):
    w = load(name)
    assert "{repo}" not in " ".join(w.overrides)
    for o in w.overrides:  # data shipped with the project exists
        if "benchmarks/data" in o:
            assert Path(o.split("=", 1)[1].removeprefix("json@")).is_dir(), o
    args = overrides_for(w, tmp_path / "out", [], None)
    cfg = OmegaConf.to_object(compose_config(args))
    plan = resolve_plan(dataclasses.replace(cfg, data=resolve_data(cfg.data)))
    if w.report == "step":  # one-step off-policy runs take one more step, left out of the measurement
        assert cfg.algo.max_steps == w.warmup_steps + w.measure_steps + int(getattr(cfg.algo, "async_rollout", False))
    assert plan.algo and plan.total_gpus == (0 if w.device == "cpu" else cfg.hw.gpus_per_node * cfg.hw.nodes)


def test_a_bad_workload_name_lists_the_choices():
    with pytest.raises(ValueError, match="not one of"):
        load("no_such_workload")
    assert (REPO / "conf" / "bench" / "tiny.yaml").exists()
