"""Schema of the `reward` group: reward models, remote servers and functions, combined by a rule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional


@dataclass
class RewardSourceConfig:
    # function: `module:function` or `path/to/file.py:function`; model: HF name/path or `tiny:<arch>` of a
    # reward model; remote: an HTTP reward server (protocol in rlhf/rewards/README.md).
    kind: str = "function"
    path: Optional[str] = None
    url: Optional[str] = None
    weight: float = 1.0
    # Keyword arguments for a reward-function factory.
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # Remote servers and reward models score this many responses per request/forward.
    batch_size: int = 64
    # Remote servers: seconds per request. Functions (run in the driver): a warning every timeout_s seconds one
    # call lasts, naming the function and the line it is on.
    timeout_s: float = 30.0
    max_retries: int = 3


@dataclass
class RewardConfig:
    sources: Dict[str, RewardSourceConfig] = field(default_factory=dict)
    # How several sources become one score: weighted (sum of weight * reward), sum, mean, min, product.
    combine: str = "weighted"
