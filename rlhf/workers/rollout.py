"""The rollout role with separate placement: one vLLM engine per actor on its own GPU(s).

The driver wraps ``RolloutWorker`` with ``ray.remote`` (e.g. through ``ActorGroup``, which passes
``rank, world_size`` first). After each optimizer step, trainer rank 0 broadcasts the new weights to every
engine over a dedicated process group::

    ranks, world = weight_sync_layout(num_engines, tensor_parallel_size)
    addr, port = ray.get(trainer_rank0.rendezvous.remote())
    joins = [w.init_weight_sync.remote(addr, port, r, world, "nccl") for w, r in zip(workers, ranks)]
    trainer side:  group = WeightSyncGroup(addr, port, 0, world, "nccl")      (rlhf.engines.vllm_engine)
    ray.get(joins)
    per update:    refs = [w.receive_weights.remote(specs) for w in workers]
                   broadcast_weights(group, named_tensors, dtype=torch.bfloat16); ray.get(refs)

``specs`` is ``weight_specs(named_tensors, dtype=torch.bfloat16)`` of the same tensors in the same order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rlhf.engines.vllm_engine import Generation, WeightSpec
from rlhf.workers.base import RankWorker


def weight_sync_layout(num_engines: int, tensor_parallel_size: int) -> tuple[list[int], int]:
    """First weight-sync rank of each engine and the group's size: trainer rank 0 is rank 0, engine i's
    workers are ranks ``1 + i * tp .. (i + 1) * tp``. E.g. 2 engines of tp=2 -> ([1, 3], 5)."""
    if num_engines < 1 or tensor_parallel_size < 1:
        raise ValueError(f"weight_sync_layout needs num_engines >= 1 and tensor_parallel_size >= 1, got "
                         f"{num_engines} and {tensor_parallel_size}")
    return [1 + i * tensor_parallel_size for i in range(num_engines)], 1 + num_engines * tensor_parallel_size


class RolloutWorker(RankWorker):
    """Holds one ``VLLMEngine``. ``engine_options`` are ``VLLMEngine``'s keyword arguments; the sampling
    seed is offset by ``rank`` so that engines draw different samples."""

    def __init__(self, rank: int, world_size: int, model_path: str | Path,
                 engine_options: dict[str, Any] | None = None):
        super().__init__(rank, world_size)
        from rlhf.engines.vllm_engine import VLLMEngine

        options = dict(engine_options or {})
        options["seed"] = options.get("seed", 0) + rank
        started = time.perf_counter()
        self.engine = VLLMEngine(model_path, **options)
        self.start_s = time.perf_counter() - started

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], **sampling: Any) -> list[Generation]:
        """``VLLMEngine.generate``: ``n`` contiguous samples per prompt."""
        return self.engine.generate(prompt_token_ids, **sampling)

    def sleep(self, level: int = 1) -> None:
        self.engine.sleep(level)

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        self.engine.wake_up(tags)

    def init_weight_sync(self, master_addr: str, port: int, rank: int, world_size: int, backend: str) -> list[int]:
        """Join trainer rank 0's weight-sync group as ranks ``rank .. rank + tp - 1`` (see
        ``weight_sync_layout``); blocks until every member has joined. Returns the ranks taken."""
        return self.engine.init_weight_sync(master_addr, port, rank, world_size, backend)

    def receive_weights(self, specs: Sequence[WeightSpec]) -> float:
        """Receive one broadcast of ``specs`` from trainer rank 0, load it, drop the prefix cache. Returns
        the seconds it took (waiting for the sender included)."""
        started = time.perf_counter()
        self.engine.receive_weights(specs)
        return time.perf_counter() - started

    def close(self) -> None:
        self.engine.close_weight_sync()
        self.engine.shutdown()
