"""The one table from ``rollout.backend`` to code, and the driver-side rollouts built from it.

A backend (its row in rlhf/rollout/backends.py) names the ``Generator`` a policy rank holds when it generates
in-process (``placement=colocated``, or a backend without separate engines) and, optionally, the worker class
of separate engines (``placement=separate``).
"""

from __future__ import annotations

import time

from rlhf.rollout.backends import backend, overlaps_in_policy
from rlhf.rollout.base import Rollout, Timings
from rlhf.types import PromptBatch, RolloutBatch

# The policy actors' concurrency group for generation beside training (colocated overlap): one call at a time.
ROLLOUT_THREAD = "rollout"


def uses_separate_engines(rollout_cfg, placement_mode: str) -> bool:
    """Separate engine actors generate (else the policy ranks do)."""
    return placement_mode == "separate" and backend(rollout_cfg.backend).separate is not None


def _load(path: str):
    import importlib

    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def make_generator(worker):
    """The Generator a policy rank (rlhf.workers.policy.PolicyWorker, set up) holds."""
    return _load(backend(worker.spec.rollout.backend).in_policy)(worker)


def separate_worker_class(rollout_cfg):
    return _load(backend(rollout_cfg.backend).separate)


# ---- policy-rank generators ---------------------------------------------------------------------------
def hf_generator(worker):
    from rlhf.rollout.hf import HFGenerator

    return HFGenerator(
        worker.engine,
        worker.spec.rollout,
        eos_ids=worker.eos_ids,
        pad_id=worker.tokenizer.pad_token_id,
        rank=worker.rank,
    )


def colocated_vllm(worker):
    from rlhf.models.loading import resolve_path
    from rlhf.rollout.vllm import ColocatedVLLM, engine_options
    from rlhf.rollout.weights import rollout_weights

    s, plan = worker.spec, worker.plan
    options = engine_options(
        plan,
        s.rollout,
        seed=plan.rank_seed("rollout", worker.rank),
        tensor_parallel_size=s.rollout.tensor_parallel_size,
        enable_sleep=s.rollout.enable_sleep,
    )
    zero3 = s.engine.zero_stage == 3
    return ColocatedVLLM(
        resolve_path(s.model.name_or_path),
        options,
        s.rollout,
        eos_ids=worker.eos_ids,
        pad_id=worker.tokenizer.pad_token_id,
        sleep_level=s.rollout.sleep_level,
        weights=lambda: rollout_weights(worker.engine.module, zero3),
        lora_4bit=s.model.lora.load_in_4bit,
        side_stream=overlaps_in_policy(s.algo, s.rollout, s.placement_mode),
    )


# ---- driver-side rollouts -----------------------------------------------------------------------------
class InPolicyRollout:
    """The policy ranks generate, each on its contiguous shard of the prompts."""

    separate = False

    def __init__(self, actor_group, own_weights: bool, overlaps: bool = False):
        self.actor = actor_group
        # HF generate runs on the trained module itself: nothing to copy, nothing to check.
        self.checks_consistency = own_weights
        # Awake engines on each rank's "rollout" thread (the actors were started with that concurrency group).
        self.overlaps = overlaps

    def generate(self, prompts: PromptBatch, *, seed: int, greedy: bool = False) -> tuple[RolloutBatch, Timings]:
        return self.collect(self.submit(prompts, seed=seed, greedy=greedy))

    def submit(self, prompts: PromptBatch, *, seed: int, greedy: bool = False) -> list:
        shards = prompts.split(len(self.actor))
        group = ROLLOUT_THREAD if self.overlaps else None
        return self.actor.submit("generate", per_rank=[(s, seed, greedy) for s in shards], concurrency_group=group)

    def collect(self, handle: list) -> tuple[RolloutBatch, Timings]:
        outs = self.actor.wait(handle, "generate")
        return RolloutBatch.cat([b for b, _ in outs]), _slowest([t for _, t in outs])

    def sync_weights(self) -> Timings:
        if not self.checks_consistency:
            return {}
        tic = time.time()
        self.actor.run("sync_weights")
        return {"timing/weight_sync_s": time.time() - tic}

    def sleep(self) -> None:
        self.actor.run("rollout_sleep")

    def wake_up(self) -> None:
        self.actor.run("rollout_wake_up")

    def shutdown(self) -> None:
        pass  # the generators close with the policy ranks


class FleetRollout:
    """Separate engine actors (an EngineFleet connected to policy rank 0's weight broadcast)."""

    checks_consistency = True
    separate = True
    overlaps = True

    def __init__(self, fleet, rollout_cfg, *, pad_id: int, stop_token_ids: list[int]):
        self.fleet, self.ro, self.pad_id, self.stop_token_ids = fleet, rollout_cfg, pad_id, stop_token_ids

    def generate(self, prompts: PromptBatch, *, seed: int, greedy: bool = False) -> tuple[RolloutBatch, Timings]:
        return self.collect(self.submit(prompts, seed=seed, greedy=greedy))

    def collect(self, handle) -> tuple[RolloutBatch, Timings]:
        return self.fleet.collect(handle)

    def submit(self, prompts: PromptBatch, *, seed: int, greedy: bool = False):
        # The engines draw from their own seeded generators (rollout seed + rank); `seed` is the policy ranks'.
        ro = self.ro
        return self.fleet.submit(
            prompts,
            max_new_tokens=ro.max_new_tokens,
            pad_id=self.pad_id,
            temperature=0.0 if greedy else ro.temperature,
            top_p=ro.top_p,
            top_k=ro.top_k,
            ignore_eos=ro.ignore_eos,
            stop_token_ids=None if ro.ignore_eos else self.stop_token_ids,
        )

    def sync_weights(self) -> Timings:
        tic = time.time()
        self.fleet.sync()
        return {"timing/weight_sync_s": time.time() - tic}

    def sleep(self) -> None:
        pass  # nothing else shares a separate engine's GPUs

    def wake_up(self) -> None:
        pass

    def shutdown(self) -> None:
        pass  # the engines are the run's "rollout" role: they close with the other roles


def build_rollout(cfg, plan, roles: dict, tokenizer) -> Rollout:
    """The run's rollout: separate engines when the plan started a ``rollout`` role, else the policy ranks."""
    spec = backend(cfg.rollout.backend)
    if "rollout" not in roles:
        return InPolicyRollout(
            roles["actor"], spec.own_weights, overlaps_in_policy(cfg.algo, cfg.rollout, cfg.placement.mode)
        )
    from rlhf.workers.rollout import EngineFleet

    sync = {"auto": "nccl" if plan.device == "cuda" else "gloo", "nccl": "nccl"}.get(cfg.rollout.sync)
    if sync is None or (sync == "nccl" and plan.device != "cuda"):
        raise ValueError(
            f"rollout.sync={cfg.rollout.sync} with placement=separate on {plan.device}: separate engines take "
            "weights by broadcast; use rollout.sync=auto (nccl on GPUs, gloo on CPU)"
        )
    fleet = EngineFleet(roles["rollout"], roles["actor"], cfg.rollout.tensor_parallel_size, sync)
    fleet.connect()
    return FleetRollout(fleet, cfg.rollout, pad_id=tokenizer.pad_token_id, stop_token_ids=[tokenizer.eos_token_id])


def _slowest(timings: list[Timings]) -> Timings:
    """Per key, the slowest rank: the step waits for it."""
    out: Timings = {}
    for t in timings:
        for k, v in t.items():
            out[k] = max(out.get(k, v), v)
    return out
