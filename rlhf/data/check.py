"""The data check the driver runs before any process starts (also in `mode=plan`).

Every source is opened and its first `data.check_rows` rows read (a 1M-row file stays fast), its format named
or detected, each row normalized and tokenized as training will, prompt/response token lengths measured
against `data.prompt_max_len`/`data.max_len`, suspicious rows counted by reason, and the fields the reward
functions read checked against the rows. Every problem of the command is collected, then raised at once as a
`DataCheckError` whose message lists them, each with its place (file:line), the config key and the fix.

    report = check_run_data(cfg)        # cfg: the typed RunConfig, data already resolved
    print(report.text())
"""

from __future__ import annotations

import collections
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from rlhf.data.errors import BadRow, DataError, RowError
from rlhf.data.formats import FORMATS, Format, check_task, get_format
from rlhf.data.readers import ORIGIN_KEY, read_source
from rlhf.data.sources import format_options, named_format, resolve_data

# A bad-row share above this in the checked rows is worth a warning even when under data.max_bad_fraction.
WARN_BAD_FRACTION = 0.05


class DataCheckError(Exception):
    """Problems found by the data check; `str()` lists all of them."""

    def __init__(self, problems: Sequence[DataError], report: DataReport):
        self.problems = list(problems)
        self.report = report
        lines = [f"the data check found {len(self.problems)} problem(s); nothing was started:"]
        for i, p in enumerate(self.problems, 1):
            lines += _problem_lines(i, p)
        super().__init__("\n".join(lines))


def _problem_lines(i: int, p: DataError) -> List[str]:
    where = ", ".join(
        x for x in (f"source '{p.source}'" if p.source else "", p.origin or "", f"key {p.key}" if p.key else "") if x
    )
    lines = [f"  {i}. {where + ': ' if where else ''}{p.problem}"]
    if p.hint:
        lines.append(f"     fix: {p.hint}")
    return lines


@dataclass
class SourceReport:
    name: str
    location: str = ""
    format: str = ""
    detected: bool = False
    rows: int = 0
    good: int = 0
    bad: List[BadRow] = field(default_factory=list)
    prompt_tokens: List[int] = field(default_factory=list)
    sample_tokens: List[int] = field(default_factory=list)
    prompt_cut: int = 0
    sample_cut: int = 0
    eval: str = ""
    field_names: List[str] = field(default_factory=list)
    examples: List[Dict[str, Any]] = field(default_factory=list)  # (row, example, sample) of the first good rows

    def lines(self, cfg_data) -> List[str]:
        how = "detected" if self.detected else "(keys of the config)" if self.format == "custom" else "named"
        out = [
            f"data: {self.format} format {how} in {self.location} (source '{self.name}'; {self.good} of the first "
            f"{self.rows} rows usable)"
        ]
        if self.bad:
            counts = collections.Counter(b.reason for b in self.bad)
            first: Dict[str, str] = {}
            for b in self.bad:
                first.setdefault(b.reason, b.origin)
            out.append(
                "      skipped: " + ", ".join(f"{n} x {r} (first at {first[r]})" for r, n in counts.most_common())
            )
        if self.prompt_tokens:
            out.append(
                f"      prompt tokens {_stats(self.prompt_tokens)}; {_pct(self.prompt_cut, self.good)} cut to "
                f"data.prompt_max_len={cfg_data.prompt_max_len}"
            )
        if self.sample_tokens:
            out.append(
                f"      sample tokens {_stats(self.sample_tokens)}; {_pct(self.sample_cut, self.good)} cut to "
                f"data.max_len={cfg_data.max_len}"
            )
        if self.eval:
            out.append(f"      eval: {self.eval}")
        return out


def _stats(values: List[int]) -> str:
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return f"median {int(statistics.median(ordered))}, p95 {p95}, max {ordered[-1]}"


def _pct(n: int, total: int) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "0%"


@dataclass
class DataReport:
    task: str
    sources: List[SourceReport] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    data: Any = None

    def text(self) -> str:
        lines = [line for s in self.sources for line in s.lines(self.data)]
        lines += [f"note: {n}" for n in self.notes]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def check_run_data(cfg, tokenizer: Any = None) -> DataReport:
    """Check the data of a run (typed RunConfig) for its algorithm's task; raises DataCheckError listing every
    problem. `tokenizer`: the model's (loaded when available offline, else lengths are not measured)."""
    from rlhf.algos.registry import get_algo

    spec = get_algo(cfg.algo.name)
    data = resolve_data(cfg.data)
    report = DataReport(spec.task, data=data)
    problems: List[DataError] = []
    if tokenizer is None:
        tokenizer, note = _tokenizer(cfg.model)
        missing = _missing_model_files(cfg.model) if cfg.mode != "plan" else []  # a plan needs only config.json
        problems += [DataError(m) for m in missing]
        if note and not missing:
            report.notes.append(note)
    step_tag = getattr(cfg.algo, "step_tag", None) or "<|step|>"
    for name, src in data.sources.items():
        try:
            report.sources.append(_check_source(spec.task, name, src, data, tokenizer, step_tag, problems, report))
        except DataError as e:
            problems.append(e)
    if spec.family == "onpolicy":
        problems += _check_reward_fields(cfg, report)
        _warn_short_rollouts(cfg, report, tokenizer)
    if problems:
        raise DataCheckError(problems, report)
    return report


def _warn_short_rollouts(cfg, report: DataReport, tokenizer) -> None:
    """Reference solutions in the rows (GSM8K's worked answer, a `solution` field) far longer than
    rollout.max_new_tokens: most generations would be cut before their answer."""
    limit = getattr(getattr(cfg, "rollout", None), "max_new_tokens", None)
    if tokenizer is None or not limit:
        return
    for s in report.sources:
        found = (e["example"].get("fields", {}).get("solution") for e in s.examples)
        refs = [r for r in found if isinstance(r, str)]
        if not refs:
            continue
        lengths = sorted(len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in refs)
        median = lengths[len(lengths) // 2]
        if median > limit:
            report.warnings.append(
                f"source '{s.name}': its reference solutions are {median} tokens long (median of {len(lengths)}), "
                f"more than rollout.max_new_tokens={limit}: most answers would be cut before the end; raise "
                "rollout.max_new_tokens"
            )


def _missing_model_files(model_cfg) -> List[str]:
    """A local model folder without a tokenizer or weights (one holding only config.json): what to copy."""
    from rlhf.models.loading import missing_tokenizer_message, missing_weights_message

    name = model_cfg.tokenizer or model_cfg.name_or_path
    key = "model.tokenizer" if model_cfg.tokenizer else "model.name_or_path"
    found = [
        missing_tokenizer_message(name, key),
        missing_weights_message(model_cfg.name_or_path, "model.name_or_path"),
    ]
    return [m for m in found if m]


def _tokenizer(model_cfg):
    """The model's tokenizer when it loads without the network; else (None, why lengths are not measured)."""
    from rlhf.models.loading import load_tokenizer

    name = model_cfg.tokenizer or model_cfg.name_or_path
    local = name.startswith("tiny:") or Path(name).expanduser().exists()
    if not local:
        try:
            from huggingface_hub import try_to_load_from_cache

            local = isinstance(try_to_load_from_cache(name, "tokenizer_config.json"), str)
        except Exception:  # noqa: BLE001 - an odd name is simply not cached
            local = False
    if not local:
        return None, f"the tokenizer of {name} is not available offline: rows checked, token lengths not measured"
    try:
        return load_tokenizer(model_cfg), None
    except (OSError, ValueError) as e:
        return None, f"the tokenizer of {name} did not load ({str(e).splitlines()[0]}): token lengths not measured"


def _check_source(task, name, src, data, tokenizer, step_tag, problems, report) -> SourceReport:
    from rlhf.data.datasets import EXAMPLE_KEY, detect_source, eval_location, row_check, tokenize_example

    out = SourceReport(name)
    opts = format_options(src, data)
    named = named_format(name, src)
    if named is not None:
        fmt: Format = get_format(named, key=f"data.sources.{name}.format")
        check_task(fmt, task, name)
    else:
        detection = detect_source(task, name, src, data, opts)
        fmt, out.detected = detection.format, True
    out.format = fmt.name
    limit = int(data.check_rows)
    read = read_source(
        name, src, src.split, bad_rows="skip", max_bad_fraction=1.0, check=row_check(fmt, task, opts), limit=limit
    )
    out.location = read.location
    out.bad = list(read.bad)
    full = _Unbounded(data)
    for row in read.rows:
        example = row[EXAMPLE_KEY]
        try:
            sample = tokenize_example(task, example, tokenizer, data, step_tag) if tokenizer is not None else None
            whole = tokenize_example(task, example, tokenizer, full, step_tag) if tokenizer is not None else None
        except RowError as e:
            out.bad.append(e.at(name, row.get(ORIGIN_KEY, "?")))
            continue
        out.good += 1
        out.field_names = sorted(set(out.field_names) | set(example.get("fields") or {}))
        if len(out.examples) < 8:
            out.examples.append({"row": row, "example": example, "sample": sample, "origin": row.get(ORIGIN_KEY)})
        if whole is not None:
            p, t = _lengths(task, whole)
            out.prompt_tokens.append(p)
            if t is not None:
                out.sample_tokens.append(t)
            out.prompt_cut += p > data.prompt_max_len
            out.sample_cut += t is not None and min(p, data.prompt_max_len) + (t - p) > data.max_len
    out.rows = out.good + len(out.bad)
    _bad_row_problems(name, src, fmt, opts, out, data, problems, report)
    kind, path, split = eval_location(name, src, data)
    out.eval = _eval_text(kind, path, split, src, data, name, task, fmt, opts, problems)
    for what, cut in (("prompts", out.prompt_cut), ("samples", out.sample_cut)):
        if out.good and cut / out.good > 0.1:
            key = "data.prompt_max_len" if what == "prompts" else "data.max_len"
            report.warnings.append(
                f"source '{name}': {_pct(cut, out.good)} of the checked {what} are longer than "
                f"{key}={getattr(data, key.split('.')[1])} and will be cut; raise {key} if that "
                "loses what matters"
            )
    return out


class _Unbounded:
    """Template arguments without length limits: the untruncated lengths of a sample."""

    def __init__(self, data):
        self.apply_chat_template = data.apply_chat_template
        self.max_len = self.prompt_max_len = 1 << 30


def _lengths(task: str, sample: Dict[str, Any]):
    """(prompt tokens, whole-sample tokens or None) of an untruncated sample."""
    if task == "prompt":
        return len(sample["input_ids"]), None
    if task == "pair":
        return sample["prompt_len"], max(len(sample["chosen_ids"]), len(sample["rejected_ids"]))
    mask = sample.get("loss_mask") or sample.get("step_mask") or []
    first = mask.index(1) if 1 in mask else len(mask)
    return first, len(sample["input_ids"])


def _bad_row_problems(name, src, fmt, opts, out: SourceReport, data, problems, report) -> None:
    if not out.bad:
        return
    counts = collections.Counter(b.reason for b in out.bad)
    reason, count = counts.most_common(1)[0]
    first = next(b for b in out.bad if b.reason == reason)
    share = len(out.bad) / max(out.rows, 1)
    if data.bad_rows == "error":
        problems.append(_bad_row_error(name, fmt, opts, out.bad[0]))
    elif out.good == 0 or share > data.max_bad_fraction:
        detail = f" ({first.detail})" if first.detail else ""
        problems.append(
            DataError(
                f"{len(out.bad)} of the first {out.rows} rows are bad (data.max_bad_fraction={data.max_bad_fraction}); "
                f"most common: {count} x {reason}{detail}",
                source=name,
                origin=first.origin,
                key=_config_key(name, fmt, opts, first.key),
                hint=_fix(name, fmt, reason, first),
            )
        )
    elif share > WARN_BAD_FRACTION:
        report.warnings.append(
            f"source '{name}': {len(out.bad)} of the first {out.rows} rows will be skipped "
            f"(most common: {count} x {reason}, first at {first.origin})"
        )


def _bad_row_error(name: str, fmt: Format, opts, b: BadRow, what: str = "") -> DataError:
    """data.bad_rows=error: the first bad row stops the run; named with its place and config key."""
    return DataError(
        what + b.reason + (f" ({b.detail})" if b.detail else ""),
        source=name,
        origin=b.origin,
        key=_config_key(name, fmt, opts, b.key),
        hint="fix or delete the row, or set data.bad_rows=skip to leave such rows out",
    )


def _config_key(name: str, fmt: Format, opts, row_key: Optional[str]) -> Optional[str]:
    """The config key that names a row key (data.sources.<name>.input_key), else the source's format."""
    for config_field, key in fmt.keys.items():
        if row_key is not None and (opts.keys.get(config_field) or key) == row_key:
            return f"data.sources.{name}.{config_field}"
    return f"data.sources.{name}.format"


def _fix(name: str, fmt: Format, reason: str, bad: BadRow) -> str:
    if reason.startswith("prompt contains its own"):
        return (
            "the prompt key holds the whole conversation: leave the keys unset so the format is detected, or "
            "name it (e.g. data.format=hh_rlhf for '\\n\\nHuman: ... \\n\\nAssistant:' text)"
        )
    if reason.startswith(("missing key", "wrong type", "empty string")):
        return (
            f"rename the key with data.sources.{name}.<input_key|output_key|chosen_key|rejected_key|label_key>="
            f"<row key>, or name another format with data.sources.{name}.format=<name> (formats: "
            f"{', '.join(sorted(FORMATS))})"
        )
    if reason.startswith(("invalid JSON", "not a JSON object", "invalid UTF-8")):
        return "check the file format: .jsonl holds one JSON object per line"
    if reason.startswith("no ") and "left after truncation" in reason:
        return "raise data.max_len / data.prompt_max_len, or shorten the prompts"
    return "fix the rows, or raise data.max_bad_fraction if this much noise is expected"


def _eval_text(kind, path, split, src, data, name, task, fmt, opts, problems) -> str:
    from rlhf.data.datasets import row_check

    if kind == "none":
        return (
            "none (eval_split is null)"
            if src.eval_split is None
            else f"none (no split '{src.eval_split}' and data.eval_fraction=0)"
        )
    if kind == "hold_out":
        why = f"; the source has no split '{src.eval_split}'" if src.eval_split else ""
        return f"{data.eval_fraction:g} of the training rows held out (at most {data.eval_max_rows}){why}"
    if kind == "split" and not _is_local(name, src.path):
        return f"split '{split}' of {src.path}"
    try:
        read = read_source(
            name,
            src,
            split,
            path=path,
            bad_rows="skip",
            max_bad_fraction=1.0,
            check=row_check(fmt, task, opts),
            limit=int(data.check_rows),
        )
    except DataError as e:
        problems.append(e)
        return "unreadable"
    good = len(read.rows)
    if read.bad and data.bad_rows == "error":
        # The run reads the eval rows under the same policy: the first bad one would stop it mid-run.
        problems.append(_bad_row_error(name, fmt, opts, read.bad[0], "eval row: "))
    elif read.bad and (good == 0 or len(read.bad) > data.max_bad_fraction * (good + len(read.bad))):
        b = read.bad[0]
        problems.append(
            DataError(
                f"{len(read.bad)} of the first {good + len(read.bad)} eval rows are bad: "
                f"{b.reason}{' (' + b.detail + ')' if b.detail else ''}",
                source=name,
                origin=b.origin,
                key=f"data.sources.{name}.eval_path" if path else None,
                hint=f"the eval rows must have the format of the training rows ({fmt.name})",
            )
        )
    return f"{read.location} ({good} of the first {good + len(read.bad)} rows usable)"


def _is_local(name: str, path: str) -> bool:
    from rlhf.data.readers import _resolve_local

    return _resolve_local(name, path) is not None


def _check_reward_fields(cfg, report: DataReport) -> List[DataError]:
    """Every field a reward function requires must be a field of every source's rows."""
    from rlhf.rewards.loader import RewardError, load_reward_function

    problems = []
    for rname, rsrc in cfg.reward.sources.items():
        if rsrc.kind != "function" or not rsrc.path:
            continue
        try:
            fn = load_reward_function(rsrc.path, **dict(rsrc.kwargs))
        except RewardError as e:
            problems.append(
                DataError(
                    str(e), key=f"reward.sources.{rname}.path", hint="give module:function or path/to/file.py:function"
                )
            )
            continue
        for s in report.sources:
            if not s.good:
                continue
            missing = [f for f in fn.required_fields if f not in s.field_names]
            if missing:
                origin = s.examples[0]["origin"] if s.examples else None
                problems.append(
                    DataError(
                        f"reward function '{fn.name}' reads field(s) {missing}, but the rows have fields {s.field_names}",
                        source=s.name,
                        origin=origin,
                        key=f"reward.sources.{rname}",
                        hint=f"add the column(s) to the rows, or drop reward.sources.{rname} (~reward.sources.{rname}) "
                        "for data without reference answers",
                    )
                )
    return problems
