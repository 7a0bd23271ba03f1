"""What the trained on-policy roles (policy, critic) share: a DeepSpeed engine built from the role's plan,
micro-batched passes over a batch, and state save/resume into the driver's step checkpoint."""

from __future__ import annotations

from pathlib import Path

from rlhf.workers.base import RankWorker
from rlhf.workers.spec import RoleSpec


class StepState:
    """A trained role's ranks write their engine shards into checkpoints/step_N/<ckpt_name> (the driver
    publishes the step: rlhf/controllers/checkpoints.py) and load them back. Needs ``spec.output_dir`` and
    ``engine``."""

    ckpt_name = "policy"

    def save_state(self, step: int) -> None:
        from rlhf.engines import checkpoint as ck

        tmp = ck.temp_sibling(Path(self.spec.output_dir) / "checkpoints" / ck.step_dir_name(step)) / self.ckpt_name
        tmp.mkdir(parents=True, exist_ok=True)
        self.engine.save_state(tmp)

    def load_state(self, ckpt_dir: str) -> None:
        self.engine.load_state(Path(ckpt_dir) / self.ckpt_name)


class TrainedRole(StepState, RankWorker):
    # The plan's role name and the checkpoint sub-directory this role writes.
    role = "actor"
    ckpt_name = "policy"

    def __init__(self, rank: int, world_size: int, spec: RoleSpec):
        super().__init__(rank, world_size)
        self.spec = spec
        self.plan = spec.plan
        self.role_plan = spec.plan.role(self.role)
        if self.role_plan is None:
            raise ValueError(f"the plan has no {self.role} role")

    def _engine(self, model, lr=None):
        from rlhf.engines.deepspeed import TrainEngine

        s = self.spec
        return TrainEngine.for_role(
            model,
            self.role_plan,
            train=s.algo,
            engine=s.engine,
            dtype=self.plan.dtype,
            total_steps=s.total_updates,
            lr=lr,
        )

    def _micro(self, batch):
        """The role's micro-batches of a batch (a RolloutBatch, Experience or MiniBatch), on the engine's
        device."""
        return [mb.to(self.engine.device) for mb in batch.chunks(self.role_plan.micro_batch_per_gpu)]
