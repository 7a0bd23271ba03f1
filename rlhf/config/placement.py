"""Schema of the `placement` group: which roles share which GPUs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class PlacementConfig:
    # colocated: every role shares all GPUs (rollout engines sleep during training);
    # separate: each role gets its own GPUs, counted below.
    mode: str = "colocated"
    # GPUs per role with mode=separate. None: the planner's split (the critic the fewest GPUs it fits on, the
    # rollout engines a quarter of the machine, the actor what the others leave).
    actor_gpus: Optional[int] = None
    critic_gpus: Optional[int] = None
    ref_gpus: Optional[int] = None
    reward_gpus: Optional[int] = None
    rollout_gpus: Optional[int] = None
    # With mode=separate: the reference shares the actor's GPUs, the reward model the critic's.
    colocate_actor_ref: bool = True
    colocate_critic_reward: bool = True
