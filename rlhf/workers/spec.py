"""The typed slices of the run config an on-policy role receives (never the whole config)."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.config.algo import RLConfig
from rlhf.config.engine import EngineConfig
from rlhf.config.model import ModelConfig
from rlhf.config.rollout import RolloutConfig
from rlhf.plan import Plan


@dataclass
class RoleSpec:
    algo: RLConfig
    model: ModelConfig
    engine: EngineConfig
    rollout: RolloutConfig
    plan: Plan
    output_dir: str
    # Optimizer steps over the whole run (for the learning-rate schedule).
    total_updates: int = 1
    # placement.mode: with an engine that has separate workers (vLLM), "separate" takes generation out of the
    # policy ranks.
    placement_mode: str = "colocated"
