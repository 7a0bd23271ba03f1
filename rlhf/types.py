"""Named containers passed between the entry point, controllers and roles."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RunResult:
    algo: str
    steps: int
    model_dir: Optional[str]
    # Metrics of the first and last logged step, and the final evaluation.
    first: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    wall_s: float = 0.0
    # The metric a sweep optimizes (name, value).
    objective: Optional[tuple[str, float]] = None
