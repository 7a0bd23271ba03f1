"""Multiruns keep every check of a single run: each point of a grid (each bound of an Optuna space) is composed
and planned before Hydra launches anything, for `-m`, `-cd sweeps -cn <file>` and any working directory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rlhf.config import preflight as pf
from rlhf.config.preflight import CONF_DIR, preflight

SWEEPS = CONF_DIR.parent / "sweeps"


def test_a_multirun_with_a_typo_a_wrong_type_and_an_impossible_point_lists_all_three():
    msg = preflight(
        [
            "-m",
            "algo=dpo",
            "+algo.betaa=0.1",
            "algo.beta=0.1,abc",
            "algo.micro_batch_per_gpu=4,3",
            "algo.train_batch_samples=16",
        ]
    )
    assert msg is not None and msg.startswith("4 of 4 sweep point(s) cannot run; nothing was launched:")
    # The typo (every point), the wrong type (the two beta=abc points), the impossible batch (the micro=3 ones):
    # the same messages a single run prints.
    assert "unknown config key 'algo.betaa' (schema DPOConfig). Did you mean 'algo.beta'?" in msg
    assert "wrong type for 'algo.beta': got 'abc', expected a float" in msg
    assert "algo.train_batch_samples=16 is not divisible by algo.micro_batch_per_gpu=3 x 1 data-parallel rank(s)" in msg
    assert msg.count("- algo.beta=") == 4


def test_a_good_multirun_passes_and_only_its_bad_point_is_listed():
    assert preflight(["-m", "algo=sft", "algo.lr=1e-4,3e-4"]) is None
    msg = preflight(["-m", "algo=sft", "algo.train_batch_samples=16", "algo.micro_batch_per_gpu=2,3"])
    assert msg.startswith("1 of 2 sweep point(s)") and "- algo.micro_batch_per_gpu=3:" in msg


def test_sweep_files_expand_to_their_grid_and_optuna_bounds(monkeypatch):
    monkeypatch.setattr(pf, "_CONFIG_DIR", [SWEEPS])
    # ppo_kl: kl_coef (3) x lr (2); a command-line sweep of lr replaces the file's.
    _plain, points = pf.sweep_points([], "ppo_kl")
    assert len(points) == 6 and ["algo.kl_coef=0.2", "algo.lr=0.0001"] in points
    _plain, points = pf.sweep_points(["algo.lr=1e-5,2e-5,3e-5"], "ppo_kl")
    assert len(points) == 9
    # sft_lr_optuna: each interval's two bounds, log-scaled or not: 2 x 2 points.
    _plain, points = pf.sweep_points([], "sft_lr_optuna")
    assert points == [
        ["algo.lr=1e-05", "algo.warmup_ratio=0.0"],
        ["algo.lr=1e-05", "algo.warmup_ratio=0.1"],
        ["algo.lr=0.001", "algo.warmup_ratio=0.0"],
        ["algo.lr=0.001", "algo.warmup_ratio=0.1"],
    ]


def test_sweep_file_points_are_checked_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["-cd", "sweeps", "-cn", "dpo_beta", "+algo.betaa=0.1"]
    monkeypatch.setattr(sys, "argv", ["rlhf.run", *argv])
    msg = preflight(argv)
    assert msg.startswith("4 of 4 sweep point(s)") and "unknown config key 'algo.betaa'" in msg
    # Hydra is pointed at the project's sweeps/ folder.
    assert sys.argv[2] == str(SWEEPS)
    assert preflight(["-cd", "sweeps", "-cn", "grpo_samples"]) is None
    assert "config directory 'nowhere' not found" in preflight(["-cd", "nowhere", "-cn", "x"])


def test_too_many_points_are_checked_one_axis_at_a_time():
    # 20 x 20 = 400 points > 256: each value once, the other axis at its first value (1 + 19 + 19 = 39 points).
    values = ",".join(str(i) for i in range(1, 21))
    _plain, points = pf.sweep_points([f"algo.epochs={values}", f"algo.log_every={values}"])
    assert len(points) == 39 and ["algo.epochs=20", "algo.log_every=1"] in points


def test_cli_refuses_a_bad_sweep_before_launching_anything(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env["PYTHONPATH"] = str(CONF_DIR.parent) + os.pathsep + env.get("PYTHONPATH", "")
    result = subprocess.run(
        [sys.executable, "-m", "rlhf.run", "-cd", "sweeps", "-cn", "dpo_beta", "algo.beta=0.1,abc", "tracking=none"],
        cwd=tmp_path,
        env=env,
        text=True,
        capture_output=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: 1 of 2 sweep point(s) cannot run; nothing was launched:")
    assert "wrong type for 'algo.beta': got 'abc', expected a float" in result.stderr
    assert not (tmp_path / "multirun").exists(), "no point may start"


@pytest.mark.parametrize("name", sorted(p.stem for p in SWEEPS.glob("*.yaml")))
def test_every_shipped_sweep_passes_preflight(name):
    assert preflight(["-cd", str(SWEEPS), "-cn", name]) is None
