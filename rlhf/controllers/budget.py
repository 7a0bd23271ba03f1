"""Run control shared by the training loops: the wall-time budget (algo.max_time), what a run will do, and
the steps it takes when algo.max_steps asks for more than the data's epochs give."""

from __future__ import annotations

import math
import time
from typing import Optional

from rlhf.config.validate import parse_duration


class WallClock:
    """Says when to stop at a step boundary so that the run still saves, evaluates and finishes within
    algo.max_time: before a step, stop when the time used plus the slowest step so far (plus the end-of-run
    evaluation, estimated by the start-of-run one) would pass the budget."""

    def __init__(self, max_time, started: Optional[float] = None):
        self.limit = parse_duration(max_time)
        self.raw = max_time
        self.started = time.time() if started is None else started
        self.slowest_step = 0.0
        self.reserve = 0.0  # seconds kept for the final evaluation and save

    def elapsed(self) -> float:
        return time.time() - self.started

    def record(self, step_s: float) -> None:
        self.slowest_step = max(self.slowest_step, step_s)

    def out_of_time(self) -> bool:
        return self.limit is not None and self.elapsed() + self.slowest_step + self.reserve > self.limit

    def stop_message(self, done: int, total: int) -> str:
        return (
            f"algo.max_time={self.raw} ({self.limit:.0f}s): stopping after step {done} of {total} "
            f"({self.elapsed():.0f}s used, about {self.slowest_step:.1f}s a step); saving, evaluating and "
            "finishing normally"
        )


def total_steps(per_epoch: int, epochs: int, max_steps: Optional[int], what: str) -> tuple[int, Optional[str]]:
    """Steps to run and a note when algo.max_steps asks for more than algo.epochs give (then the data loops)."""
    total = per_epoch * epochs
    if not max_steps or max_steps <= total:
        return (min(total, max_steps) if max_steps else total), None
    loops = math.ceil(max_steps / per_epoch)
    return max_steps, (
        f"algo.max_steps={max_steps} is more than algo.epochs={epochs} give ({total} steps of "
        f"{per_epoch} per epoch over the {what}): looping over the data {loops} times"
    )


def describe(total: int, per_step: str, per_epoch: int, clock: WallClock, eval_every: int, eval_prompts: int) -> str:
    """One line: what the run will do."""
    epochs = total / per_epoch if per_epoch else 0.0
    parts = [f"run: {total} steps of {per_step} ({epochs:.3g} epoch(s))"]
    parts.append(
        f"held-out evaluation on {eval_prompts} prompt(s) at the start, the end"
        + (f" and every {eval_every} steps" if eval_every else "")
    )
    if clock.limit is not None:
        parts.append(f"time limit {clock.limit:.0f}s (algo.max_time={clock.raw})")
    return "; ".join(parts)
