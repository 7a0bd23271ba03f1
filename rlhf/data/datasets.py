"""Build a tokenized, mixed, in-memory data set for one task from a DataConfig.

`build_dataset(task, data_cfg, tokenizer, split)` reads every source, turns each row into a canonical example
with its format's normalizer (`rlhf.data.formats`: named by `format`, `custom` when only keys are set, else
detected from the first rows), tokenizes it, and mixes the sources by weight (`rlhf.data.mixture`). Rows that
fail are bad rows: counted and summarized (`bad_rows=skip`) or raised (`bad_rows=error`); a source with more
than `max_bad_fraction` bad rows stops the build with the keys its rows do have.

Tasks: sft (prompt + response, or a conversation), pretrain (text), pair (prompt + chosen + rejected), prompt
(RL prompts with reward fields), unpaired (KTO: prompt + completion + label), prm (prompt + steps + labels).

Splits: "train" reads each source's `split` (less the `data.eval_fraction` hold-out when the source has no
eval rows of its own); "eval" reads `eval_path`, else `eval_split` when the source has it, else the hold-out. Eval sets are concatenated in source order, not
reweighted: each source is evaluated on all its held-out rows.
"""

from __future__ import annotations

import collections
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from torch.utils.data import Dataset

from rlhf.config.data import DataConfig, SourceConfig
from rlhf.data.errors import BadRow, DataError, RowError
from rlhf.data.formats import (
    TASKS,
    Detection,
    Format,
    FormatOptions,
    check_example,
    check_task,
    detect_format,
    get_format,
)
from rlhf.data.mixture import mix_sources, train_eval_split
from rlhf.data.readers import (
    ORIGIN_KEY,
    SourceRows,
    check_bad_row_policy,
    enforce_bad_fraction,
    read_source,
    split_available,
)
from rlhf.data.sources import format_options, named_format, resolve_data
from rlhf.data.templates import tokenize_pair, tokenize_prm, tokenize_prompt, tokenize_sft, tokenize_unpaired

# A row's canonical example (rlhf/data/formats.py), stored beside its raw columns while building.
EXAMPLE_KEY = "_example"
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
    margin_key: Optional[str] = None,
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
    data_cfg = resolve_data(data_cfg)
    if not data_cfg.sources:
        raise DataError("no data sources", key="data.sources", hint="set data.train=<path>, or pick data=<preset>")
    check_bad_row_policy(data_cfg.bad_rows, data_cfg.max_bad_fraction)
    seed = int(data_cfg.shuffle_seed if seed is None else seed)

    per_source: Dict[str, List[Dict[str, Any]]] = {}
    bad_all: List[BadRow] = []
    for name, src in data_cfg.sources.items():
        built = _build_source(task, name, src, data_cfg, tokenizer, split, seed, step_tag, margin_key)
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
    margin_key: Optional[str] = None,
) -> Optional[Tuple[List[Dict[str, Any]], List[BadRow]]]:
    """(samples, bad rows) of one source, or None when it has no rows for `split`."""
    opts = format_options(src, cfg)
    fmt = source_format(task, name, src, cfg, opts)
    key_fields = key_fields_of(fmt, opts)
    read = read_split(name, src, cfg, split, seed, row_check(fmt, task, opts), key_fields)
    if read is None:
        return None
    # Rows that fail the format were set aside while reading; tokenizing can still fail (nothing left to train
    # on after truncation).
    samples, bad = [], list(read.bad)
    for row in read.rows:
        try:
            sample = tokenize_example(task, row[EXAMPLE_KEY], tokenizer, cfg, step_tag)
            if margin_key and task == "pair":
                sample["margin"] = pair_margin(row[EXAMPLE_KEY], margin_key)
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


def source_format(task: str, name: str, src: SourceConfig, cfg: DataConfig, opts: FormatOptions) -> Format:
    """The format of a source: named in the config, or detected from the first `data.check_rows` rows."""
    named = named_format(name, src)
    if named is not None:
        fmt = get_format(named)
        check_task(fmt, task, name)
        return fmt
    return detect_source(task, name, src, cfg, opts).format


def detect_source(task: str, name: str, src: SourceConfig, cfg: DataConfig, opts: FormatOptions) -> Detection:
    peek = read_source(name, src, src.split, bad_rows="skip", max_bad_fraction=1.0, limit=int(cfg.check_rows))
    return detect_format(peek.rows, task, opts, source=name, location=peek.location)


def key_fields_of(fmt: Format, opts: FormatOptions) -> Dict[str, str]:
    """Row key -> the SourceConfig field naming it, for key suggestions."""
    return {opts.keys.get(f) or key: f for f, key in fmt.keys.items()}


def row_check(fmt: Format, task: str, opts: FormatOptions) -> Callable[[Dict[str, Any]], None]:
    """Normalize a row into its canonical example (kept under EXAMPLE_KEY); RowError for a bad row."""

    def check(row: Dict[str, Any]) -> None:
        try:
            example = fmt.normalize(row, task, opts)
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            raise RowError(f"malformed {fmt.name} row", detail=f"{type(e).__name__}: {e}") from e
        check_example(example, task)
        row[EXAMPLE_KEY] = example

    return check


def eval_location(name: str, src: SourceConfig, cfg: DataConfig) -> Tuple[str, Optional[str], Optional[str]]:
    """Where a source's eval rows come from: ("path", path, split) for src.eval_path, ("split", None, split) for
    an eval split the source has, ("hold_out", None, None) for data.eval_fraction of the training rows when it
    has none, or ("none", None, None) with eval_split null."""
    if src.eval_path:
        local_split = next(
            (
                s
                for s in (src.eval_split, "test", "validation", src.split)
                if s and split_available(name, src, s, src.eval_path)
            ),
            src.split,
        )
        return "path", src.eval_path, local_split
    if src.eval_split is None:
        return "none", None, None
    if split_available(name, src, src.eval_split):
        return "split", None, src.eval_split
    return ("hold_out", None, None) if cfg.eval_fraction > 0 else ("none", None, None)


def read_split(
    name: str,
    src: SourceConfig,
    cfg: DataConfig,
    split: str,
    seed: int,
    check: Optional[Callable[[Dict[str, Any]], None]],
    key_fields: Dict[str, str],
    limit: Optional[int] = None,
) -> Optional[SourceRows]:
    """The checked rows of `split` ("train" or "eval") of one source, or None when it has no eval rows."""
    policy = dict(
        bad_rows=cfg.bad_rows, max_bad_fraction=cfg.max_bad_fraction, check=check, key_fields=key_fields, limit=limit
    )
    kind, path, eval_split = eval_location(name, src, cfg)
    if split == "eval" and kind in ("path", "split"):
        return read_source(name, src, eval_split, path=path, **policy)
    if split == "eval" and kind == "none":
        return None
    read = read_source(name, src, src.split, **policy)
    if kind == "hold_out":
        train, held = train_eval_split(read.rows, float(cfg.eval_fraction), seed, max_rows=cfg.eval_max_rows)
        if split == "train":
            return SourceRows(rows=train, bad=read.bad, location=read.location)
        # Unreadable lines are reported with the training part, not counted twice.
        return SourceRows(rows=held, bad=[], location=read.location)
    return read


# ------------------------------------------------------------------------------------------------ task tables


def pair_margin(ex: Mapping[str, Any], key: str) -> float:
    """The number in field `key` of a pair example (its scalar columns are in ``fields``)."""
    fields = ex.get("fields") or {}
    value = fields.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RowError(
            f"no number in margin field '{key}'",
            key=key,
            detail=f"algo.margin_key={key}; the row has fields {sorted(fields)}",
        )
    try:
        return float(value)
    except ValueError:
        raise RowError(f"margin field '{key}' is not a number: {value!r}", key=key) from None


def tokenize_example(
    task: str, ex: Mapping[str, Any], tokenizer: Any, cfg: Any, step_tag: Optional[str]
) -> Dict[str, Any]:
    """The tokenized sample of a canonical example (rlhf/data/formats.py) for `task`."""
    if task == "sft":
        return tokenize_sft(ex["prompt"], ex.get("response"), tokenizer, cfg)
    if task == "pretrain":
        return tokenize_sft(ex["text"], None, tokenizer, cfg, pretrain_mode=True)
    if task == "pair":
        return tokenize_pair(ex.get("prompt"), ex["chosen"], ex["rejected"], tokenizer, cfg)
    if task == "prompt":
        return tokenize_prompt(ex["prompt"], tokenizer, cfg, fields=ex.get("fields") or {})
    if task == "unpaired":
        return tokenize_unpaired(ex["prompt"], ex["response"], ex["label"], tokenizer, cfg)
    if task == "prm":
        return tokenize_prm(ex["prompt"], ex["steps"], ex["labels"], step_tag, tokenizer, cfg)
    raise DataError(f"unknown task {task!r}", key="task", hint=f"use one of {list(TASKS)}")
