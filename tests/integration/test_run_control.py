"""Run control end to end on CPU under a local Ray: held-out evaluation every algo.eval_every steps (read back
from MLflow), and algo.max_time stopping at a step boundary with a saved, evaluated, finished run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import metric_history, run_id

# GRPO, 4 prompts x 4 samples a step, 8-token answers, an 8-prompt held-out evaluation.
SHORT = [
    "algo=grpo",
    "algo.prompts_per_step=4",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "rollout.max_new_tokens=8",
    "data.sources.tiny_math.max_samples=64",
    "eval.max_prompts=8",
]


def _run(tmp_path: Path, mlflow_uri: str, *overrides: str):
    from tests.integration.conftest import run

    return run(tmp_path / "out", mlflow_uri, *SHORT, *overrides)


def test_eval_every_logs_held_out_metrics_at_those_steps(tmp_path: Path, mlflow_uri: str) -> None:
    result = _run(tmp_path, mlflow_uri, "algo.max_steps=4", "algo.eval_every=2")
    rid = run_id(result.model_dir)
    for key in ("eval/accuracy", "eval/reward_mean", "eval/exact_match_mean"):
        history = metric_history(mlflow_uri, rid, key)
        # Step 2 from eval_every; step 4 is the end-of-run evaluation (not repeated by eval_every).
        assert sorted(history) == [2, 4], (key, history)
        assert all(0.0 <= v <= 2.0 for v in history.values())
    assert sorted(metric_history(mlflow_uri, rid, "eval/start_accuracy")) == [0]
    assert result.eval["eval/accuracy"] == metric_history(mlflow_uri, rid, "eval/accuracy")[4]


def test_max_time_stops_at_a_step_boundary_and_finishes(tmp_path: Path, mlflow_uri: str, capsys) -> None:
    from mlflow.tracking import MlflowClient

    # One second is used up by the start itself: the first step runs (a run always makes progress), then the
    # clock stops it before the second.
    result = _run(tmp_path, mlflow_uri, "algo.max_steps=5", "algo.max_time=00:00:01")
    out = capsys.readouterr().out
    assert result.steps == 1, result.steps
    assert "algo.max_time=00:00:01 (1s): stopping after step 1 of 5" in out, out[-2000:]
    assert "stopped early by algo.max_time after 1 of 5 steps" in out
    final = Path(result.model_dir)
    assert (final / "model.safetensors").is_file() and (final / "config.json").is_file()
    assert (tmp_path / "out" / "checkpoints" / "latest").read_text().strip() == "step_000001"
    run = MlflowClient(mlflow_uri).get_run(run_id(final))
    assert run.info.status == "FINISHED"
    assert run.data.tags["stopped_early"] == "algo.max_time after step 1 of 5"
    assert "eval/accuracy" in result.eval  # evaluated at the stop


def test_run_control_values_are_refused_at_plan_time() -> None:
    from omegaconf import OmegaConf

    from rlhf.config.preflight import compose_config
    from rlhf.plan import PlanError, resolve_plan

    cfg = OmegaConf.to_object(
        compose_config(["algo.max_time=-5", "algo.max_steps=0", "algo.epochs=0", "algo.save_every=-1", "tracking=none"])
    )
    with pytest.raises(PlanError) as err:
        resolve_plan(cfg)
    text = str(err.value)
    for key in ("algo.max_time='-5'", "algo.max_steps=0", "algo.epochs=0", "algo.save_every=-1"):
        assert key in text, (key, text)


def test_durations() -> None:
    from rlhf.config.validate import parse_duration

    assert parse_duration("01:00:00") == 3600
    assert parse_duration("1-02:00:00") == 86400 + 7200  # Slurm's D-HH:MM:SS
    assert parse_duration("90:30") == 90 * 60 + 30
    assert parse_duration(600) == 600 and parse_duration("12.5") == 12.5 and parse_duration(None) is None
    for bad in ("-1", "soon", "1:2:3:4", True):
        with pytest.raises(ValueError):
            parse_duration(bad)
