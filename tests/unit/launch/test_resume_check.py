"""A resuming command may change only what the resumed run applies; the rest is refused, listed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf.config.preflight import compose_config
from rlhf.launch.resume_check import CHANGES_FILE, ResumeMismatchError, check_resume

ROOT = Path(__file__).resolve().parents[3]


def _config(*overrides: str) -> dict:
    return OmegaConf.to_container(compose_config(["algo=sft", *overrides]), resolve=True)


def _recorded(out: Path, *overrides: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(OmegaConf.to_yaml(compose_config(["algo=sft", *overrides])))


def test_unchanged_command_resumes_silently(tmp_path):
    _recorded(tmp_path, "algo.max_steps=8")
    assert check_resume(tmp_path, _config("algo.max_steps=8"), step=4) == {}
    assert not (tmp_path / CHANGES_FILE).exists()


def test_end_and_cadence_changes_are_applied_and_recorded_at_their_step(tmp_path):
    _recorded(tmp_path, "algo.max_steps=8", "algo.save_every=2")
    applied = check_resume(tmp_path, _config("algo.max_steps=12", "algo.save_every=4"), step=4)
    assert applied == {"algo.max_steps": (8, 12), "algo.save_every": (2, 4)}
    record = json.loads((tmp_path / CHANGES_FILE).read_text())
    assert record == {
        "step": 4,
        "changes": {"algo.max_steps": {"from": 8, "to": 12}, "algo.save_every": {"from": 2, "to": 4}},
    }


def test_settings_the_checkpoint_fixed_are_refused_all_at_once(tmp_path):
    _recorded(tmp_path)
    with pytest.raises(ResumeMismatchError) as info:
        check_resume(tmp_path, _config("algo.lr=3e-4", "algo.weight_decay=0.1", "algo.max_steps=9"), step=4)
    text = str(info.value)
    assert "algo.lr:" in text and "3e-4" not in text.split("algo.lr:")[0]
    assert "algo.weight_decay: 0.0 in the run, 0.1 now" in text
    assert "algo.max_steps" not in text.split("A resumed run may change only")[0]  # allowed, not listed
    assert "resume=false" in text and "output_dir" in text


def test_cli_refuses_a_changed_learning_rate_before_anything_starts(tmp_path):
    out = tmp_path / "run"
    _recorded(out, "algo.max_steps=8", f"output_dir={out}", "tracking=none")
    ckpt = out / "checkpoints" / "step_000004"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text(json.dumps({"step": 4, "algo": "sft"}))
    (out / "checkpoints" / "latest").write_text("step_000004\n")
    env = dict(os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "rlhf.run",
            "algo=sft",
            "algo.max_steps=8",
            f"output_dir={out}",
            "tracking=none",
            "algo.lr=1e-3",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "would change settings its checkpoint fixed" in proc.stderr and "algo.lr" in proc.stderr
    assert "Traceback" not in proc.stderr
    # The run's record is untouched: config.yaml still holds the learning rate the checkpoint trained with.
    assert "lr: 0.001" not in (out / "config.yaml").read_text()
