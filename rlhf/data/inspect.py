"""Look at a data set as training will see it: the format, a few tokenized rows with their masks, the lengths.

  python -m rlhf.data.inspect algo=dpo data.train=./hh.jsonl
  python -m rlhf.data.inspect algo=sft data=alpaca data.train=./alpaca.json rows=5
  python -m rlhf.data.inspect algo=grpo data=gsm8k data.train=./gsm8k/ model=qwen2_5_0_5b

Takes the overrides of `python -m rlhf.run` (plus `rows=N`, the rows shown per source). Trained tokens are shown
between [[ and ]]; everything else (prompt, chat-template glue) is context the loss ignores.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List

TRAINED_OPEN, TRAINED_CLOSE = "[[", "]]"


def marked(tokenizer, ids: List[int], mask: List[int]) -> str:
    """The decoded sample with each run of trained tokens between [[ and ]]."""
    out, run, trained = [], [], False
    for token, m in zip(list(ids) + [None], list(mask) + [None]):
        if token is None or bool(m) != trained:
            if run:
                text = tokenizer.decode(run, skip_special_tokens=False)
                out.append(f"{TRAINED_OPEN}{text}{TRAINED_CLOSE}" if trained else text)
            run, trained = [], bool(m)
        if token is not None:
            run.append(token)
    return "".join(out)


def show_sample(task: str, sample: Dict[str, Any], tokenizer) -> List[str]:
    if task == "prompt":
        return [
            f"  prompt ({len(sample['input_ids'])} tokens): {sample['text']!r}",
            f"  reward fields: {sample.get('fields')}",
        ]
    if task == "pair":
        return [
            f"  chosen   ({len(sample['chosen_ids'])} tokens, prompt {sample['prompt_len']}): "
            f"{marked(tokenizer, sample['chosen_ids'], sample['chosen_mask'])!r}",
            f"  rejected ({len(sample['rejected_ids'])} tokens): "
            f"{marked(tokenizer, sample['rejected_ids'], sample['rejected_mask'])!r}",
        ]
    mask = sample.get("loss_mask") or sample.get("step_mask")
    extra = f", label {sample['label']}" if "label" in sample else ""
    return [
        f"  sample ({len(sample['input_ids'])} tokens, {sum(mask)} trained{extra}): "
        f"{marked(tokenizer, sample['input_ids'], mask)!r}"
    ]


def main(argv: List[str]) -> int:
    from omegaconf import OmegaConf

    from rlhf.algos.registry import get_algo
    from rlhf.config.cli import rewrite_argv
    from rlhf.config.preflight import ConfigError, compose_config
    from rlhf.data.check import DataCheckError, _tokenizer, check_run_data
    from rlhf.data.errors import DataError

    rows = 3
    overrides = []
    for a in rewrite_argv(argv):
        if a.startswith("rows="):
            rows = int(a.split("=", 1)[1])
        else:
            overrides.append(a)
    try:
        cfg = OmegaConf.to_object(compose_config(overrides))
        tokenizer, note = _tokenizer(cfg.model)
        if tokenizer is None:
            print(f"error: {note}; use a model whose tokenizer is local (e.g. model=tiny_chat)", file=sys.stderr)
            return 2
        report = check_run_data(cfg, tokenizer=tokenizer)
    except (ConfigError, DataCheckError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    task = get_algo(cfg.algo.name).task
    print(
        f"algo {cfg.algo.name}: task {task}; model {cfg.model.name_or_path}; trained tokens are between "
        f"{TRAINED_OPEN} and {TRAINED_CLOSE}"
    )
    for source in report.sources:
        print("\n" + "\n".join(source.lines(report.data)))
        for shown in source.examples[:rows]:
            print(f"- {shown['origin']}")
            print("\n".join(show_sample(task, shown["sample"], tokenizer)))
    for line in report.notes + report.warnings:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
