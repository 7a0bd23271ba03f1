"""One checkpoint path for every family: the driver publishes what the ranks wrote, and refuses, before any
role loads anything, a checkpoint of another algorithm or model or one missing a role this run trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.controllers.checkpoints import resume_checkpoint, save_checkpoint
from rlhf.engines import checkpoint as ck


class _Ranks:
    """The driver's view of a role group: ``run(method, *args)`` on every rank. Each rank writes or reads a
    shard file the way TrainedRole/TrainerWorker do (into the step's temporary directory), and calls are kept
    so that a test can assert nothing was loaded."""

    def __init__(self, out: Path, ckpt_name: str, ranks: int = 2):
        self.out, self.ckpt_name, self.ranks = out, ckpt_name, ranks
        self.calls: list[tuple] = []

    def run(self, method: str, *args):
        self.calls.append((method, *args))
        if method == "save_state":
            tmp = ck.temp_sibling(self.out / "checkpoints" / ck.step_dir_name(args[0])) / self.ckpt_name
            tmp.mkdir(parents=True, exist_ok=True)
            for r in range(self.ranks):
                (tmp / f"rank{r}.pt").write_text(f"step {args[0]} rank {r}")
        return [None] * self.ranks


def _roles(out: Path, critic: bool = True) -> dict:
    roles = {"actor": _Ranks(out, "policy"), "ref": _Ranks(out, "ref")}
    if critic:
        roles["critic"] = _Ranks(out, "critic")
    return roles


def test_save_publishes_every_trained_role_and_the_driver_state(tmp_path):
    roles = _roles(tmp_path)
    final = save_checkpoint(roles, tmp_path, 3, algo="ppo", model="tiny:llama_chat", state={"kl_coef": 0.1}, keep=2)
    assert final == tmp_path / "checkpoints" / "step_000003"
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_000003"
    assert sorted(p.name for p in (final / "policy").iterdir()) == ["rank0.pt", "rank1.pt"]
    assert (final / "critic").is_dir() and not (final / "ref").exists()  # frozen roles reload from their paths
    state = json.loads((final / ck.STATE_FILE).read_text())
    assert state["step"] == 3 and state["algo"] == "ppo" and state["model"] == "tiny:llama_chat"
    assert state["kl_coef"] == 0.1
    assert not ck.temp_sibling(final).exists()


def test_resume_loads_every_trained_role_and_returns_the_state(tmp_path):
    save_checkpoint(_roles(tmp_path), tmp_path, 2, algo="ppo", model="m", state={}, keep=2)
    roles = _roles(tmp_path)
    state = resume_checkpoint(roles, tmp_path, algo="ppo", model="m")
    assert state is not None and state["step"] == 2
    path = str(tmp_path / "checkpoints" / "step_000002")
    assert roles["actor"].calls == [("load_state", path)] and roles["critic"].calls == [("load_state", path)]
    assert roles["ref"].calls == []
    assert resume_checkpoint(_roles(tmp_path / "empty"), tmp_path / "empty", algo="ppo", model="m") is None


@pytest.mark.parametrize(
    ("algo", "model", "critic", "match"),
    [
        ("grpo", "m", False, "holds a ppo run, this is algo=grpo"),
        ("ppo", "other", True, "holds a run of model m, this is model.name_or_path=other"),
    ],
)
def test_resume_refuses_another_algorithm_or_model_before_loading(tmp_path, algo, model, critic, match):
    save_checkpoint(_roles(tmp_path), tmp_path, 2, algo="ppo", model="m", state={}, keep=2)
    roles = _roles(tmp_path, critic=critic)
    with pytest.raises(RuntimeError, match=match):
        resume_checkpoint(roles, tmp_path, algo=algo, model=model)
    assert all(not g.calls for g in roles.values())


def test_resume_refuses_a_checkpoint_without_a_role_this_run_trains(tmp_path):
    # Written by a run without a critic (GRPO's roles), resumed by a run that trains one under the same name.
    save_checkpoint(_roles(tmp_path, critic=False), tmp_path, 2, algo="ppo", model="m", state={}, keep=2)
    roles = _roles(tmp_path)
    with pytest.raises(RuntimeError, match=r"no state for role\(s\) \['critic'\]"):
        resume_checkpoint(roles, tmp_path, algo="ppo", model="m")
    assert all(not g.calls for g in roles.values())
