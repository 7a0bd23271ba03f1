"""The one table from ``rollout.backend`` to what each engine is: plain strings and flags, importable without
torch, so that the planner (rlhf/plan.py) and the driver-side registry (rlhf/rollout/registry.py) read the
same row. A new engine (e.g. SGLang) is a module with its generator (and worker), a row here and its
conf/rollout/<name>.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Backend:
    # "module:function" building a policy rank's Generator: f(worker) -> Generator.
    in_policy: str
    # "module:Class" of a separate engine actor (RolloutWorker-like), None: always in the policy ranks.
    separate: Optional[str] = None
    # The engine holds its own copy of the weights and a KV cache on the GPUs: synced after every update,
    # checked at the end of the run (greedy outputs against the trainer's forward), and planned as engines
    # (rollout.num_engines x rollout.tensor_parallel_size GPUs, rollout.gpu_memory_utilization of each).
    own_weights: bool = False


BACKENDS: dict[str, Backend] = {
    "hf": Backend("rlhf.rollout.registry:hf_generator"),
    "vllm": Backend(
        "rlhf.rollout.registry:colocated_vllm", separate="rlhf.workers.rollout:RolloutWorker", own_weights=True
    ),
}


def backend(name: str) -> Backend:
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"rollout.backend={name!r} is not one of {sorted(BACKENDS)}; pick rollout=<name> (conf/rollout/<name>.yaml)"
        ) from None


def has_engines(name: str) -> bool:
    """Engines with their own weights and GPU memory (planned apart from the policy's training states)."""
    b = BACKENDS.get(name)
    return b is not None and b.own_weights


def overlaps_in_policy(algo, rollout, placement_mode: str) -> bool:
    """Colocated overlap: with ``algo.async_rollout`` and engines that stay awake (``rollout.enable_sleep=false``),
    each policy rank generates step k+1 on its own thread and CUDA stream while the rank computes step k's
    log-probs and update (rlhf/controllers/onpolicy.py). Needs an engine with its own copy of the weights: HF
    generate samples from the very module being trained."""
    b = BACKENDS.get(rollout.backend)
    return bool(
        getattr(algo, "async_rollout", False)
        and b is not None
        and b.own_weights
        and placement_mode != "separate"
        and rollout.enable_sleep is False  # None: not planned yet
    )
