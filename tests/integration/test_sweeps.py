"""Sweeps end to end: every sweep file composes point by point; a grid through submitit's local launcher and an
Optuna study land in MLflow as a parent run with one child per point; the report renders their curves.

The runs are the tiniest the platform makes (SFT on the offline chat model, one step, no evaluation split), so
what is tested is the plumbing: launcher, callback, parent/child lineage, objectives, isolation, report.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[2]
SWEEPS = REPO / "sweeps"
CONF = REPO / "conf"
SWEEP_FILES = sorted(SWEEPS.glob("*.yaml"))

# One optimizer step on 32 rows, no evaluation split (the objective falls back to the training loss).
TINY_SFT = [
    "algo.max_steps=1",
    "data.sources.tiny_chat.max_samples=32",
    "data.sources.tiny_chat.eval_split=null",
    "tracking.log_model=false",
]


def _compose_sweep(name: str, overrides: list[str] = (), hydra_config: bool = True):
    from hydra import compose, initialize_config_dir

    from rlhf.config.run import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(SWEEPS), version_base=None):
        return compose(
            name, overrides=[f"hydra.searchpath=[file://{CONF}]", *overrides], return_hydra_config=hydra_config
        )


def _sweep_values(key: str, spec: str) -> list:
    """The values a sweeper would try for `key=spec`: every grid value, or an interval's two bounds."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: F401 - registers the grammar
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    override = OverridesParser.create().parse_overrides([f"{key}={spec}"])[0]
    value = override.value()
    if isinstance(value, IntervalSweep):
        return [value.start, value.end]
    return list(override.sweep_string_iterator())


def _same(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return str(a) == str(b)


def test_sweep_files_found():
    # The grids and the Optuna studies the README documents; a new file must be added here (and composes below).
    assert {p.stem for p in SWEEP_FILES} == {"ppo_kl", "dpo_beta", "grpo_samples", "sft_lr_optuna", "grpo_optuna"}


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.stem for p in SWEEP_FILES])
def test_every_point_of_every_sweep_composes_and_plans(path):
    """Each grid point (each Optuna bound) composes against the schemas and passes resolve_plan's checks."""
    from rlhf.plan import resolve_plan

    cfg = _compose_sweep(path.stem)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN", f"{path.name} must set hydra.mode: MULTIRUN"
    assert "mlflow_sweep" in cfg.hydra.callbacks, "the parent-run callback comes from conf/config.yaml"
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params, f"{path.name} sweeps nothing"
    axes = [[f"{k}={v}" for v in _sweep_values(k, str(spec))] for k, spec in params.items()]
    points = list(itertools.product(*axes))
    for point in points:
        point_cfg = _compose_sweep(path.stem, list(point), hydra_config=False)
        plan = resolve_plan(OmegaConf.to_object(point_cfg))
        for override in point:
            key, value = override.split("=", 1)
            assert _same(OmegaConf.select(point_cfg, key), value), f"{path.name}: {override} did not reach the config"
        assert plan.algo == point_cfg.algo.name


LAUNCHERS = sorted((CONF / "hydra" / "launcher").glob("*.yaml"))


def _launcher(name: str, *overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    from rlhf.config.run import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"hydra/launcher={name}", *overrides], return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)  # ${hydra:...} in the launcher resolves against it
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=True)


def test_launcher_profiles_compose_and_size_jobs_from_hw():
    assert {p.stem for p in LAUNCHERS} == {"local", "slurm_cpu", "slurm_gpu", "ray_cluster"}
    for path in LAUNCHERS:
        assert _launcher(path.stem)["_target_"].startswith("hydra_plugins.")
    # conf/hw/a100x16.yaml: 2 nodes of 8 GPUs and 96 CPUs -> two whole nodes, one Ray task on each.
    gpu = _launcher("slurm_gpu", "hw=a100x16")
    assert (gpu["nodes"], gpu["gpus_per_node"], gpu["tasks_per_node"], gpu["cpus_per_task"]) == (2, 8, 1, 96)
    assert gpu["max_num_timeout"] > 0  # requeue on timeout is on
    assert _launcher("slurm_gpu", "hw=h100x1")["nodes"] == 1


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    with open(log, "w") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "rlhf.run", *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, text=True
        )


def _finish(proc: subprocess.Popen, log: Path, timeout: int) -> None:
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{log.read_text()[-6000:]}"


def _client(env):
    from mlflow.tracking import MlflowClient

    return MlflowClient(env["MLFLOW_TRACKING_URI"])


def _parent_and_children(env, sweep_dir: Path):
    from rlhf.tracking.callbacks import PARENT_FILE, child_runs

    parent = json.loads((sweep_dir / PARENT_FILE).read_text())
    client = _client(env)
    children = child_runs(client, parent["experiment_id"], parent["run_id"])
    return client.get_run(parent["run_id"]), children


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory):
    """Both sweeps at once (the machine has idle time while Ray and the models start):

    - grid: two SFT points (two learning rates) as two processes through submitit's local executor;
    - optuna: the sweeps/sft_lr_optuna.yaml study cut to 3 trials, run in parallel the same way.
    Each has its own sqlite store: several writers on one sqlite file can time out on its lock.
    """
    root = tmp_path_factory.mktemp("sweeps")
    base = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false", "HYDRA_FULL_ERROR": "1"}
    base.pop("RLHF_PARENT_RUN_ID", None)
    args = {
        "grid": ["-m", "hydra/launcher=local", "algo=sft", "algo.lr=1e-4,3e-4", *TINY_SFT],
        "optuna": [
            "-cd",
            "sweeps",
            "-cn",
            "sft_lr_optuna",
            "hydra.sweeper.n_trials=3",
            "hydra.sweeper.n_jobs=3",
            "hydra/launcher=local",
            *TINY_SFT,
        ],
    }
    out, procs = {}, []
    for name, extra in args.items():
        env = {**base, "MLFLOW_TRACKING_URI": f"sqlite:///{root / name}.db"}
        log = root / f"{name}.log"
        procs.append((_start([*extra, f"hydra.sweep.dir={root / name}"], env, log), log))
        out[name] = (root / name, env)
    try:
        for proc, log in procs:
            _finish(proc, log, timeout=900)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                proc.kill()
    return out


@pytest.mark.timeout(1000)
def test_grid_sweep_lands_as_parent_with_two_children(sweeps):
    from rlhf.lineage import find_lineage
    from rlhf.tracking.lineage import OBJECTIVE

    sweep_dir, env = sweeps["grid"]
    parent, children = _parent_and_children(env, sweep_dir)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["rlhf.sweep"] == "parent"
    assert len(children) == 2
    assert sorted(float(c.data.params["algo.lr"]) for c in children) == [1e-4, 3e-4]
    for c in children:
        assert c.info.status == "FINISHED"
        assert c.data.tags["objective.direction"] == "minimize"  # SFT optimizes the loss
        # Each point wrote into its own numbered subdir of the sweep dir.
        assert Path(c.data.tags["output_dir"]).parent == sweep_dir
        assert [i.dataset.name for i in c.inputs.dataset_inputs] == ["tiny_chat"]
    objectives = [c.data.metrics[OBJECTIVE] for c in children]
    assert parent.data.metrics["best_objective"] == pytest.approx(min(objectives))
    best = min(children, key=lambda c: c.data.metrics[OBJECTIVE])
    assert parent.data.tags["best_run_id"] == best.info.run_id
    # A checkpoint directory leads back to its run and the sweep's parent.
    point = Path(children[0].data.tags["output_dir"])
    info = find_lineage(str(point / "final"))
    assert info["run_id"] == children[0].info.run_id
    assert info["parent_run_id"] == parent.info.run_id
    assert info["data"][0]["digest"] == children[0].inputs.dataset_inputs[0].dataset.digest


@pytest.mark.timeout(1000)
def test_optuna_study_runs_three_trials(sweeps):
    sweep_dir, env = sweeps["optuna"]
    results = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    parent, children = _parent_and_children(env, sweep_dir)
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    lrs = [float(c.data.params["algo.lr"]) for c in children]
    assert len(set(lrs)) == 3 and all(1e-5 <= lr <= 1e-3 for lr in lrs)
    # What Optuna calls the best value is what MLflow recorded as the best child's objective.
    assert parent.data.metrics["best_objective"] == pytest.approx(results["best_value"])


@pytest.mark.timeout(1000)
def test_report_renders_one_axis_per_panel(sweeps, tmp_path):
    from rlhf.report import PANELS, report

    sweep_dir, env = sweeps["grid"]
    parent, _ = _parent_and_children(env, sweep_dir)
    out = tmp_path / "sweep.png"
    fig = report(str(out), parent_id=parent.info.run_id, tracking_uri=env["MLFLOW_TRACKING_URI"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert len(fig.axes) == len(PANELS) == 4
    loss_axis = fig.axes[2]
    assert len(loss_axis.get_lines()) == 2  # one line per sweep point
