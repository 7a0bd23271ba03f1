"""A resumed MLflow run does not log again the steps it had logged before it was stopped."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from rlhf.tracking.mlflow_tracker import MLflowTracker


def test_steps_retrained_after_resume_are_logged_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    first = MLflowTracker(uri=uri, experiment="e", run_name="r")
    for step in range(1, 6):  # killed after logging step 5; its last checkpoint was step 2
        first.log_metrics({"train/loss": 10.0 - step}, step)
    first.end("KILLED")
    resumed = MLflowTracker(uri=uri, experiment="e", run_name="r", resume_run_id=first.run_id)
    assert resumed.run_id == first.run_id and resumed.logged_through == 5
    for step in range(3, 8):  # retrains 3..5, then goes on
        resumed.log_metrics({"train/loss": 100.0 + step}, step)
    resumed.end()
    history = sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(first.run_id, "train/loss"))
    assert history == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 5.0), (6, 106.0), (7, 107.0)]
    fresh = MLflowTracker(uri=uri, experiment="e", run_name="r2")
    assert fresh.logged_through == -1
    fresh.end()
