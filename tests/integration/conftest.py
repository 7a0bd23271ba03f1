"""Shared helpers for the end-to-end tests: compose + execute a run under tmp, read its MLflow run and weights,
and drive one training rank in-process (the same TrainerWorker class Ray hosts, without the actor start).

Every run writes its outputs and its sqlite MLflow store under pytest's tmp directory; nothing lands in the
repository. One local Ray cluster serves a whole test module (``ensure_ray`` joins the running one).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

# Shrunken shipped data sets (max_samples caps the train and the eval split of a source alike), so that each
# evaluation and data-set build stays well under a second.
SMALL_DATA = {
    "sft": ["data.sources.tiny_chat.max_samples=32"],
    "pretrain": ["data.sources.tiny_text.max_samples=80", "data.eval_fraction=0.2"],
    "pair": ["data.sources.tiny_pref.max_samples=32"],
    "kto": ["data.sources.tiny_kto.max_samples=64"],
}


@pytest.fixture(scope="module", autouse=True)
def _ray_per_module():
    """Runs of a module share one local Ray cluster; it goes down with the module."""
    yield
    import ray

    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"


def compose(out: Path, mlflow_uri: str, *overrides: str, log_model: bool = False):
    from rlhf.config.preflight import compose_config

    return compose_config(
        [
            f"output_dir={out}",
            f"tracking.tracking_uri={mlflow_uri}",
            f"tracking.log_model={str(log_model).lower()}",
            *overrides,
        ]
    )


def run(out: Path, mlflow_uri: str, *overrides: str, log_model: bool = False):
    """Compose and execute one run in-process; returns its RunResult."""
    from rlhf.run import execute

    result = execute(compose(out, mlflow_uri, *overrides, log_model=log_model), progress=False)
    assert result is not None and result.model_dir, result
    return result


def run_id(model_dir: str | Path) -> str:
    """The MLflow run id recorded beside the saved model."""
    return json.loads((Path(model_dir) / "rlhf_run.json").read_text())["mlflow_run_id"]


def metric_history(mlflow_uri: str, rid: str, key: str) -> dict[int, float]:
    """step -> value of one metric of an MLflow run."""
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient(mlflow_uri).get_metric_history(rid, key)}


def weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(model_dir) / "model.safetensors"))


def base_weights() -> dict[str, torch.Tensor]:
    """The weights every run starts from (model=tiny_chat)."""
    from rlhf.models.loading import resolve_path

    return weights(resolve_path("tiny:llama_chat"))


def local_worker(tmp: Path, *overrides: str):
    """One data-parallel rank (world size 1) set up in this process, for tests that need its tensors."""
    from omegaconf import OmegaConf

    from rlhf.config.preflight import compose_config
    from rlhf.engines.dist import free_port
    from rlhf.plan import resolve_plan
    from rlhf.workers.trainer import TrainerSpec, TrainerWorker

    cfg = OmegaConf.to_object(compose_config([f"output_dir={tmp}", "tracking=none", *overrides]))
    plan = resolve_plan(cfg)
    assert plan.world_size == 1, "an in-process rank must be the only one"
    spec = TrainerSpec(
        algo=cfg.algo,
        model=cfg.model,
        data=cfg.data,
        engine=cfg.engine,
        plan=plan,
        seed=cfg.seed,
        output_dir=str(tmp),
        resume=False,
    )
    worker = TrainerWorker(0, 1, spec)
    worker.setup("127.0.0.1", free_port())
    return worker


def step_with_gradient(worker, step: int = 0) -> tuple[dict[str, Any], list[torch.Tensor], list[torch.Tensor]]:
    """Run one optimizer step; returns its metrics, the gradient the optimizer received (captured just before
    the update) and the weights after it, both as ZeRO's flat fp32 partitions (one per parameter group)."""
    captured: list[list[torch.Tensor]] = []
    opt = worker.engine.optimizer
    torch_opt = getattr(opt, "optimizer", opt)
    hook = torch_opt.register_step_pre_hook(
        lambda o, args, kwargs: captured.append([p.grad.detach().clone() for g in o.param_groups for p in g["params"]])
    )
    try:
        stats = worker.train_step(step)
    finally:
        hook.remove()
    # ZeRO steps its torch optimizer once per parameter group, showing it that group alone.
    grads = [t for call in captured for t in call]
    after = [
        p.detach().clone()
        for p in getattr(
            opt, "single_partition_of_fp32_groups", [p for g in torch_opt.param_groups for p in g["params"]]
        )
    ]
    assert len(grads) == len(after), f"expected one gradient per parameter group, got {len(grads)} for {len(after)}"
    return stats, grads, after
