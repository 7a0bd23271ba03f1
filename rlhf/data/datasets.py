"""Build a tokenized, mixed, in-memory data set for one task from a DataConfig.

`build_dataset(task, data_cfg, tokenizer, split)` reads every source, checks each row against the task's keys
(named by the source's `input_key`/`output_key`/... fields), tokenizes it, and mixes the sources by weight
(`rlhf.data.mixture`). Rows that fail are bad rows: counted and summarized (`bad_rows=skip`) or raised
(`bad_rows=error`); a source with more than `max_bad_fraction` bad rows stops the build with the keys its rows
do have.

Tasks and the row keys they need (`src` = the source's SourceConfig):

- sft:       src.input_key (string or messages) and src.output_key (string or messages); with
             `output_key: null`, src.input_key holds full conversations (every assistant turn is trained)
- pretrain:  src.input_key (plain text, or messages rendered whole); every token trained
- pair:      src.chosen_key, src.rejected_key, and src.input_key unless chosen/rejected are full conversations
- prompt:    src.input_key, plus each of src.fields (handed to reward functions)
- unpaired:  src.input_key, src.output_key (the completion), src.label_key (desirable or not) -- KTO
- prm:       src.input_key, src.output_key (list of steps), src.label_key (one label a step)

Splits: "train" reads each source's `split` (less the `data.eval_fraction` hold-out when the source has no
`eval_split`); "eval" reads `eval_split`, or the hold-out. Eval sets are concatenated in source order, not
reweighted: each source is evaluated on all its held-out rows.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch.utils.data import Dataset

from rlhf.config.data import DataConfig, SourceConfig
from rlhf.data.errors import BadRow, DataError, RowError
from rlhf.data.mixture import mix_sources, train_eval_split
from rlhf.data.readers import (
    ORIGIN_KEY,
    SourceRows,
    check_bad_row_policy,
    enforce_bad_fraction,
    read_source,
    validate_row,
)
from rlhf.data.templates import tokenize_pair, tokenize_prm, tokenize_prompt, tokenize_sft, tokenize_unpaired

TASKS = ("sft", "pretrain", "pair", "prompt", "unpaired", "prm")
SPLITS = ("train", "eval")


class TaskDataset(Dataset):
    """Tokenized samples of one task (dicts; see `rlhf.data.templates` for their keys, plus "source")."""

    def __init__(self, task: str, split: str, samples: List[Dict[str, Any]], bad: List[BadRow], sources: List[str]):
        self.task = task
        self.split = split
        self.samples = samples
        self.bad = bad
        self.sources = sources

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.samples[index]

    def lengths(self) -> List[int]:
        """Tokens of each sample (chosen + rejected for pairs), for packing and length-grouped batching."""
        if self.task == "pair":
            return [len(s["chosen_ids"]) + len(s["rejected_ids"]) for s in self.samples]
        return [len(s["input_ids"]) for s in self.samples]

    def source_counts(self) -> Dict[str, int]:
        counts = collections.Counter(s["source"] for s in self.samples)
        return {name: counts.get(name, 0) for name in self.sources}

    def summary(self) -> str:
        """One line: rows per source and bad rows grouped by reason, with the first place each occurred."""
        head = self.task if self.split == "train" else f"{self.task} {self.split}"
        if not self.sources:
            return f"{head}: no rows (no source has an eval_split and data.eval_fraction is 0)"
        per_source = ", ".join(f"{name}: {n}" for name, n in self.source_counts().items())
        plural = "s" if len(self.sources) != 1 else ""
        line = f"{head}: {len(self)} rows from {len(self.sources)} source{plural} ({per_source})"
        if not self.bad:
            return line + "; no bad rows"
        first: Dict[str, str] = {}
        for b in self.bad:
            first.setdefault(b.reason, b.origin)
        counts = collections.Counter(b.reason for b in self.bad)
        groups = ", ".join(f"{n} {reason} (first at {first[reason]})" for reason, n in counts.most_common())
        return f"{line}; skipped {len(self.bad)} bad row{'s' if len(self.bad) != 1 else ''}: {groups}"


def build_dataset(
    task: str,
    data_cfg: DataConfig,
    tokenizer: Any,
    split: str = "train",
    *,
    seed: Optional[int] = None,
    step_tag: Optional[str] = None,
) -> TaskDataset:
    """Read, check, tokenize and mix every source of `data_cfg` for `task` (module docstring lists the keys).

    `split` is "train" or "eval"; `seed` (default `data_cfg.shuffle_seed`) fixes the hold-out, the mixture
    sample and its order. `step_tag` is the one-token tag a process reward model scores at (task "prm" only).
    """
    if task not in TASKS:
        raise DataError(f"unknown task {task!r}", key="task", hint=f"use one of {list(TASKS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}", key="split", hint=f"use one of {list(SPLITS)}")
    if task == "prm" and not step_tag:
        raise DataError(
            "task 'prm' needs the step tag the reward model scores at",
            key="step_tag",
            hint="pass step_tag=<a tag the tokenizer keeps as one token>",
        )
    if not data_cfg.sources:
        raise DataError("no data sources", key="data.sources", hint="add data.sources.<name>.path=...")
    check_bad_row_policy(data_cfg.bad_rows, data_cfg.max_bad_fraction)
    seed = int(data_cfg.shuffle_seed if seed is None else seed)

    per_source: Dict[str, List[Dict[str, Any]]] = {}
    bad_all: List[BadRow] = []
    for name, src in data_cfg.sources.items():
        built = _build_source(task, name, src, data_cfg, tokenizer, split, seed, step_tag)
        if built is not None:
            per_source[name], bad = built
            bad_all += bad

    if split == "train":
        weights = {name: float(data_cfg.sources[name].weight) for name in per_source}
        samples = mix_sources(per_source, weights, seed)
        names = [name for name in per_source if weights[name] > 0]
    else:
        samples = [s for rows in per_source.values() for s in rows]
        names = list(per_source)
    return TaskDataset(task, split, samples, bad_all, names)


def _build_source(
    task: str,
    name: str,
    src: SourceConfig,
    cfg: DataConfig,
    tokenizer: Any,
    split: str,
    seed: int,
    step_tag: Optional[str],
) -> Optional[Tuple[List[Dict[str, Any]], List[BadRow]]]:
    """(samples, bad rows) of one source, or None when it has no rows for `split`."""
    key_fields = _key_fields(task, src)
    read = _read_split(name, src, cfg, split, seed, _row_check(task, src), key_fields)
    if read is None:
        return None
    # Rows that fail the schema were set aside while reading; tokenizing can still fail (nothing left to train
    # on after truncation).
    tokenize = _TOKENIZERS[task]
    samples, bad = [], list(read.bad)
    for row in read.rows:
        try:
            sample = tokenize(row, src, tokenizer, cfg, step_tag)
        except RowError as e:
            bad_row = e.at(name, row.get(ORIGIN_KEY, "?"))
            if cfg.bad_rows == "error":
                raise DataError.from_bad_row(
                    bad_row, hint="fix the row, or set data.bad_rows=skip to leave such rows out"
                ) from e
            bad.append(bad_row)
            continue
        sample["source"] = name
        samples.append(sample)
    total = len(read.rows) + len(read.bad)
    enforce_bad_fraction(name, total, bad, cfg.max_bad_fraction, rows=read.rows, key_fields=key_fields)
    return samples, bad


def _read_split(
    name: str,
    src: SourceConfig,
    cfg: DataConfig,
    split: str,
    seed: int,
    check: Callable[[Dict[str, Any]], None],
    key_fields: Dict[str, str],
) -> Optional[SourceRows]:
    """The checked rows of `split` for one source, or None when the source has no eval rows."""
    policy = dict(bad_rows=cfg.bad_rows, max_bad_fraction=cfg.max_bad_fraction, check=check, key_fields=key_fields)
    hold_out = src.eval_split is None and cfg.eval_fraction > 0
    if split == "eval" and src.eval_split is not None:
        return read_source(name, src, src.eval_split, **policy)
    if split == "eval" and not hold_out:
        return None
    read = read_source(name, src, src.split, **policy)
    if hold_out:
        train, held = train_eval_split(read.rows, float(cfg.eval_fraction), seed)
        if split == "train":
            return SourceRows(rows=train, bad=read.bad, location=read.location)
        # Unreadable lines are reported with the training part, not counted twice.
        return SourceRows(rows=held, bad=[], location=read.location)
    return read


# ------------------------------------------------------------------------------------------------ task tables


def _row_check(task: str, src: SourceConfig) -> Callable[[Dict[str, Any]], None]:
    """The schema check of one row of `src` for `task` (raises RowError)."""

    def check(row: Dict[str, Any]) -> None:
        validate_row(row, _required(task, src, row))

    return check


def _key_fields(task: str, src: SourceConfig) -> Dict[str, str]:
    """Row key -> the SourceConfig field naming it, for the keys `task` reads."""
    fields = {"input_key": src.input_key}
    if task in ("sft", "unpaired", "prm") and src.output_key:
        fields["output_key"] = src.output_key
    if task == "pair":
        fields.update(chosen_key=src.chosen_key, rejected_key=src.rejected_key)
    if task in ("unpaired", "prm"):
        fields["label_key"] = src.label_key
    return {key: field for field, key in fields.items()}


def _required(task: str, src: SourceConfig, row: Mapping[str, Any]) -> Dict[str, str]:
    """Row key -> kind (see `rlhf.data.readers.validate_row`) that `task` needs from `row`."""
    if task == "sft":
        if src.output_key:
            return {src.input_key: "text", src.output_key: "text"}
        return {src.input_key: "messages"}
    if task == "pretrain":
        return {src.input_key: "text"}
    if task == "pair":
        required = {src.chosen_key: "text", src.rejected_key: "text"}
        chosen = row.get(src.chosen_key)
        full_conversations = (
            isinstance(chosen, list) and chosen and isinstance(chosen[0], dict) and chosen[0].get("role") != "assistant"
        )
        if not full_conversations:
            required[src.input_key] = "text"
        return required
    if task == "prompt":
        return {src.input_key: "text", **{str(f): "any" for f in src.fields}}
    output_key = _output_key(task, src)
    if task == "unpaired":
        return {src.input_key: "text", output_key: "text", src.label_key: "label"}
    return {src.input_key: "text", output_key: "str_list", src.label_key: "label_list"}


def _output_key(task: str, src: SourceConfig) -> str:
    if not src.output_key:
        raise DataError(
            f"task '{task}' needs the key of the {'completion' if task == 'unpaired' else 'steps'}, "
            "but output_key is null",
            key="output_key",
            hint="set data.sources.<name>.output_key to the column that holds it",
        )
    return src.output_key


def _sft(row, src, tokenizer, cfg, _tag):
    response = row[src.output_key] if src.output_key else None
    return tokenize_sft(row[src.input_key], response, tokenizer, cfg)


def _pretrain(row, src, tokenizer, cfg, _tag):
    return tokenize_sft(row[src.input_key], None, tokenizer, cfg, pretrain_mode=True)


def _pair(row, src, tokenizer, cfg, _tag):
    return tokenize_pair(row.get(src.input_key), row[src.chosen_key], row[src.rejected_key], tokenizer, cfg)


def _prompt(row, src, tokenizer, cfg, _tag):
    return tokenize_prompt(row[src.input_key], tokenizer, cfg, fields={str(f): row[f] for f in src.fields})


def _unpaired(row, src, tokenizer, cfg, _tag):
    return tokenize_unpaired(row[src.input_key], row[src.output_key], row[src.label_key], tokenizer, cfg)


def _prm(row, src, tokenizer, cfg, tag):
    return tokenize_prm(row[src.input_key], row[src.output_key], row[src.label_key], tag, tokenizer, cfg)


_TOKENIZERS: Dict[str, Callable[..., Dict[str, Any]]] = {
    "sft": _sft,
    "pretrain": _pretrain,
    "pair": _pair,
    "prompt": _prompt,
    "unpaired": _unpaired,
    "prm": _prm,
}
