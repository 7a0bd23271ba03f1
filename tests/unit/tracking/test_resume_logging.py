"""A resumed MLflow run does not log again the steps it had logged before it was stopped; a run left RUNNING by a
killed driver is closed by the next start in its output directory."""

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


def test_an_evaluation_at_the_last_logged_step_is_still_logged_after_resume(tmp_path):
    """Killed after logging step 4's training metrics, before its final evaluation: the resumed run (from the
    step-4 checkpoint) logs no training step again but does log the evaluation at step 4."""
    uri = f"sqlite:///{tmp_path}/m.db"
    first = MLflowTracker(uri=uri, experiment="e", run_name="r")
    for step in range(1, 5):
        first.log_metrics({"train/loss": float(step)}, step)
    first.end("KILLED")
    resumed = MLflowTracker(uri=uri, experiment="e", run_name="r", resume_run_id=first.run_id)
    resumed.log_metrics({"train/loss": 99.0, "eval/loss": 0.5}, 4)
    resumed.end()
    client = MlflowClient(uri)
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "train/loss")][-1] == (4, 4.0)
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "eval/loss")] == [(4, 0.5)]


def _orphan(tmp_path, uri: str, steps: int) -> str:
    """A run whose driver was killed with -9: RUNNING in the store, its id in the output dir's run record."""
    import mlflow

    from rlhf.tracking.lineage import write_run_record

    tracker = MLflowTracker(uri=uri, experiment="e", run_name="killed")
    for step in range(1, steps + 1):
        tracker.log_metrics({"train/loss": float(step)}, step)
    write_run_record(tmp_path, tracker, None)
    mlflow.end_run()  # detach this process from it without ending it in the store ...
    MlflowClient(uri).update_run(tracker.run_id, status="RUNNING")  # ... where it stays RUNNING, as after kill -9
    return tracker.run_id


def test_a_run_left_running_by_a_killed_driver_is_marked_killed_by_the_next_start(tmp_path):
    from rlhf.tracking.lineage import TAG_END_REASON, close_orphaned_run

    uri = f"sqlite:///{tmp_path}/m.db"
    rid = _orphan(tmp_path, uri, steps=3)
    assert MlflowClient(uri).get_run(rid).info.status == "RUNNING"
    assert close_orphaned_run(tmp_path) == rid
    run = MlflowClient(uri).get_run(rid)
    assert run.info.status == "KILLED"
    assert "driver died without ending it (last logged step 3)" in run.data.tags[TAG_END_REASON]
    last = MlflowClient(uri).get_metric_history(rid, "train/loss")[-1]
    assert run.info.end_time == last.timestamp  # ended when it last logged, not when it was found
    assert close_orphaned_run(tmp_path) is None  # once


def test_the_run_being_resumed_is_left_to_the_resume(tmp_path):
    from rlhf.tracking.lineage import close_orphaned_run

    uri = f"sqlite:///{tmp_path}/m.db"
    rid = _orphan(tmp_path, uri, steps=2)
    assert close_orphaned_run(tmp_path, keep=rid) is None
    assert MlflowClient(uri).get_run(rid).info.status == "RUNNING"
    resumed = MLflowTracker(uri=uri, experiment="e", run_name="r", resume_run_id=rid)
    resumed.end()
    assert MlflowClient(uri).get_run(rid).info.status == "FINISHED"


def test_a_resumed_run_that_finishes_keeps_why_it_was_interrupted_but_no_end_reason(tmp_path):
    from rlhf.tracking.lineage import TAG_END_REASON, close_orphaned_run

    uri = f"sqlite:///{tmp_path}/m.db"
    rid = _orphan(tmp_path, uri, steps=2)
    close_orphaned_run(tmp_path)  # the next start marks it KILLED with the reason ...
    MLflowTracker(uri=uri, experiment="e", run_name="r", resume_run_id=rid).end()  # ... and resumes it
    run = MlflowClient(uri).get_run(rid)
    assert run.info.status == "FINISHED" and TAG_END_REASON not in run.data.tags
    assert "driver died without ending it (last logged step 2)" in run.data.tags["rlhf.interrupted"]


def test_values_the_first_attempt_left_to_the_planner_are_not_reported_as_changed(tmp_path):
    uri = f"sqlite:///{tmp_path}/m.db"
    first = MLflowTracker(uri=uri, experiment="e", run_name="r")
    first.log_params({"algo": {"lr": None, "beta": 0.1}})
    first.end("KILLED")
    resumed = MLflowTracker(uri=uri, experiment="e", run_name="r", resume_run_id=first.run_id)
    resumed.log_params({"algo": {"lr": 1e-6, "beta": 0.2}})
    resumed.end()
    tags = MlflowClient(uri).get_run(first.run_id).data.tags
    assert tags.get("resumed_with.algo.beta") == "0.2" and "resumed_with.algo.lr" not in tags
