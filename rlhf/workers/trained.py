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
        device: fixed chunks of the plan's micro-batch, or bins by ``algo.max_tokens_per_micro`` (padded to
        each bin's own widths, or packed with ``algo.pack_sequences``; rlhf/training/packing_rl.py)."""
        from rlhf.training.packing_rl import micro_batches

        a = self.spec.algo
        return micro_batches(
            batch,
            micro_rows=self.role_plan.micro_batch_per_gpu,
            max_tokens=getattr(a, "max_tokens_per_micro", None),
            packed=bool(getattr(a, "pack_sequences", False)),
            device=self.engine.device,
        )

    def _boundary(self, micros, i: int) -> None:
        """With dynamic micro-batches the number per optimizer step is not the plan's ``grad_accum``: mark the
        step's last micro-batch as DeepSpeed's accumulation boundary. (The loss scale stays ``loss_scale``:
        losses are divided by the minibatch's global counts, and DeepSpeed divides by the configured
        accumulation whatever the count.)"""
        if micros and micros[0].dynamic:
            self.engine.ds.set_gradient_accumulation_boundary(i == len(micros) - 1)
