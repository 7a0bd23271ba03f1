"""The one table from ``algo=<name>`` to what runs: one row per algorithm.

A row says which schema its config file uses (``/schema/algo/<schema>``, rlhf/config/run.py), the controller
family that runs it (``CONTROLLERS``), the data task, the objective the training worker runs
(rlhf/training/objectives.py ``OBJECTIVES``; on-policy algorithms train the policy loss), the roles it needs,
and the metric a sweep optimizes with its direction. Greppable on purpose: a new loss such as ORPO or SimPO is
its objective, its conf/algo/<name>.yaml and a row here (see CONTRIBUTING.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# Controller family -> "module:function" of its loop (imported lazily: `mode=plan` never imports Ray).
CONTROLLERS = {
    "offline": "rlhf.controllers.offline:run_offline",
    "onpolicy": "rlhf.controllers.onpolicy:run_onpolicy",
    # Rounds of sampling from the current policy, scoring and offline training (rejection sampling, iterative DPO).
    "iterative": "rlhf.controllers.iterative:run_iterative",
}


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    # Schema of its config node (a key of rlhf.config.run.SCHEMAS["algo"]).
    schema: str
    # Controller family: offline (SFT-like and pairwise, data from files), onpolicy (RL with rollouts) or
    # iterative (rounds of sampling, scoring and offline training on what was kept).
    family: str
    # Objective run by the training worker (rlhf/training/objectives.py); "policy" for on-policy RL.
    objective: str
    # Data task (rlhf/data/datasets.py): sft, pretrain, pair, unpaired, prompt, prm. For the iterative family
    # the task of its input data (prompts); each round trains `round_algo` on the data it generated.
    task: str
    # What a sweep optimizes: the metric of the run's result and whether higher is better.
    metric: str
    higher_is_better: bool
    # A frozen reference model is needed (RL: only when kl_coef > 0, decided by the planner).
    reference: bool = False
    # The trained model is a sequence classifier (reward model) rather than a causal LM.
    sequence_classifier: bool = False
    # Iterative family: the offline algorithm each round runs on its generated data (a key of ALGORITHMS).
    round_algo: Optional[str] = None

    @property
    def controller(self) -> str:
        return CONTROLLERS[self.family]


def _rl(name: str) -> AlgoSpec:
    # On-policy algorithms differ only in their config (advantage estimator, KL, loss aggregation).
    return AlgoSpec(name, "rl", "onpolicy", "policy", "prompt", "eval/reward_mean", True)


ALGORITHMS: dict[str, AlgoSpec] = {
    spec.name: spec
    for spec in [
        AlgoSpec("sft", "sft", "offline", "sft", "sft", "eval/loss", False),
        AlgoSpec("pretrain", "sft", "offline", "sft", "pretrain", "eval/loss", False),
        AlgoSpec("rm", "rm", "offline", "reward_model", "pair", "eval/accuracy", True, sequence_classifier=True),
        AlgoSpec("dpo", "dpo", "offline", "dpo", "pair", "eval/reward_accuracy", True, reference=True),
        AlgoSpec("ipo", "dpo", "offline", "dpo", "pair", "eval/reward_accuracy", True, reference=True),
        AlgoSpec("cdpo", "dpo", "offline", "dpo", "pair", "eval/reward_accuracy", True, reference=True),
        AlgoSpec("kto", "kto", "offline", "kto", "unpaired", "eval/loss", False, reference=True),
        AlgoSpec("prm", "prm", "offline", "prm", "prm", "eval/step_accuracy", True),
        # The frozen teacher is the run's reference model (algo.teacher.name_or_path).
        AlgoSpec("kd", "kd", "offline", "kd", "sft", "eval/loss", False, reference=True),
        AlgoSpec("csft", "csft", "offline", "sft", "sft", "eval/loss", False),
        AlgoSpec(
            "rejection_sampling",
            "rejection_sampling",
            "iterative",
            "sft",
            "prompt",
            "eval/reward_mean",
            True,
            round_algo="sft",
        ),
        AlgoSpec(
            "iterative_dpo",
            "iterative_dpo",
            "iterative",
            "dpo",
            "prompt",
            "eval/reward_mean",
            True,
            reference=True,
            round_algo="dpo",
        ),
        _rl("ppo"),
        _rl("reinforce_pp"),
        _rl("reinforce_pp_baseline"),
        _rl("rloo"),
        _rl("grpo"),
        _rl("dr_grpo"),
        _rl("gspo"),
    ]
}


def get_algo(name: str) -> AlgoSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise ValueError(
            f"algo.name={name!r} is not a known algorithm; valid: {', '.join(sorted(ALGORITHMS))}. "
            "Pick one with algo=<name> (conf/algo/<name>.yaml)."
        ) from None
