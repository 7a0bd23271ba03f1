"""Best child of a sweep, on real runs in a sqlite MLflow store."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from rlhf.tracking.callbacks import best_child, child_runs, experiment_id


def _child(client, exp, parent, objective, direction, status="FINISHED"):
    run = client.create_run(exp, tags={"mlflow.parentRunId": parent, "objective.direction": direction})
    if objective is not None:
        client.log_metric(run.info.run_id, "objective", objective)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_best_child_follows_the_objective_direction(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = experiment_id(client, "sweep-test", uri)
    parent = client.create_run(exp).info.run_id
    low = _child(client, exp, parent, 0.2, "minimize")
    high = _child(client, exp, parent, 0.9, "minimize")
    _child(client, exp, parent, 0.01, "minimize", status="FAILED")  # failed points never win
    _child(client, exp, parent, None, "minimize")  # nor points without an objective
    client.create_run(exp, tags={"mlflow.parentRunId": "another-sweep"})

    runs = child_runs(client, exp, parent)
    assert len(runs) == 4
    assert best_child(runs).info.run_id == low  # the children's tag says minimize
    assert best_child(runs, higher_is_better=True).info.run_id == high  # the sweeper's direction wins
    assert best_child([]) is None
