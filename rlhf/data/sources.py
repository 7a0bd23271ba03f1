"""From the data config to the sources a run reads: `data.train`/`data.eval`/`data.format` folded into
`data.sources`, and each source's format options (key renames, prompt template, role map, fields).

    data = resolve_data(cfg.data)      # idempotent: a resolved config has data.train unset
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional

from rlhf.config.data import DataConfig, SourceConfig
from rlhf.data.errors import DataError
from rlhf.data.formats import FormatOptions, get_format

KEY_FIELDS = ("input_key", "output_key", "chosen_key", "rejected_key", "label_key")
# The source that data.train creates when it replaces a preset's sources.
TRAIN_SOURCE = "train"


def resolve_data(data: DataConfig) -> DataConfig:
    """`data` with data.train/eval/format folded into `sources` (and those three unset).

    data.train replaces the preset's sources with one source `train`; when the preset is a single source of a
    named format (data=hh_rlhf, data=gsm8k, ...), it keeps that source (format, splits, keys) and changes only
    its path, so a preset works with a local copy of its files.
    """
    describing = {k: getattr(data, k) for k in ("split", "eval_split", "hub_config") if getattr(data, k) is not None}
    if data.train is None and data.eval is None and data.format is None and not describing:
        return data
    preset = {n: s for n, s in data.sources.items() if not s.added}
    added = {n: s for n, s in data.sources.items() if s.added}
    sources: Dict[str, SourceConfig] = dict(data.sources)
    if data.train is not None:
        only = next(iter(preset.values())) if len(preset) == 1 else None
        if only is not None and only.format is not None:
            name = next(iter(preset))
            sources = {name: dataclasses.replace(only, path=str(data.train), max_samples=None), **added}
        else:
            sources = {TRAIN_SOURCE: SourceConfig(path=str(data.train)), **added}
        preset = {n: sources[n] for n in sources if n not in added}
    elif (data.eval is not None or describing) and len(sources) != 1:
        key = "data.eval" if data.eval is not None else f"data.{next(iter(describing))}"
        raise DataError(
            f"{key} describes data.train, but data.train is not set and the preset has {len(sources)} sources",
            key=key,
            hint="set data.train=<path> too, or data.sources.<name>.<field> for one source",
        )
    # data.format and data.eval describe data.train (or the preset's one source).
    target = preset if data.train is not None else sources
    if data.format is not None:
        get_format(data.format)
        if len(target) != 1:
            raise DataError(
                f"data.format={data.format} names the format of data.train, but there are {len(target)} sources",
                key="data.format",
                hint="set data.sources.<name>.format=<format> for each source instead",
            )
    if len(target) == 1:
        name, src = next(iter(target.items()))
        changes = {}
        if data.format is not None:
            changes["format"] = data.format
        if data.eval is not None:
            changes["eval_path"] = str(data.eval)
        changes.update(describing)
        sources[name] = dataclasses.replace(src, **changes)
    elif describing:
        raise DataError(
            f"data.{next(iter(describing))} describes data.train, but there are {len(target)} sources",
            key=f"data.{next(iter(describing))}",
            hint="set data.sources.<name>.split / eval_split / hub_config on each source instead",
        )
    return dataclasses.replace(
        data, sources=sources, train=None, eval=None, format=None, split=None, eval_split=None, hub_config=None
    )


def keys_of(src: SourceConfig) -> Dict[str, str]:
    """The key fields set on a source (config field -> row key)."""
    return {f: getattr(src, f) for f in KEY_FIELDS if getattr(src, f) is not None}


def named_format(name: str, src: SourceConfig) -> Optional[str]:
    """The format a source names: its `format`, `custom` when only keys are set, None to detect."""
    if src.format is not None:
        get_format(src.format, key=f"data.sources.{name}.format")
        return src.format
    return "custom" if keys_of(src) else None


def format_options(src: SourceConfig, data: DataConfig) -> FormatOptions:
    return FormatOptions(
        keys=keys_of(src),
        prompt_template=src.prompt_template or data.prompt_template,
        role_map=dict(data.role_map),
        fields=tuple(str(f) for f in src.fields),
    )
