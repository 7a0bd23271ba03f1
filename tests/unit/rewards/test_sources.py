"""Reward functions run in the driver: a call that takes long is reported while it runs, naming the function
and the line it is on, and its result is still used."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from rlhf.config.reward import RewardConfig, RewardSourceConfig
from rlhf.rewards.sources import RewardSources

SLOW = """
import time


def slow_length(prompts, responses):
    time.sleep(0.7)
    return [float(len(r)) for r in responses]
"""


def test_a_slow_reward_function_is_reported_while_it_runs(tmp_path: Path, caplog) -> None:
    path = tmp_path / "slow_reward.py"
    path.write_text(SLOW)
    cfg = RewardConfig(sources={"slow": RewardSourceConfig(kind="function", path=f"{path}:slow_length", timeout_s=0.2)})
    sources = RewardSources(cfg)
    with caplog.at_level(logging.WARNING, logger="rlhf.rewards.sources"):
        scores, _metrics = sources(["p", "q"], ["abc", "defgh"], {})
    assert torch.equal(scores, torch.tensor([3.0, 5.0]))
    notes = [r.getMessage() for r in caplog.records if "is still running" in r.getMessage()]
    assert 2 <= len(notes) <= 4, notes
    assert notes[0].startswith(f"reward.sources.slow ({path}:slow_length) has run 0s on a batch of 2 responses")
    assert "slow_reward.py:6 in slow_length" in notes[0] and "longest response has 5 characters" in notes[0]
    # A fast call says nothing.
    caplog.clear()
    fast = RewardConfig(
        sources={"n": RewardSourceConfig(kind="function", path="rlhf.rewards.functions:numeric_format")}
    )
    with caplog.at_level(logging.WARNING, logger="rlhf.rewards.sources"):
        RewardSources(fast)(["p"], ["12"], {})
    assert not caplog.records
