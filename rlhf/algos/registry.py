"""The one table from `algo=<name>` to what runs: family (controller), data task and the roles it needs.

Greppable on purpose: adding an algorithm means a YAML file in conf/algo, a row here and, if it brings new
math, a pure function in rlhf/algos.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AlgoSpec:
    name: str
    # Controller family: offline (SFT-like and pairwise, data from files) or onpolicy (RL with rollouts).
    family: str
    # Objective run by the training worker (rlhf/training/objectives.py).
    objective: str
    # Data task (rlhf/data/datasets.py): sft, pretrain, pair, unpaired, prompt, prm.
    task: str
    # A frozen reference model is needed (RL: only when kl_coef > 0, decided by the planner).
    reference: bool = False
    # The trained model is a sequence classifier (reward model) rather than a causal LM.
    sequence_classifier: bool = False


ALGORITHMS: dict[str, AlgoSpec] = {
    spec.name: spec
    for spec in [
        AlgoSpec("sft", "offline", "sft", "sft"),
        AlgoSpec("pretrain", "offline", "sft", "pretrain"),
        AlgoSpec("rm", "offline", "reward_model", "pair", sequence_classifier=True),
        AlgoSpec("dpo", "offline", "dpo", "pair", reference=True),
        AlgoSpec("ipo", "offline", "dpo", "pair", reference=True),
        AlgoSpec("cdpo", "offline", "dpo", "pair", reference=True),
        AlgoSpec("kto", "offline", "kto", "unpaired", reference=True),
        AlgoSpec("ppo", "onpolicy", "policy", "prompt"),
        AlgoSpec("reinforce_pp", "onpolicy", "policy", "prompt"),
        AlgoSpec("reinforce_pp_baseline", "onpolicy", "policy", "prompt"),
        AlgoSpec("rloo", "onpolicy", "policy", "prompt"),
        AlgoSpec("grpo", "onpolicy", "policy", "prompt"),
        AlgoSpec("dr_grpo", "onpolicy", "policy", "prompt"),
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
