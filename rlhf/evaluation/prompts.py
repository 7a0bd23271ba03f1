"""Prompt rows for `rlhf.generate` and `rlhf.eval`: from a prompts file (.jsonl, .json, .txt) or from the
eval (or train) split of the `data` preset, tokenized the way training tokenizes prompts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

FORMATS = (".jsonl", ".json", ".txt")


class PromptFileError(ValueError):
    pass


def read_prompt_file(path: str | Path, prompt_key: str = "prompt") -> list[dict[str, Any]]:
    """Raw rows {prompt_key: prompt, ...other fields}: .txt (one prompt a non-empty line), .jsonl (one JSON object
    a line), .json (a list of objects, or of strings). A prompt is a string or a list of chat messages."""
    p = Path(path)
    if not p.is_file():
        raise PromptFileError(
            f"generate.prompts={str(path)!r}: no such file; give a .jsonl, .json or .txt file of "
            "prompts, or leave generate.prompts unset to use the data preset's eval split"
        )
    if p.suffix not in FORMATS:
        raise PromptFileError(
            f"generate.prompts={str(path)!r}: unknown format {p.suffix!r}; use one of {list(FORMATS)}"
        )
    text = p.read_text(encoding="utf-8")
    if p.suffix == ".txt":
        return [{prompt_key: line.strip()} for line in text.splitlines() if line.strip()]
    if p.suffix == ".jsonl":
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(_check(json.loads(line), p, n, prompt_key))
            except json.JSONDecodeError as e:
                raise PromptFileError(
                    f"{p}:{n}: not JSON ({e.msg}); each line of a .jsonl file is one object with a {prompt_key!r} key"
                ) from None
        return rows
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{p}:{e.lineno}: not JSON ({e.msg})") from None
    if not isinstance(data, list):
        raise PromptFileError(
            f"{p}: a .json prompts file holds a list of objects (or of strings), got {type(data).__name__}"
        )
    return [
        _check({prompt_key: row} if isinstance(row, str) else row, p, i, prompt_key, item=True)
        for i, row in enumerate(data)
    ]


def _check(row: Any, path: Path, where: int, key: str, item: bool = False) -> dict:
    place = f"{path} item {where}" if item else f"{path}:{where}"
    if not isinstance(row, dict):
        raise PromptFileError(f"{place}: expected an object with a {key!r} key, got {type(row).__name__}")
    if key not in row:
        raise PromptFileError(
            f"{place}: no {key!r} key (keys: {sorted(row)}); set generate.prompt_key to the key holding the prompt"
        )
    value = row[key]
    ok = isinstance(value, str) or (
        isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)
    )
    if not ok:
        raise PromptFileError(
            f"{place}: {key!r} must be a string or a list of chat messages "
            f"({{'role', 'content'}}), got {type(value).__name__}"
        )
    return row


def file_rows(
    path: str | Path, prompt_key: str, tokenizer, data_cfg, condition: Optional[str] = None
) -> list[dict[str, Any]]:
    """Tokenized prompt rows of a prompts file; every key but the prompt is kept as a field. `condition` goes
    in front of string prompts (generate.condition)."""
    from rlhf.data.templates import tokenize_prompt

    rows = []
    for raw in read_prompt_file(path, prompt_key):
        fields = {k: v for k, v in raw.items() if k != prompt_key}
        prompt = raw[prompt_key]
        if condition and isinstance(prompt, str):
            prompt = condition + prompt
        rows.append(tokenize_prompt(prompt, tokenizer, data_cfg, fields=fields))
    return rows


def preset_rows(data_cfg, tokenizer, split: str = "eval", seed: Optional[int] = None) -> list[dict[str, Any]]:
    """Tokenized prompt rows of the data preset's split ("eval": the held-out rows training evaluates on)."""
    from rlhf.data.datasets import build_dataset

    ds = build_dataset("prompt", data_cfg, tokenizer, split, seed=seed)
    if len(ds) == 0 and split == "eval":
        raise PromptFileError(
            "the data preset has no eval split (no source has eval_split and data.eval_fraction "
            "is 0); set data.sources.<name>.eval_split, data.eval_fraction, or generate.prompts"
        )
    return [ds[i] for i in range(len(ds))]
