"""The top-level schema and its registration with Hydra's ConfigStore.

Each group option in `conf/<group>/<option>.yaml` starts its defaults list with
`/schema/<group>/<schema>@_here_`, so unknown keys and wrong types fail when Hydra composes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from omegaconf import MISSING

from rlhf.config.algo import (
    CSFTConfig,
    DPOConfig,
    IterativeDPOConfig,
    KDConfig,
    KTOConfig,
    PRMConfig,
    RejectionSamplingConfig,
    RewardModelConfig,
    RLConfig,
    SFTConfig,
)
from rlhf.config.data import DataConfig
from rlhf.config.engine import EngineConfig
from rlhf.config.evaluation import EvalConfig, GenerateConfig
from rlhf.config.hw import HwConfig
from rlhf.config.model import ModelConfig, RoleModelConfig
from rlhf.config.placement import PlacementConfig
from rlhf.config.reward import RewardConfig
from rlhf.config.rollout import RolloutConfig
from rlhf.config.tracking import TrackingConfig


@dataclass
class RunConfig:
    # The algorithm node's type depends on the option picked (SFTConfig, DPOConfig, RLConfig, ...).
    algo: Any = MISSING
    model: ModelConfig = MISSING
    data: DataConfig = MISSING
    hw: HwConfig = MISSING
    placement: PlacementConfig = field(default_factory=PlacementConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    # A critic (PPO) or reference model other than the actor's: `critic.name_or_path=llama3_8b` (a conf/model
    # preset), a local folder or a hub id; None loads the actor's model. algo.ref_name_or_path (DPO, KTO) is
    # the same setting for offline algorithms.
    critic: RoleModelConfig = field(default_factory=RoleModelConfig)
    ref: RoleModelConfig = field(default_factory=RoleModelConfig)
    # Name of the conf/tuning/ file applied (set by that file itself; None when none matched).
    tuning: Optional[str] = None
    # train: run the job; plan: print the resolved plan and exit.
    mode: str = "train"
    seed: int = 0
    # Where checkpoints and the final model go (None: Hydra's run directory).
    output_dir: Optional[str] = None
    # Resume from the newest training-state checkpoint in output_dir when one exists.
    resume: bool = True
    # Held-out evaluation (training's start/end and every algo.eval_every steps, and rlhf.eval) and
    # rlhf.generate settings (rlhf/config/evaluation.py).
    eval: EvalConfig = field(default_factory=EvalConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    # Show third-party warnings and progress bars (also `-v` on the command line).
    verbose: bool = False
    # Seconds a role's rank may go without a heartbeat (each beats every second, also in a long generate or
    # model load) before the run stops with an error naming it: a process stopped, swapping or wedged.
    stall_timeout_s: float = 300.0
    # Profile training step N (as logged: 1 is the first) with torch's profiler in every rank of every role: each
    # writes profile/step<N>/<role>_rank<r>.txt (operators by device and by host time) and a Chrome trace
    # (.json.gz, chrome://tracing or ui.perfetto.dev) into the run's output directory. null: no profiling.
    profile_step: Optional[int] = None


# group -> {schema name: dataclass}; the names are what option files put in their defaults list.
SCHEMAS: Dict[str, Dict[str, type]] = {
    "algo": {
        "sft": SFTConfig,
        "rm": RewardModelConfig,
        "dpo": DPOConfig,
        "kto": KTOConfig,
        "rl": RLConfig,
        "prm": PRMConfig,
        "kd": KDConfig,
        "csft": CSFTConfig,
        "rejection_sampling": RejectionSamplingConfig,
        "iterative_dpo": IterativeDPOConfig,
    },
    "model": {"model": ModelConfig},
    "data": {"data": DataConfig},
    "hw": {"hw": HwConfig},
    "placement": {"placement": PlacementConfig},
    "engine": {"engine": EngineConfig},
    "rollout": {"rollout": RolloutConfig},
    "reward": {"reward": RewardConfig},
    "tracking": {"tracking": TrackingConfig},
}


def register_configs() -> None:
    """Register the top-level schema and every group schema with Hydra (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="rlhf_schema", node=RunConfig)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=node, package=group)
