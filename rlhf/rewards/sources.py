"""Build the reward sources of a run (functions, remote servers, reward-model roles) and score batches."""

from __future__ import annotations

from typing import Callable

import torch

from rlhf.config.reward import RewardConfig
from rlhf.rewards.combine import combine_rewards


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
                self.sources[name] = load_reward_function(src.path, **dict(src.kwargs))
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
