"""Read one data source into row dicts tagged with their origin, and check rows against a task's schema.

Source forms (`SourceConfig.path`):

- `rows.jsonl`: one JSON object per line, read line by line so a bad line is reported as `rows.jsonl:17`;
- `rows.json`: a list of objects (a `.json` file holding JSON lines is read as JSON lines);
- `rows.parquet`: read with pyarrow; rows are reported as `rows.parquet:row 12` (0-based);
- `rows.jsonl.gz`, `rows.json.gz`: the same, gzip-compressed (Anthropic/hh-rlhf ships `train.jsonl.gz`);
- a directory, for instance a data set downloaded from the hub (`huggingface-cli download <org/name>
  --repo-type dataset --local-dir <dir>` or a git clone): when its README.md declares `configs:` (the hub's
  own description of which files hold which split), those globs decide, with `hub_config` naming the config
  where there are several; else every data file below it (hidden folders left out) whose split name, the file
  name up to its first `-` (`train-00000-of-00002.parquet`, `test.jsonl`), equals the split; a folder whose
  files name no split is one split; near misses (`train_prefs`, `train_sft` for `train`) are listed, not
  guessed;
- `json@./dir`: the OpenRLHF spelling of the same thing;
- `asset:<name>`: a data set shipped in `rlhf/assets/data/` (a file, with or without its suffix, or a directory
  holding train/test files);
- anything else: a Hugging Face hub data set, `datasets.load_dataset(path, split=split)`.

Every row gets a private `"_origin"` key ("path:line") used by error messages downstream.
"""

from __future__ import annotations

import collections
import difflib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from rlhf.config.data import SourceConfig
from rlhf.data.errors import BadRow, DataError, RowError

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".jsonl.gz", ".json.gz")
BAD_ROW_POLICIES = ("skip", "error")
ORIGIN_KEY = "_origin"
# Split names that mark a file as belonging to one split; a directory whose files carry none of them is one split.
_SPLIT_WORDS = ("train", "test", "eval", "validation", "valid", "val", "dev")

# Column names public data sets commonly use for each key field, most common first (for suggestions only).
_USUAL_KEYS = {
    "input_key": ("prompt", "question", "instruction", "query", "problem", "input", "messages", "conversations"),
    "output_key": ("response", "answer", "output", "completion", "solution", "target", "steps"),
    "chosen_key": ("chosen", "preferred", "response_chosen"),
    "rejected_key": ("rejected", "dispreferred", "response_rejected"),
    "label_key": ("label", "labels", "score"),
}
# Kinds accepted by `validate_row`.
ROW_KINDS = ("str", "messages", "text", "str_list", "label", "label_list", "any")
_KIND_WORDS = {
    "str": "a non-empty string",
    "messages": "a non-empty list of {role, content} messages",
    "text": "a non-empty string or a list of {role, content} messages",
    "str_list": "a non-empty list of non-empty strings",
    "label": "a label (true/false or 1/0)",
    "label_list": "a non-empty list of labels (true/false, 1/0 or a float in [0, 1])",
    "any": "a value",
}


@dataclass
class SourceRows:
    """The rows read from one source: `rows` (dicts with `_origin`) and `bad` (rows that could not be read)."""

    rows: List[Dict[str, Any]]
    bad: List[BadRow] = field(default_factory=list)
    location: str = ""


def read_source(
    name: str,
    src: SourceConfig,
    split: str,
    *,
    bad_rows: str = "skip",
    max_bad_fraction: float = 0.5,
    check: Optional[Callable[[Dict[str, Any]], None]] = None,
    key_fields: Optional[Mapping[str, str]] = None,
    limit: Optional[int] = None,
    path: Optional[str] = None,
) -> SourceRows:
    """Read the `split` of source `name` described by `src` (see the module docstring for the path forms).

    `limit` stops after that many rows (good and bad), reading no further (a quick look at a large file);
    `path` reads another path with the source's settings (its eval_path).

    Bad rows: lines that are not JSON or not objects, and rows for which `check` (e.g. a `validate_row` call with
    a task's keys) raises RowError. With `bad_rows="error"` the first one in reading order raises a `DataError`
    naming file:line and the key; with "skip" they are collected in `.bad`, and a `DataError` is raised when more
    than `max_bad_fraction` of the rows are bad (with `key_fields`, key -> SourceConfig field, it suggests the
    key override). `src.max_samples` keeps the first good rows.
    """
    check_bad_row_policy(bad_rows, max_bad_fraction)
    collector = _Collector(name, bad_rows, check, key_fields, limit)
    path_key = _path_key(name, path)
    path = str(src.path if path is None else path)
    local = _resolve_local(name, path, path_key)
    try:
        if local is None:
            location = f"{path} [{split}]"
            hub_split = split if limit is None else f"{split}[:{limit}]"
            for i, row in enumerate(_read_hub(name, path, hub_split, src.hub_config, path_key)):
                collector.add(dict(row), f"{path}[{split}]:row {i}")
        else:
            files = _files_for_split(name, local, split, src)
            location = str(local) if local.is_file() else f"{local} ({', '.join(f.name for f in files)})"
            for file in files:
                _read_file(file, collector)
    except _Enough:
        pass
    total = len(collector.rows) + len(collector.bad)
    seen = collector.rows + collector.failed
    enforce_bad_fraction(name, total, collector.bad, max_bad_fraction, rows=seen, key_fields=key_fields)
    rows = collector.rows if src.max_samples is None else collector.rows[: int(src.max_samples)]
    return SourceRows(rows=rows, bad=collector.bad, location=location)


def check_bad_row_policy(bad_rows: str, max_bad_fraction: float) -> None:
    if bad_rows not in BAD_ROW_POLICIES:
        raise DataError(
            f"unknown bad-row policy {bad_rows!r}", key="data.bad_rows", hint=f"use one of {list(BAD_ROW_POLICIES)}"
        )
    if not 0.0 <= float(max_bad_fraction) <= 1.0:
        raise DataError(
            f"max_bad_fraction={max_bad_fraction} is not a fraction",
            key="data.max_bad_fraction",
            hint="use a number in [0, 1]",
        )


def asset_root() -> Path:
    """Directory of the data sets shipped with the package (`rlhf/assets/data`)."""
    return Path(str(resources.files("rlhf") / "assets" / "data"))


# ----------------------------------------------------------------------------------------------- resolving paths


def _path_key(name: str, eval_path: Optional[str]) -> str:
    """The config key a source's path came from: its path, or the eval_path (which data.eval sets) read instead."""
    return f"data.sources.{name}.{'path' if eval_path is None else 'eval_path'}"


def _resolve_local(name: str, path: str, key: Optional[str] = None) -> Optional[Path]:
    """The local file or directory `path` names, or None for a hub data set name. `key`: the config key that
    gave the path (data.sources.<name>.path unless told; eval_path, which data.eval sets, for the eval rows)."""
    key = key or _path_key(name, None)
    if path.startswith("asset:"):
        return _resolve_asset(name, path[len("asset:") :])
    if path.startswith("json@"):
        local = Path(path[len("json@") :]).expanduser()
        if not local.exists():
            raise DataError(
                f"'{local}' was not found (cwd {os.getcwd()})",
                source=name,
                key=key,
                hint="json@<dir> names a local directory holding train/test JSON files",
            )
        return local
    local = Path(path).expanduser()
    if local.exists():
        return local
    looks_local = path.startswith((".", "/", "~")) or path.endswith(DATA_SUFFIXES) or path.count("/") > 1
    if looks_local:
        raise DataError(
            f"'{path}' was not found locally (cwd {os.getcwd()})",
            source=name,
            key=key,
            hint="give an existing .jsonl/.json/.parquet file or directory, asset:<name>, or a hub name org/name",
        )
    return None


def _resolve_asset(name: str, asset: str) -> Path:
    root = asset_root()
    candidates = [root / asset] + [root / f"{asset}{suffix}" for suffix in DATA_SUFFIXES]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    shipped = sorted(
        f"asset:{p.name if p.is_dir() else p.stem}"
        for p in (root.iterdir() if root.is_dir() else [])
        if p.is_dir() or is_data_file(p)
    )
    raise DataError(
        f"no shipped data set 'asset:{asset}' in {root}",
        source=name,
        key=f"data.sources.{name}.path",
        hint=f"shipped data sets: {shipped or 'none (the assets are not installed)'}",
    )


def split_available(name: str, src: SourceConfig, split: str, path: Optional[str] = None) -> bool:
    """Whether a local source holds `split` (a single file holds only its training split); True for hub names,
    whose splits are known only when loading."""
    local = _resolve_local(name, str(src.path if path is None else path), _path_key(name, path))
    if local is None:
        return _hub_has_split(str(src.path if path is None else path), split, src.hub_config)
    try:
        _files_for_split(name, local, split, src)
    except _NoSplit:
        return False
    return True


def _hub_has_split(path: str, split: str, config: Optional[str]) -> bool:
    """Whether a hub data set lists `split`; True when the hub cannot be asked (loading will then say why)."""
    try:
        import datasets

        return split in datasets.get_dataset_split_names(path, config)
    except Exception:  # noqa: BLE001 - offline or unknown: decided when the rows are loaded
        return True


class _NoSplit(DataError):
    """The source exists but holds no rows for the split asked for."""


def is_data_file(p: Path) -> bool:
    return p.name.endswith(DATA_SUFFIXES)


def _stem(p: Path) -> str:
    """The file name without its data suffix (`train.jsonl.gz` -> `train`)."""
    name = p.name
    suffix = next((x for x in sorted(DATA_SUFFIXES, key=len, reverse=True) if name.endswith(x)), "")
    return name[: len(name) - len(suffix)]


def _split_name(p: Path) -> str:
    """The split a file belongs to by the hub's naming: the stem up to its first `-`."""
    return _stem(p).split("-", 1)[0]


def _data_files_below(root: Path) -> List[Path]:
    """Data files under `root`, hidden folders (.git, .cache) left out, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if is_data_file(Path(f))]
    return found


def _readme_configs(root: Path) -> Optional[Dict[str, Dict[str, List[str]]]]:
    """`configs:` of a hub data set's README.md front matter: {config: {split: [glob, ...]}}, or None."""
    readme = root / "README.md"
    if not readme.is_file():
        return None
    text = readme.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    end = text.find("\n---", 3)
    if end < 0:
        return None
    import yaml

    try:
        meta = yaml.safe_load(text[3:end]) or {}
    except yaml.YAMLError:
        return None
    configs = meta.get("configs") if isinstance(meta, dict) else None
    if not isinstance(configs, list):
        return None
    out: Dict[str, Dict[str, List[str]]] = {}
    for c in configs:
        if not isinstance(c, dict):
            continue
        files = c.get("data_files")
        splits: Dict[str, List[str]] = {}
        if isinstance(files, str):
            splits["train"] = [files]
        elif isinstance(files, list):
            for f in files:
                if isinstance(f, dict) and "split" in f:
                    paths = f.get("path")
                    splits[str(f["split"])] = [paths] if isinstance(paths, str) else list(paths or [])
                elif isinstance(f, str):
                    splits.setdefault("train", []).append(f)
        if splits:
            out[str(c.get("config_name", "default"))] = splits
    return out or None


def _files_by_readme(name: str, root: Path, split: str, src: SourceConfig, configs) -> List[Path]:
    key = f"data.sources.{name}"
    if src.hub_config is not None:
        if src.hub_config not in configs:
            raise DataError(
                f"'{root}' has no config '{src.hub_config}' (its README.md declares {sorted(configs)})",
                source=name,
                key=f"{key}.hub_config",
                hint=f"use one of {sorted(configs)}",
            )
        chosen = src.hub_config
    elif len(configs) == 1:
        chosen = next(iter(configs))
    elif "default" in configs:
        chosen = "default"
    else:
        raise DataError(
            f"'{root}' declares several configs in its README.md: {sorted(configs)}",
            source=name,
            key=f"{key}.hub_config",
            hint=f"pick one: {key}.hub_config={sorted(configs)[0]} (as load_dataset(path, '<config>') would)",
        )
    splits = configs[chosen]
    if split not in splits:
        raise _NoSplit(
            f"'{root}' (config '{chosen}') has no split '{split}'; its splits: {list(splits)}",
            source=name,
            key=f"{key}.split",
            hint=f"set {key}.split / {key}.eval_split to one of {list(splits)}",
        )
    files = sorted({p for pattern in splits[split] for p in root.glob(pattern) if p.is_file() and is_data_file(p)})
    if not files:
        raise DataError(
            f"'{root}': no data file matches {splits[split]} (config '{chosen}', split '{split}')",
            source=name,
            hint="download the data files too (huggingface-cli download <name> --repo-type dataset --local-dir <dir>)",
        )
    return files


def _files_for_split(name: str, local: Path, split: str, src: SourceConfig) -> List[Path]:
    """The files of `local` that hold `split`: a single file holds one split; a directory is split by its README's
    configs, else by file name (see the module docstring)."""
    key = f"data.sources.{name}"
    if local.is_file():
        if not is_data_file(local):
            raise DataError(
                f"'{local}' is not a data file", source=name, hint=f"use a file ending in one of {DATA_SUFFIXES}"
            )
        if split != src.split:
            # A file cannot hold two splits; evaluating on it would evaluate on the training rows.
            raise _NoSplit(
                f"'{local}' is a single file, so it has no split '{split}'",
                source=name,
                key=f"{key}.eval_split",
                hint="point the source at a directory with <split>* files, or hold rows out with data.eval_fraction",
            )
        return [local]
    configs = _readme_configs(local)
    if configs is not None:
        return _files_by_readme(name, local, split, src, configs)
    root = local
    if src.hub_config is not None:
        root = local / src.hub_config
        if not root.is_dir():
            subdirs = sorted(p.name for p in local.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise DataError(
                f"'{local}' has no folder '{src.hub_config}' for {key}.hub_config (folders: {subdirs})",
                source=name,
                key=f"{key}.hub_config",
                hint=f"use one of {subdirs}, or unset it",
            )
    files = _data_files_below(root)
    if not files:
        raise DataError(
            f"directory '{root}' holds no {'/'.join(DATA_SUFFIXES)} files", source=name, hint="add data files"
        )
    matching = [p for p in files if _split_name(p) == split]
    if matching:
        return matching
    names = sorted({_split_name(p) for p in files})
    near = sorted(n for n in names if n.startswith(split))
    # Shards of one split (train_0, train_1): the same name once trailing digits and separators are dropped.
    if near and len({n.rstrip("0123456789_.") for n in near}) == 1:
        return [p for p in files if _split_name(p) in near]
    if near:
        raise DataError(
            f"directory '{root}' has no split named '{split}' but several near it: {near}",
            source=name,
            key=f"{key}.split",
            hint=f"pick one: {key}.split={near[0]} (and {key}.eval_split for the held-out split)",
        )
    if not any(n.startswith(_SPLIT_WORDS) for n in names) and split == src.split:
        return files  # a folder of files that name no split is one split
    raise _NoSplit(
        f"directory '{root}' has no file for split '{split}' (files: {[p.name for p in files][:10]})",
        source=name,
        key=f"{key}.split",
        hint=f"name the files {split}*.jsonl, or set {key}.split/eval_split to a split it has",
    )


# ---------------------------------------------------------------------------------------------------- reading


def _display(path: Path) -> str:
    """A path as short as it can be: relative to the working directory when below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


class _Enough(Exception):
    """Raised by a collector that has its `limit` of rows."""


class _Collector:
    """Rows in reading order; bad ones are kept aside or raised at once, as the policy says."""

    def __init__(
        self,
        name: str,
        policy: str,
        check: Optional[Callable[[Dict[str, Any]], None]],
        key_fields: Optional[Mapping[str, str]],
        limit: Optional[int] = None,
    ):
        self.name, self.policy, self.check, self.key_fields = name, policy, check, key_fields
        self.limit = limit
        self.rows: List[Dict[str, Any]] = []
        self.bad: List[BadRow] = []
        self.failed: List[Dict[str, Any]] = []  # objects that failed `check`, for the keys they do have

    def _full(self) -> None:
        if self.limit is not None and len(self.rows) + len(self.bad) >= self.limit:
            raise _Enough

    def reject(self, bad: BadRow, obj: Optional[Dict[str, Any]] = None) -> None:
        self._full()
        if self.policy == "error":
            missing = obj is not None and bad.reason.startswith("missing key")
            hint = key_hint(self.name, bad.key, [obj], self.key_fields) if missing else None
            raise DataError.from_bad_row(
                bad, hint=hint or "fix or delete the row, or set data.bad_rows=skip to leave such rows out"
            )
        self.bad.append(bad)
        if obj is not None:
            self.failed.append(obj)

    def add(self, obj: Any, origin: str) -> None:
        self._full()
        if not isinstance(obj, dict):
            self.reject(BadRow(self.name, origin, "not a JSON object", f"got {type(obj).__name__}"))
            return
        obj[ORIGIN_KEY] = origin
        if self.check is not None:
            try:
                self.check(obj)
            except RowError as e:
                self.reject(e.at(self.name, origin), obj)
                return
        self.rows.append(obj)


def _open(file: Path):
    """A binary reader of the file, gunzipping `.gz` files."""
    if file.name.endswith(".gz"):
        import gzip

        return gzip.open(file, "rb")
    return open(file, "rb")


def _read_file(file: Path, out: _Collector) -> None:
    shown = _display(file)
    if file.suffix == ".parquet":
        for i, obj in enumerate(_read_parquet(out.name, file, out.limit)):
            out.add(obj, f"{shown}:row {i}")
        return
    if _stem(file) + ".json" == file.name.removesuffix(".gz"):
        objects = _read_json_list(out.name, file)
        if objects is not None:
            for i, obj in enumerate(objects):
                out.add(obj, f"{shown}:row {i}")
            return
    with _open(file) as f:
        for lineno, raw in enumerate(f, 1):
            origin = f"{shown}:{lineno}"
            try:
                # utf-8-sig: editors on Windows start files with a byte-order mark, which is not part of row 1.
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                out.reject(BadRow(out.name, origin, "invalid UTF-8", str(e)))
                continue
            if not line.strip():
                continue
            try:
                # Without its line break, so that an error at the end of the line is placed there, not at
                # column 1 of a next line.
                obj = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                out.reject(BadRow(out.name, origin, "invalid JSON", f"{e.msg} at column {e.pos + 1}"))
                continue
            out.add(obj, origin)


def _read_json_list(name: str, file: Path) -> Optional[list]:
    """The list a `.json` file holds, or None when the file is JSON lines under a .json name."""
    with _open(file) as f:
        text = f.read().decode("utf-8-sig")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return None
        raise DataError(
            f"invalid JSON: {e.msg}",
            source=name,
            origin=f"{_display(file)}:{e.lineno}",
            hint="a .json file holds one list of objects; use .jsonl for one object per line",
        ) from e
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        # {"data": [...]}, a common wrapper.
        data = next(iter(data.values()))
    if not isinstance(data, list):
        raise DataError(
            f"expected a list of objects, got {type(data).__name__}",
            source=name,
            origin=_display(file),
            hint="a .json file holds one list of objects; use .jsonl for one object per line",
        )
    return data


def _read_parquet(name: str, file: Path, limit: Optional[int] = None) -> List[dict]:
    import pyarrow.parquet as pq

    try:
        if limit is not None:
            batch = next(pq.ParquetFile(file).iter_batches(batch_size=max(int(limit), 1)), None)
            return [] if batch is None else batch.to_pylist()
        return pq.read_table(file).to_pylist()
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise DataError(
            f"cannot read parquet file: {type(e).__name__}: {e}",
            source=name,
            origin=_display(file),
            hint="check that the file is a complete parquet file",
        ) from e


def _read_hub(name: str, path: str, split: str, config: Optional[str] = None, key: Optional[str] = None) -> Any:
    try:
        import datasets

        data = datasets.load_dataset(path, config, split=split)
    except Exception as e:  # offline, unknown name, unknown split: all end the same way for the user
        raise DataError(
            f"'{path}' was not found locally (cwd {os.getcwd()}) and the Hugging Face hub could not load it, "
            f"split '{split}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
            source=name,
            key=key or _path_key(name, None),
            hint="the hub may be unreachable or offline (HF_HUB_OFFLINE): download the data set where the hub is "
            "reachable and point the path at the local files, or fix the name/split",
        ) from e
    return data


# ------------------------------------------------------------------------------------------------- validating


def validate_row(row: Mapping[str, Any], required: Mapping[str, str]) -> None:
    """Check that `row` has each key of `required` with a value of the given kind (one of ROW_KINDS).

    Raises RowError naming the first key at fault: missing or null, an empty string, or a wrong type.
    """
    for key, kind in required.items():
        if kind not in _KIND_WORDS:
            raise ValueError(f"unknown row kind {kind!r} for key {key!r}; use one of {ROW_KINDS}")
        if key not in row or row[key] is None:
            raise RowError(f"missing key '{key}'", key=key, detail="" if key not in row else "value is null")
        problem = _kind_problem(row[key], kind)
        if problem is not None:
            reason = "empty string" if problem == "empty" else "wrong type"
            detail = f"expected {_KIND_WORDS[kind]}" + ("" if problem == "empty" else f", {problem}")
            raise RowError(f"{reason} at key '{key}'", key=key, detail=detail)


def _kind_problem(value: Any, kind: str) -> Optional[str]:
    """None when `value` is of `kind`; "empty" for an empty string; else what was found instead."""
    if kind == "any":
        return None
    if kind == "str" or (kind == "text" and isinstance(value, str)):
        if not isinstance(value, str):
            return f"got {type(value).__name__}"
        return "empty" if not value.strip() else None
    if kind in ("messages", "text"):
        return _messages_problem(value)
    if kind == "str_list":
        if not isinstance(value, list) or not value:
            return f"got {_describe(value)}"
        for i, item in enumerate(value):
            if not isinstance(item, str) or not item.strip():
                return f"item {i} is {_describe(item)}"
        return None
    if kind == "label":
        return None if _is_label(value) else f"got {_describe(value)}"
    if kind == "label_list":
        if not isinstance(value, list) or not value:
            return f"got {_describe(value)}"
        for i, item in enumerate(value):
            if not (_is_label(item) or (isinstance(item, float) and 0.0 <= item <= 1.0)):
                return f"item {i} is {_describe(item)}"
        return None
    raise AssertionError(kind)


def _messages_problem(value: Any) -> Optional[str]:
    if not isinstance(value, list) or not value:
        return f"got {_describe(value)}"
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            return f"message {i} is {_describe(message)}"
        for part in ("role", "content"):
            if not isinstance(message.get(part), str):
                return f"message {i} has no string '{part}'"
        if not message["role"]:
            return f"message {i} has an empty role"
    return None


def _is_label(value: Any) -> bool:
    return isinstance(value, bool) or (isinstance(value, int) and value in (0, 1))


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, str):
        return "an empty string" if not value.strip() else "a string"
    return f"a value of type {type(value).__name__}"


def enforce_bad_fraction(
    name: str,
    total: int,
    bad: Sequence[BadRow],
    max_bad_fraction: float,
    *,
    rows: Sequence[Mapping[str, Any]] = (),
    key_fields: Optional[Mapping[str, str]] = None,
) -> None:
    """Raise DataError when more than `max_bad_fraction` of a source's `total` rows are bad.

    So many bad rows mean a wrong key name or format, not noise. When the most common fault is a missing key
    named by a config field (`key_fields`: key -> field, e.g. {"question": "input_key"}), the message lists the
    keys the rows do have and suggests `data.sources.<name>.<field>=...`.
    """
    if total == 0 or len(bad) <= max_bad_fraction * total:
        return
    counts = collections.Counter(b.reason for b in bad)
    reason, count = counts.most_common(1)[0]
    first = next(b for b in bad if b.reason == reason)
    problem = (
        f"{len(bad)} of {total} rows are bad, more than data.max_bad_fraction={max_bad_fraction}; "
        f"most common: {count} x {reason} (first at {first.origin}{'; ' + first.detail if first.detail else ''})"
    )
    hint = key_hint(name, first.key, rows, key_fields) if reason.startswith("missing key") else None
    if hint is None and reason in ("invalid JSON", "not a JSON object", "invalid UTF-8"):
        hint = "check the file format: .jsonl holds one JSON object per line"
    if hint is None:
        hint = "fix the rows, or raise data.max_bad_fraction if this much noise is expected"
    raise DataError(problem, source=name, key=first.key, hint=hint)


def key_hint(
    name: str, key: Optional[str], rows: Sequence[Mapping[str, Any]], key_fields: Optional[Mapping[str, str]]
) -> Optional[str]:
    """For a missing `key` named by a config field (`key_fields`: key -> field, e.g. {"prompt": "input_key"}):
    the keys the rows do have and the override that names the right one; None when no field names `key`.
    """
    field_name = (key_fields or {}).get(key) if key else None
    if field_name is None:
        return None
    present = sorted({k for row in rows[:1000] for k in row if not k.startswith("_")})
    unused = [k for k in present if k not in (key_fields or {})]
    usual = [k for k in _USUAL_KEYS.get(field_name, ()) if k in unused]
    guess = (usual or difflib.get_close_matches(key, unused, n=1, cutoff=0.0) or unused or present or ["<key>"])[0]
    return (
        f"the rows have keys {present}; name the right one with data.sources.{name}.{field_name}=<key> "
        f"(e.g. data.sources.{name}.{field_name}={guess})"
    )
