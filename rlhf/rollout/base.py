"""The two interfaces of rollout: ``Rollout`` (driver side, what the loop calls) and ``Generator`` (worker side,
what a policy rank holds when it generates itself). Timings come back beside the batch, never inside it."""

from __future__ import annotations

from typing import Protocol

from rlhf.types import PromptBatch, RolloutBatch

Timings = dict[str, float]


class Rollout(Protocol):
    """Responses for prompts, and the policy's weights pushed into whatever generates them."""

    # Engines with their own forward (vLLM): the run ends with a greedy consistency check against the trainer.
    checks_consistency: bool
    # Generation runs on other processes than the policy ranks (placement=separate): it can overlap training.
    separate: bool
    # A submitted generation runs beside the log-prob passes and the update (separate engines, or awake
    # colocated engines on their own thread of each policy rank: rlhf.rollout.backends.overlaps_in_policy).
    overlaps: bool

    def generate(self, prompts: PromptBatch, *, seed: int, greedy: bool = False) -> tuple[RolloutBatch, Timings]:
        """One response per row of `prompts` (rows already repeated samples_per_prompt times). Timings:
        timing/generate_engine_s (the slowest engine) and, where engines sleep, timing/sleep_wake_s.
        Equal to ``collect(submit(prompts, seed=seed, greedy=greedy))``."""
        ...

    def submit(self, prompts: PromptBatch, *, seed: int, greedy: bool = False) -> object:
        """Start generating without waiting; the handle goes to ``collect``. Calls on the same processes run
        in submission order (Ray actors), so a later sync or update waits for this generation."""
        ...

    def collect(self, handle: object) -> tuple[RolloutBatch, Timings]:
        """Wait for a ``submit``ted generation: the batch and timings of ``generate``."""
        ...

    def sync_weights(self) -> Timings:
        """Load the policy's current weights into the engines; {} when they read the trained module itself."""
        ...

    def sleep(self) -> None:
        """Free the engines' memory for training (no-op where they do not sleep)."""
        ...

    def wake_up(self) -> None: ...

    def shutdown(self) -> None:
        """Stop what the rollout started beyond the run's role groups (which close with the run)."""
        ...


class Generator(Protocol):
    """A policy rank's own generation backend (see rlhf/rollout/registry.py)."""

    def generate(self, prompts: PromptBatch, *, seed: int, greedy: bool) -> tuple[RolloutBatch, Timings]: ...

    def load_weights(self) -> Timings:
        """Take the trained module's current weights; {} when it generates from the module directly."""
        ...

    def sleep(self) -> None: ...

    def wake_up(self) -> None: ...

    def close(self) -> None: ...
