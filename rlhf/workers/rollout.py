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
``EngineFleet`` does exactly this for the on-policy controller (behind ``rlhf.rollout.registry.FleetRollout``),
and splits each rollout batch across the engines. ``generations_to_batch`` turns engine outputs into the
rollout batch every placement returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlhf.engines.vllm_engine import Generation, WeightSpec
from rlhf.types import PromptBatch, RolloutBatch
from rlhf.workers.base import RankWorker

if TYPE_CHECKING:
    import torch


def weight_sync_layout(num_engines: int, tensor_parallel_size: int) -> tuple[list[int], int]:
    """First weight-sync rank of each engine and the group's size: trainer rank 0 is rank 0, engine i's
    workers are ranks ``1 + i * tp .. (i + 1) * tp``. E.g. 2 engines of tp=2 -> ([1, 3], 5)."""
    if num_engines < 1 or tensor_parallel_size < 1:
        raise ValueError(
            f"weight_sync_layout needs num_engines >= 1 and tensor_parallel_size >= 1, got "
            f"{num_engines} and {tensor_parallel_size}"
        )
    return [1 + i * tensor_parallel_size for i in range(num_engines)], 1 + num_engines * tensor_parallel_size


def generations_to_batch(
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    generations: Sequence[Generation],
    max_new_tokens: int,
    pad_id: int,
) -> RolloutBatch:
    """Engine outputs as the rollout batch of the on-policy loop (the same fields as the HF backend).

    prompt_ids, prompt_mask: [N, P] left-padded; ``generations[i]`` answers row i. Returns sequences
    [N, P + R] and attention_mask [N, P + R] with R = max_new_tokens (responses right-padded with pad_id),
    action_mask [N, R] (1 on every returned token: vLLM stops after the EOS, which it keeps),
    rollout_logps [N, R] (0 on padding), prompt_len P, and finish_reason (N strings, "stop" or "length").
    """
    import torch

    n, p = prompt_ids.shape
    if len(generations) != n:
        raise ValueError(f"{len(generations)} generations for {n} prompt rows; expected one per row")
    response = torch.full((n, max_new_tokens), pad_id, dtype=torch.long)
    action_mask = torch.zeros((n, max_new_tokens), dtype=torch.long)
    logps = torch.zeros((n, max_new_tokens), dtype=torch.float32)
    for i, g in enumerate(generations):
        r = len(g.response_ids)
        if r > max_new_tokens:
            raise ValueError(f"row {i}: {r} response tokens exceed max_new_tokens={max_new_tokens}")
        response[i, :r] = torch.tensor(g.response_ids, dtype=torch.long)
        logps[i, :r] = torch.tensor(g.logprobs, dtype=torch.float32)
        action_mask[i, :r] = 1
    return RolloutBatch(
        sequences=torch.cat([prompt_ids.long(), response], 1),
        attention_mask=torch.cat([prompt_mask.long(), action_mask], 1),
        action_mask=action_mask,
        rollout_logps=logps,
        finish_reason=[g.finish_reason for g in generations],
        prompt_len=p,
    )


class RolloutWorker(RankWorker):
    """Holds one ``VLLMEngine``. ``engine_options`` are ``VLLMEngine``'s keyword arguments; the sampling
    seed is offset by ``rank`` so that engines draw different samples."""

    def __init__(
        self, rank: int, world_size: int, model_path: str | Path, engine_options: dict[str, Any] | None = None
    ):
        super().__init__(rank, world_size)
        from rlhf.engines.vllm_engine import VLLMEngine

        options = dict(engine_options or {})
        options["seed"] = options.get("seed", 0) + rank
        started = time.perf_counter()
        with self.phase("rollout"):
            self.engine = VLLMEngine(model_path, **options)
        self.start_s = time.perf_counter() - started

    def ready(self) -> dict:
        """Seconds the engine took to start (the driver waits on this before the first step)."""
        return {"setup_s": self.start_s}

    def generate(self, prompt_token_ids: Sequence[Sequence[int]], **sampling: Any) -> list[Generation]:
        """``VLLMEngine.generate``: ``n`` contiguous samples per prompt."""
        return self.engine.generate(prompt_token_ids, **sampling)

    def generate_timed(
        self, prompt_token_ids: Sequence[Sequence[int]], **sampling: Any
    ) -> tuple[list[Generation], float]:
        """``generate`` and the seconds it took inside the engine."""
        started = time.perf_counter()
        out = self.engine.generate(prompt_token_ids, **sampling)
        return out, time.perf_counter() - started

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


class EngineFleet:
    """Driver side of separate placement: ``RolloutWorker`` actors that generate, fed new weights by
    trainer rank 0 over a ``WeightSyncGroup``.

    ``engines`` and ``trainer`` are ``ActorGroup``s (rollout workers, policy workers). ``trainer`` must offer
    ``rendezvous``, ``init_weight_sync(addr, port, world_size, backend)``, ``rollout_weight_specs()`` and
    ``broadcast_weights()`` (``rlhf.workers.policy.PolicyWorker`` does, through ``rlhf.rollout.weights``).
    """

    def __init__(self, engines, trainer, tensor_parallel_size: int, backend: str):
        self.engines, self.trainer = engines, trainer
        self.tensor_parallel_size, self.backend = tensor_parallel_size, backend
        self.specs: list[WeightSpec] = []

    def connect(self) -> None:
        """Form the weight-sync group: trainer rank 0 is rank 0, engine i's workers follow."""
        ranks, world = weight_sync_layout(len(self.engines), self.tensor_parallel_size)
        addr, port = self.trainer.run("rendezvous")[0]
        joins = [
            w.init_weight_sync.remote(addr, port, r, world, self.backend) for w, r in zip(self.engines.actors, ranks)
        ]
        host = self.trainer.actors[0].init_weight_sync.remote(addr, port, world, self.backend)
        self.trainer.wait([host], "init_weight_sync")
        self.engines.wait(joins, "init_weight_sync")
        self.specs = self.trainer.run("rollout_weight_specs")[0]

    def sync(self) -> None:
        """Broadcast the trainer's current weights into every engine (all trainer ranks take part: ZeRO-3
        gathers are collective)."""
        receivers = self.engines.submit("receive_weights", self.specs)
        self.trainer.run("broadcast_weights")
        self.engines.wait(receivers, "receive_weights")

    def generate(
        self, prompts: PromptBatch, *, max_new_tokens: int, pad_id: int, **sampling: Any
    ) -> tuple[RolloutBatch, dict[str, float]]:
        """One response per row of ``prompts`` (left-padded), rows split in contiguous blocks across the
        engines; returns ``generations_to_batch``'s batch and timing/generate_engine_s (the slowest engine)."""
        return self.collect(self.submit(prompts, max_new_tokens=max_new_tokens, pad_id=pad_id, **sampling))

    def submit(self, prompts: PromptBatch, *, max_new_tokens: int, pad_id: int, **sampling: Any) -> tuple:
        """``generate`` without waiting: the engines start now; ``collect`` takes the handle."""
        rows = prompts.unpadded()
        k = len(self.engines)
        bounds = [round(i * len(rows) / k) for i in range(k + 1)]
        refs = [
            w.generate_timed.remote(rows[bounds[i] : bounds[i + 1]], n=1, max_new_tokens=max_new_tokens, **sampling)
            for i, w in enumerate(self.engines.actors)
        ]
        return refs, prompts, max_new_tokens, pad_id

    def collect(self, handle: tuple) -> tuple[RolloutBatch, dict[str, float]]:
        refs, prompts, max_new_tokens, pad_id = handle
        outs = self.engines.wait(refs, "generate")
        generations = [g for part, _ in outs for g in part]
        batch = generations_to_batch(prompts.input_ids, prompts.attention_mask, generations, max_new_tokens, pad_id)
        return batch, {"timing/generate_engine_s": max(seconds for _, seconds in outs)}
