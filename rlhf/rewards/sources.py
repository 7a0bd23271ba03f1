"""Build the reward sources of a run (functions, remote servers, reward-model roles) and score batches."""

from __future__ import annotations

import logging
import sys
import threading
import time
from typing import Callable

import torch

from rlhf.config.reward import RewardConfig
from rlhf.rewards.combine import combine_rewards

log = logging.getLogger(__name__)


class RewardSources:
    """Calls every configured source on (prompts, responses, fields) and combines them by the config's rule.

    Reward models are Ray actor groups created by the controller and passed in as `model_scorers`:
    callables taking full texts (prompt + response) and returning a [B] tensor.
    """

    def __init__(self, cfg: RewardConfig, model_scorers: dict[str, Callable] | None = None):
        from rlhf.rewards.loader import load_reward_function
        from rlhf.rewards.remote import RemoteReward

        self.cfg = cfg
        self.sources: dict[str, Callable] = {}
        for name, src in cfg.sources.items():
            if src.kind == "function":
                fn = load_reward_function(src.path, **dict(src.kwargs))
                self.sources[name] = _Watched(fn, f"reward.sources.{name} ({src.path})", src.timeout_s)
            elif src.kind == "remote":
                self.sources[name] = RemoteReward(
                    src.url,
                    batch_size=src.batch_size,
                    timeout_s=src.timeout_s,
                    max_retries=src.max_retries,
                    name=name,
                )
            elif src.kind == "model":
                scorer = (model_scorers or {}).get(name)
                if scorer is None:
                    raise ValueError(f"reward.sources.{name}: no reward-model role was started for it")
                self.sources[name] = _ModelSource(scorer)
        self.weights = {n: s.weight for n, s in cfg.sources.items()}

    def __call__(self, prompts: list[str], responses: list[str], fields: dict[str, list]) -> tuple[torch.Tensor, dict]:
        named = {name: fn(prompts, responses, fields) for name, fn in self.sources.items()}
        rule = self.cfg.combine
        weights = self.weights if rule == "weighted" else None
        return combine_rewards(named, rule=rule, weights=weights)

    def close(self) -> None:
        for fn in self.sources.values():
            close = getattr(fn, "close", None)
            if close:
                close()


class _ModelSource:
    def __init__(self, scorer: Callable):
        self.scorer = scorer

    def __call__(self, prompts, responses, fields):
        return self.scorer([p + r for p, r in zip(prompts, responses)])


class _Watched:
    """A reward function run in the driver, with a warning every ``notice_s`` seconds while one call lasts: it
    names the function, the batch and the line it is on. A function in this process cannot be stopped safely,
    but a slow one (a regular expression backtracking, big-number arithmetic on a pathological response) is
    found at once instead of looking like a hung run."""

    def __init__(self, fn: Callable, name: str, notice_s: float):
        self.fn, self.name, self.notice_s = fn, name, notice_s

    def __call__(self, prompts, responses, fields):
        caller, done, started = threading.get_ident(), threading.Event(), time.monotonic()

        def watch() -> None:
            while not done.wait(self.notice_s):
                frame = sys._current_frames().get(caller)
                where = f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}" if frame else "?"
                log.warning(
                    "%s has run %.0fs on a batch of %d responses and is still running, at %s; the longest response "
                    "has %d characters",
                    self.name,
                    time.monotonic() - started,
                    len(responses),
                    where,
                    max((len(r) for r in responses), default=0),
                )

        watcher = threading.Thread(target=watch, name="rlhf-reward-watch", daemon=True)
        watcher.start()
        try:
            return self.fn(prompts, responses, fields)
        finally:
            done.set()
            watcher.join()

    def close(self) -> None:
        close = getattr(self.fn, "close", None)
        if close:
            close()
