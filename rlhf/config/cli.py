"""Command-line rewrites applied before Hydra sees argv (`rlhf.run.main`).

Hydra cannot build one typed entry of a `Dict[str, SourceConfig]` from dotted `+` overrides
(`+data.sources.mine.path=x` fails on the missing `mine`), but it merges a whole dict given at once. So

    +data.sources.mine.path=./mine.jsonl +data.sources.mine.weight=0.3
    +reward.sources.len.path=my_rewards.py:length

become one override per dict, `+data.sources={mine: {path: './mine.jsonl', weight: 0.3}}`. In a multirun
(`-m`), a comma list in any field sweeps: the dict override lists one dict per combination.

`-v` / `--verbose` is taken out and sets HYDRA_FULL_ERROR=1: errors then come with their traceback.
"""

from __future__ import annotations

import itertools
import os
import re
from typing import Dict, List, Tuple

# Free-form dicts of typed records that users add entries to.
ENTRY_DICTS = ("data.sources", "reward.sources")
_PLAIN = re.compile(r"^(?:-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|true|false|null|True|False)$")


def rewrite_argv(argv: List[str]) -> List[str]:
    """argv with `+<dict>.<name>.<field>=v` overrides grouped into one dict override per dict (see above)."""
    out: List[str] = []
    multirun = any(a in ("-m", "--multirun") for a in argv)
    grouped: Dict[str, Dict[str, List[Tuple[List[str], str]]]] = {}
    first_at: Dict[str, int] = {}
    for arg in argv:
        if arg in ("-v", "--verbose"):
            os.environ["HYDRA_FULL_ERROR"] = "1"
            continue
        hit = _entry_override(arg)
        if hit is None:
            out.append(arg)
            continue
        parent, name, path, value = hit
        first_at.setdefault(parent, len(out))
        grouped.setdefault(parent, {}).setdefault(name, []).append((path, value))
    # Insert each dict override where its first field was, so relative order with other overrides holds.
    for parent in sorted(grouped, key=lambda p: first_at[p], reverse=True):
        out.insert(first_at[parent], f"+{parent}=" + _dict_value(parent, grouped[parent], multirun))
    return out


def _entry_override(arg: str):
    """(dict, entry name, field path, raw value) for `+data.sources.<name>.<field...>=<value>`, else None."""
    if not arg.startswith("+") or arg.startswith("++") or "=" not in arg:
        return None
    key, value = arg[1:].split("=", 1)
    for parent in ENTRY_DICTS:
        if key.startswith(parent + "."):
            rest = key[len(parent) + 1 :].split(".")
            if len(rest) >= 2 and all(rest):
                return parent, rest[0], rest[1:], value
    return None


def _dict_value(parent: str, entries: Dict[str, List[Tuple[List[str], str]]], multirun: bool) -> str:
    """`{name: {field: value}}`, or for sweeps `{...},{...}` (one dict per combination of swept values)."""
    slots = [
        (name, path, _choices(value) if multirun else [value])
        for name, fields in entries.items()
        for path, value in fields
    ]
    combos = itertools.product(*(choices for _, _, choices in slots))
    rendered = []
    for combo in combos:
        tree: Dict = {}
        for (name, path, _), value in zip(slots, combo):
            # `added` marks a source of the command line, which data.train keeps (rlhf/data/sources.py).
            node = tree.setdefault(name, {"added": "true"} if parent == "data.sources" else {})
            for part in path[:-1]:
                node = node.setdefault(part, {})
            node[path[-1]] = value
        rendered.append(_render(tree))
    return ",".join(rendered)


def _render(tree) -> str:
    if isinstance(tree, dict):
        return "{" + ", ".join(f"{k}: {_render(v)}" for k, v in tree.items()) + "}"
    return _scalar(tree)


def _scalar(value: str) -> str:
    """A value as Hydra's grammar reads it inside a dict: numbers, bools, null, lists and quoted strings raw;
    anything else quoted (paths hold ':' and '/', which the grammar would split on)."""
    v = value.strip()
    if _PLAIN.match(v) or v.startswith(("[", "{")) or (len(v) >= 2 and v[0] == v[-1] and v[0] in "'\""):
        return v
    return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _choices(value: str) -> List[str]:
    """The values of a multirun comma list (commas inside brackets or quotes do not split)."""
    parts: List[str] = []
    current: List[str] = []
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts
