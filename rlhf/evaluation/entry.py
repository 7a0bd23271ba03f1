"""What `rlhf.generate` and `rlhf.eval` share: the Hydra entry (same conf/ tree and friendly compose errors as
`rlhf.run`), `-v`, and the reward sources of a standalone process (functions, remote servers, and reward
models loaded in this process)."""

from __future__ import annotations

import sys
from typing import Callable


def run_entry(hydra_main: Callable[[], None]) -> None:
    """`-v`/`--verbose` handling, compose-time checks, then the Hydra main."""
    from rlhf.config.preflight import preflight
    from rlhf.quiet import set_verbose

    verbose = any(a in ("-v", "--verbose") for a in sys.argv[1:])
    sys.argv[1:] = [a for a in sys.argv[1:] if a not in ("-v", "--verbose")]
    set_verbose(verbose or any(a.lower() in ("verbose=true", "verbose=1") for a in sys.argv[1:]))
    problem = preflight(sys.argv[1:])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        raise SystemExit(2)
    hydra_main()


def check(cfg) -> None:
    """The plan-time checks of the eval/generate nodes; exits with every problem listed."""
    from rlhf.config.validate import eval_problems, generate_problems

    problems = eval_problems(cfg.eval) + generate_problems(cfg.generate)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        print(f"error: the configuration cannot run ({len(problems)} problem(s)):\n{lines}", file=sys.stderr)
        raise SystemExit(2)


class LocalRewardModel:
    """A reward model scored in this process (plain torch): texts -> [N] scores."""

    def __init__(self, model_cfg, path: str, device: str, batch_size: int):
        from dataclasses import replace

        from rlhf.models.loading import load_sequence_classifier, load_tokenizer

        cfg = replace(model_cfg, name_or_path=path, tokenizer=None, lora=replace(model_cfg.lora, rank=0))
        self.tok = load_tokenizer(cfg, padding_side="right")
        self.model = (
            load_sequence_classifier(
                cfg,
                dtype="fp32" if device == "cpu" else "bf16",
                device=device,
                trainable=False,
                pad_token_id=self.tok.pad_token_id,
            )
            .to(device)
            .eval()
        )
        self.device, self.batch_size = device, batch_size

    def __call__(self, texts: list[str]):
        from rlhf.models.loading import score_texts

        return score_texts(self.model, self.tok, texts, self.batch_size, self.device)


def reward_sources(cfg):
    """RewardSources of cfg.reward for a process without Ray roles (reward models load here)."""
    from rlhf.rewards.sources import RewardSources

    device = "cuda" if cfg.hw.gpus_per_node * cfg.hw.nodes > 0 else "cpu"
    scorers = {
        name: LocalRewardModel(cfg.model, src.path, device, src.batch_size)
        for name, src in cfg.reward.sources.items()
        if src.kind == "model"
    }
    return RewardSources(cfg.reward, scorers)


def output_dir(cfg):
    """cfg.output_dir, else Hydra's run directory, else ./outputs/eval-<time>."""
    import time
    from pathlib import Path

    if cfg.output_dir:
        return Path(cfg.output_dir).resolve()
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir).resolve()
    except ValueError:
        return (Path("outputs") / time.strftime("eval-%Y-%m-%d_%H-%M-%S")).resolve()
