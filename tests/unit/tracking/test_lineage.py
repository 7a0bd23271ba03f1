"""Run records and lineage on a real (sqlite) MLflow store: a checkpoint directory leads back to its run."""

from __future__ import annotations

import pytest

from rlhf.config.tracking import TrackingConfig
from rlhf.tracking.lineage import log_objective, previous_run_id, read_run_record, write_run_record
from rlhf.tracking.mlflow_tracker import make_tracker


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # One store for the module: creating a sqlite store runs MLflow's migrations (seconds).
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking(store, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    return TrackingConfig(experiment="lineage-test", log_model=False)


def test_checkpoint_dir_leads_back_to_run_and_config(tmp_path, tracking):
    from rlhf.lineage import find_lineage

    out = tmp_path / "run"
    step = out / "checkpoints" / "step_000002"
    step.mkdir(parents=True)
    tracker = make_tracker(tracking, run_name="unit")
    tracker.set_tags({"output_dir": str(out)})
    write_run_record(out, tracker, parent_run_id=None)
    log_objective(tracker, "eval/loss", 0.25, higher_is_better=False, step=2)
    tracker.log_text("algo:\n  name: sft\n", "config.yaml")
    tracker.end()

    assert read_run_record(step)["mlflow_run_id"] == tracker.run_id
    info = find_lineage(str(step))
    assert info["run_id"] == tracker.run_id
    assert info["objective"] == {"metric": "eval/loss", "direction": "minimize", "value": 0.25}


def test_lineage_without_record_falls_back_to_output_dir_tag(tmp_path, tracking):
    from rlhf.lineage import find_lineage

    out = tmp_path / "copied"
    (out / "final").mkdir(parents=True)
    tracker = make_tracker(tracking, run_name="unit")
    tracker.set_tags({"output_dir": str(out.resolve())})
    tracker.end()
    assert find_lineage(str(out / "final"))["run_id"] == tracker.run_id


def test_resumed_attempt_continues_the_same_run(tmp_path, tracking):
    out = tmp_path / "point"
    out.mkdir()
    first = make_tracker(tracking, run_name="attempt")
    write_run_record(out, first, parent_run_id=None)
    first.log_metrics({"train/loss": 1.0}, 1)
    first.end("KILLED")
    # No checkpoint yet: a rerun would start over, so it gets a run of its own.
    assert previous_run_id(out) is None
    step = out / "checkpoints" / "step_000001"
    step.mkdir(parents=True)
    (step / "trainer_state.json").write_text("{}")
    (out / "checkpoints" / "latest").write_text("step_000001\n")
    # A requeued job finds the record in the same output_dir and appends to the same run.
    second = make_tracker(tracking, run_name="attempt", resume_run_id=previous_run_id(out))
    assert second.run_id == first.run_id
    second.log_metrics({"train/loss": 0.5}, 2)
    second.end()
    history = second.mlflow.tracking.MlflowClient().get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 0.5)]
