"""Child runs of a sweep are named by their swept values (rlhf/tracking/callbacks.py)."""

from __future__ import annotations

from omegaconf import OmegaConf

from rlhf.tracking.callbacks import child_run_name, swept_keys


def _hydra(params, task):
    return OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": task}}})


def test_swept_keys_come_from_the_sweeper_and_the_command_line():
    launch = _hydra({"algo.kl_coef": "0.01,0.05,0.2"}, ["algo=ppo", "algo.lr=3e-5,1e-4", "model=tiny"])
    assert swept_keys(launch) == ["algo.kl_coef", "algo.lr"]


def test_child_names_hold_the_points_values():
    job = _hydra(None, ["algo=ppo", "algo.lr=3e-5", "model=tiny", "algo.kl_coef=0.05"])
    assert child_run_name(job, ["algo.kl_coef", "algo.lr"]) == "lr=3e-5 kl_coef=0.05"
    # Leaves that repeat keep their full keys.
    job = _hydra(None, ["algo.lr=1e-5", "reward.lr=2"])
    assert child_run_name(job, ["algo.lr", "reward.lr"]) == "algo.lr=1e-5 reward.lr=2"
    assert child_run_name(job, ["algo.beta"]) is None
