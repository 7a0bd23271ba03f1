"""Compose-time checks with messages that name the key, the valid choices and what to change.

Hydra already refuses unknown keys, wrong types and unknown options, but its message sits at the bottom of a
chain of exceptions ("Could not override 'algo.betaa'"). This reads the whole chain and rewrites it as a fix:
the key at fault, a close match, the valid keys or options, and the command line that works. It also catches
what Hydra lets through: keys added with `+` to a schema (the typed config would silently drop them).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from pathlib import Path
from typing import Optional, Sequence

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

# Hydra flags whose next argument is a value, not an override.
_VALUE_FLAGS = ("--cfg", "-c", "--package", "-p", "-cd", "--config-dir", "-cn", "--config-name", "-cp", "--config-path")
_INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


class ConfigError(ValueError):
    pass


# The primary config's folder while a `-cd <dir>` command line is checked (conf/ stays on the search path).
_CONFIG_DIR: list[Path] = []


def _compose(overrides: list[str], config_name: str = "config", hydra_config: bool = False):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf.config.run import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    config_dir = _CONFIG_DIR[-1] if _CONFIG_DIR else CONF_DIR
    if config_dir != CONF_DIR:
        overrides = [f"hydra.searchpath=[file://{CONF_DIR}]", *overrides]
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        return compose(config_name, overrides=overrides, return_hydra_config=hydra_config)


def compose_config(overrides: list[str], config_name: str = "config"):
    """Compose the run config (for tests and tools); raises ConfigError with a friendly message."""
    try:
        cfg = _compose(overrides, config_name)
    except Exception as e:  # noqa: BLE001 - rewritten below with context
        raise ConfigError(explain(e, overrides, config_name)) from None
    problem = check_added_keys(cfg)
    if problem:
        raise ConfigError(problem)
    return cfg


def preflight(argv: list[str]) -> Optional[str]:
    """None when the command line composes; else the message to print.

    A multirun (`-m`, or a primary config with `hydra.mode: MULTIRUN` such as a sweep file) is expanded point
    by point (the cartesian grid of its comma/range/choice sweeps; an Optuna search space's choices and
    interval bounds) and every point is composed and planned: all bad points are listed before Hydra launches
    any. `-cd <dir>` and `-cn <name>` are honoured; a `-cd` folder not found from the working directory is
    looked for in the project (`-cd sweeps` from anywhere) and sys.argv is pointed at it for Hydra.
    """
    config_dir, config_name = _config_flags(argv)
    if any(a.startswith(("-cp", "--config-path")) for a in argv):
        return None  # a path relative to the entry module: Hydra's own resolution, not checked here
    if config_dir is not None:
        found = _find_config_dir(config_dir)
        if found is None:
            return (
                f"config directory '{config_dir}' not found: not in the working directory ({Path.cwd()}) nor in "
                f"the project ({CONF_DIR.parent}); sweep files live in {CONF_DIR.parent / 'sweeps'}"
            )
        _point_argv_at(config_dir, found)
        _CONFIG_DIR.append(found)
    try:
        return _preflight(argv, config_name)
    finally:
        if config_dir is not None:
            _CONFIG_DIR.pop()


def _preflight(argv: list[str], config_name: str) -> Optional[str]:
    overrides = _overrides(argv)
    printing = any(
        a in ("--cfg", "-c", "--info", "-i", "--help", "-h", "--hydra-help") or a.startswith(("--cfg=", "--info="))
        for a in argv
    )
    if any(a in ("-m", "--multirun") for a in argv) or _declares_multirun(overrides, config_name):
        return None if printing else check_sweep(overrides, config_name)
    try:
        cfg = _compose(overrides, config_name)
    except Exception:  # noqa: BLE001 - every composition error becomes a message
        # Every problem of the command at once: each bad override, then the plan and the data of the rest.
        return check_point(overrides, config_name, data=not printing) or "the command line does not compose"
    problem = check_added_keys(cfg)
    if problem:
        return problem
    # Printing the config (--cfg, --info, --help) works with values still unset; running does not.
    if not printing:
        return check_missing(cfg)
    return None


def _config_flags(argv: list[str]) -> tuple[Optional[str], str]:
    """(the -cd/--config-dir value or None, the -cn/--config-name value or 'config')."""
    values: dict[str, str] = {}
    for i, a in enumerate(argv):
        for short, long in (("-cd", "--config-dir"), ("-cn", "--config-name")):
            if a in (short, long) and i + 1 < len(argv):
                values[short] = argv[i + 1]
            elif a.startswith((short + "=", long + "=")):
                values[short] = a.split("=", 1)[1]
    return values.get("-cd"), values.get("-cn", "config")


def _find_config_dir(value: str) -> Optional[Path]:
    for base in (Path.cwd(), CONF_DIR.parent):
        path = (base / value).expanduser().resolve()
        if path.is_dir():
            return path
    return None


def _point_argv_at(value: str, found: Path) -> None:
    """Hydra resolves -cd from the working directory: hand it the folder found in the project instead."""
    import sys

    if (Path.cwd() / value).resolve() == found:
        return
    for i, a in enumerate(sys.argv):
        if a in ("-cd", "--config-dir") and i + 1 < len(sys.argv) and sys.argv[i + 1] == value:
            sys.argv[i + 1] = str(found)
        elif a in (f"-cd={value}", f"--config-dir={value}"):
            sys.argv[i] = f"{a.split('=', 1)[0]}={found}"


def _declares_multirun(overrides: list[str], config_name: str) -> bool:
    """The primary config (a sweep file) sets hydra.mode: MULTIRUN."""
    try:
        cfg = _compose([o for o in overrides if not _is_sweep(o)], config_name, hydra_config=True)
    except Exception:  # noqa: BLE001 - the checks below report composition problems with context
        return False
    return str(cfg.hydra.get("mode")) == "RunMode.MULTIRUN"


def _is_sweep(override: str) -> bool:
    try:
        return _parse(override).is_sweep_override()
    except Exception:  # noqa: BLE001 - unparsable: the composition reports it
        return False


def _parse(override: str):
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # noqa: F401 - registers the grammar
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_overrides([override])[0]


def sweep_values(key: str, spec: str) -> list[str]:
    """What a sweeper tries for `key=spec`: every grid/choice/range value, or an interval's two bounds."""
    from hydra.core.override_parser.types import IntervalSweep

    override = _parse(f"{key}={spec}")
    value = override.value()
    if isinstance(value, IntervalSweep):
        return [str(value.start), str(value.end)]
    if not override.is_sweep_override():
        return [str(override.get_value_element_as_str())]
    return [str(v) for v in override.sweep_string_iterator()]


# More grid points than this are checked one axis at a time (each value once, the other axes at their first).
MAX_CHECKED_POINTS = 256


def sweep_points(overrides: list[str], config_name: str = "config") -> tuple[list[str], list[list[str]]]:
    """(overrides shared by every point, the points' own overrides) of a multirun command line."""
    import itertools

    from omegaconf import OmegaConf

    plain = [o for o in overrides if not _is_sweep(o)]
    axes: dict[str, list[str]] = {}
    try:
        cfg = _compose(plain, config_name, hydra_config=True)
        params = OmegaConf.to_container(cfg.hydra.sweeper.get("params") or {}, resolve=False)
    except Exception:  # noqa: BLE001 - composition problems are reported point by point
        params = {}
    for key, spec in (params or {}).items():
        axes[str(key)] = sweep_values(str(key), str(spec))
    for o in overrides:
        if _is_sweep(o):
            key, _, spec = o.partition("=")
            axes[key] = sweep_values(key, spec)
    plain = [o for o in plain if not o.startswith(("hydra.", "hydra/", "+hydra", "~hydra"))]
    grid = [[f"{k}={v}" for v in values] for k, values in axes.items()]
    size = 1
    for values in grid:
        size *= len(values)
    if size <= MAX_CHECKED_POINTS:
        return plain, [list(p) for p in itertools.product(*grid)]
    first = [values[0] for values in grid]
    points = [first]
    for i, values in enumerate(grid):
        points += [first[:i] + [v] + first[i + 1 :] for v in values[1:]]
    return plain, points


def check_point(overrides: list[str], config_name: str = "config", data: bool = False) -> Optional[str]:
    """The message a single run of these overrides would print (composition, keys, missing values, plan, and
    with `data` the data check): every problem, not only the first."""
    from omegaconf import OmegaConf

    from rlhf.config.run import RunConfig
    from rlhf.plan import PlanError

    problems: list[str] = []
    remaining = list(overrides)
    # A composition error hides the point's other problems: report it, drop the override at fault, retry.
    for _ in range(len(overrides) + 1):
        try:
            cfg = _compose(remaining, config_name)
            break
        except Exception as e:  # noqa: BLE001 - every composition error becomes a message
            problems.append(explain(e, remaining, config_name))
            key = _failing_key(e, remaining)
            kept = [o for o in remaining if _override_key(o) != key]
            if key is None or len(kept) == len(remaining):
                return "\n".join(problems)
            remaining = kept
    added, missing = check_added_keys(cfg), check_missing(cfg)
    problems += [p for p in (added, missing) if p]
    if not missing:
        try:
            run = OmegaConf.to_object(cfg)
            assert isinstance(run, RunConfig)
            problems += plan_and_data_problems(run, data)
        except PlanError as e:
            problems.append(str(e))
        except Exception:  # noqa: BLE001 - a key added with '+' may stop the typed conversion; reported above
            if not added:
                raise
    return "\n".join(problems) or None


def plan_and_data_problems(run, data: bool = True) -> list[str]:
    """The plan's problems and (with `data`) the data's, together: one does not hide the other. The data is
    checked against the plan's filled-in config (the model's positions and tokenizer) when the plan resolves."""
    import dataclasses as dc

    from rlhf.data.check import DataCheckError, check_run_data
    from rlhf.data.errors import DataError
    from rlhf.data.sources import resolve_data
    from rlhf.plan import PlanError, resolve_plan

    problems: list[str] = []
    try:
        run = dc.replace(run, data=resolve_data(run.data))  # data.train/eval/format -> data.sources
    except DataError as e:
        return [str(e)]
    try:
        resolve_plan(run)
    except PlanError as e:
        problems.append(str(e))
    if data:
        try:
            check_run_data(run)
        except (DataCheckError, DataError) as e:
            problems.append(str(e))
        except Exception:  # noqa: BLE001 - a config the command line could not compose as meant (an unknown
            pass  # algorithm, say) has no data check to run; its own problems are reported
    return problems


def _failing_key(error: Exception, overrides: Sequence[str] = ()) -> Optional[str]:
    """The config key of the override a composition error is about, when the error names one."""
    text = _chain_text(error)
    for pattern in (
        r"full_key: (\S+)",
        r"Error merging override (\S+)",
        r"Could not override '([^']+)'",
    ):
        m = re.search(pattern, text)
        if m:
            return m.group(1).lstrip("+~").split("=")[0]
    # An unknown option of a config group: the override naming it (not one a config file's defaults name).
    m = re.search(r"Could not find '([^'/]+)/([^']+)'", text)
    if m and any(o.lstrip("+~") == f"{m.group(1)}={m.group(2)}" for o in overrides):
        return m.group(1)
    return None


def check_sweep(overrides: list[str], config_name: str = "config") -> Optional[str]:
    """Every point of a multirun composed and planned; one message listing each bad point, else None."""
    plain, points = sweep_points(overrides, config_name)
    bad: dict[str, list[str]] = {}
    for point in points:
        problem = check_point(plain + point, config_name)
        if problem:
            bad.setdefault(problem, []).append(" ".join(point) or "(no swept values)")
    if not bad:
        return None
    count = sum(len(v) for v in bad.values())
    lines = [f"{count} of {len(points)} sweep point(s) cannot run; nothing was launched:"]
    for problem, names in bad.items():
        where = (
            names[0]
            if len(names) == 1
            else f"{len(names)} points ({'; '.join(names[:4])}{'; ...' if len(names) > 4 else ''})"
        )
        lines.append(f"- {where}:\n    " + problem.replace("\n", "\n    "))
    return "\n".join(lines)


def _overrides(argv: list[str]) -> list[str]:
    out = []
    skip = False
    for i, a in enumerate(argv):
        if skip:
            skip = False
            continue
        if a in _VALUE_FLAGS or (a in ("--info", "-i") and i + 1 < len(argv) and argv[i + 1] in _INFO_CHOICES):
            skip = True
            continue
        if a.startswith("-") or a.startswith(("hydra.", "hydra/", "+hydra", "~hydra")):
            continue
        out.append(a)
    return out


def explain(error: Exception, overrides: list[str], config_name: str = "config") -> str:
    """Turn a composition error (Hydra or OmegaConf, possibly chained) into a message that says what to do."""
    text = _chain_text(error)
    full = re.search(r"full_key: (\S+)", text)
    m = re.search(r"Key '([^']+)' not in '(\w+)'", text)
    if m and full:
        key = full.group(1)
        return _unknown_key_message(
            key, _schema_fields(m.group(2)), m.group(2), _group_hint(key, overrides, config_name)
        )
    m = re.search(r"Key '([^']+)' is not in struct", text)
    if m and full:
        return _unknown_entry(full.group(1), text, overrides, config_name)
    m = re.search(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", text) or re.search(
        r"Value '(.*)' is not a valid (\w+)", text
    )
    if m and full:
        return _wrong_type(full.group(1), m.group(1), m.group(2), overrides, config_name)
    m = re.search(r"Error merging override (\S+)", text)
    sub = re.search(r"dict is not a subclass of (\w+)", text)
    if m and sub:
        key = m.group(1).lstrip("+~").split("=")[0]
        return _cannot_add_typed_entry(key, sub.group(1), overrides, config_name)
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        return _unknown_option(m.group(1))
    m = re.search(r"Error parsing override '([^']*)'", text)
    if m:
        return _unparsable(m.group(1))
    return text.split("\n\n")[0].strip() or type(error).__name__


def _unknown_key_message(key: str, valid: list[str], schema: Optional[str], elsewhere: str = "") -> str:
    parent, _, leaf = key.rpartition(".")
    msg = f"unknown config key '{key}'"
    if schema:
        msg += f" (schema {schema})"
    hint = difflib.get_close_matches(leaf, valid, n=1)
    if elsewhere:
        msg += f". {elsewhere}"
    elif hint:
        msg += f". Did you mean '{parent + '.' if parent else ''}{hint[0]}'?"
    if valid:
        msg += f"\nvalid keys of '{parent or '<root>'}': {', '.join(sorted(valid))}"
    return msg


def check_added_keys(cfg) -> Optional[str]:
    """A message for keys added with `+` to a schema node (the typed config would drop them), else None."""
    from omegaconf import DictConfig, OmegaConf

    def walk(node, prefix: str):
        t = OmegaConf.get_type(node)
        fields = {f.name for f in dataclasses.fields(t)} if dataclasses.is_dataclass(t) else None
        for k in node.keys():
            key = f"{prefix}{k}"
            if fields is not None and k not in fields:
                return _unknown_key_message(key, sorted(fields), t.__name__) + (
                    "\n(added with '+', but a schema takes only its own fields: drop the key or fix its name)"
                )
            child = node._get_node(k)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                found = walk(child, key + ".")
                if found:
                    return found
        return None

    return walk(cfg, "")


def check_missing(cfg) -> Optional[str]:
    """A message naming every mandatory value (`???`) still unset, else None."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if not missing:
        return None
    return (
        f"config values not set: {', '.join(missing)}; give them on the command line ("
        + " ".join(f"{k}=..." for k in missing[:3])
        + ") or in the option file that should define them"
    )


def _chain_text(error: BaseException) -> str:
    parts, seen = [], set()
    e: Optional[BaseException] = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        parts.append(str(e))
        e = e.__cause__ or e.__context__
    return "\n".join(parts)


def _override_key(override: str) -> str:
    return override.lstrip("+~").split("=", 1)[0]


def _without(key: str, overrides: list[str]) -> list[str]:
    """The overrides minus those touching `key`: the key itself, a key below it, or a dict value above it."""
    out = []
    for o in overrides:
        k = _override_key(o)
        group_choice = (CONF_DIR / k).is_dir()
        if k == key or k.startswith(key + ".") or (key.startswith(k + ".") and not group_choice):
            continue
        out.append(o)
    return out


def _compose_quietly(overrides: list[str], config_name: str):
    try:
        return _compose(overrides, config_name)
    except Exception:  # noqa: BLE001 - another problem in the command line; the caller shows less context
        return None


def _select(cfg, key: str):
    from omegaconf import OmegaConf

    if cfg is None:
        return None
    return OmegaConf.select(cfg, key, throw_on_missing=False) if key else cfg


def _schema_fields(schema: str) -> list[str]:
    """Field names of a schema dataclass, found by its class name among the registered schemas."""
    import typing

    from rlhf.config.run import SCHEMAS, RunConfig

    todo = [RunConfig, *(cls for group in SCHEMAS.values() for cls in group.values())]
    seen: set[type] = set()
    while todo:
        cls = todo.pop()
        if cls in seen:
            continue
        seen.add(cls)
        if cls.__name__ == schema:
            return [f.name for f in dataclasses.fields(cls)]
        # Nested schemas: LoraConfig in ModelConfig, SourceConfig in Dict[str, SourceConfig], ...
        for hint in typing.get_type_hints(cls).values():
            todo.extend(
                t for t in (hint, *typing.get_args(hint)) if isinstance(t, type) and dataclasses.is_dataclass(t)
            )
    return []


def _group_hint(key: str, overrides: list[str], config_name: str) -> str:
    """'lora' is a key of 'model': when the leaf of a wrong key lives in another top-level node."""
    parts = key.split(".")
    if len(parts) < 2:
        return ""
    cfg = _compose_quietly(_without(key, overrides), config_name)
    if cfg is None:
        return ""
    leaf = parts[-1]
    homes = [g for g in cfg.keys() if g != parts[0] and hasattr(cfg[g], "keys") and leaf in cfg[g]]
    if not homes:
        return ""
    rest = ".".join(parts[1:])
    return f"'{leaf}' is a key of {', '.join(repr(h) for h in homes)}: {homes[0]}.{leaf}=... (not {parts[0]}.{rest})"


def _unknown_entry(key: str, text: str, overrides: list[str], config_name: str) -> str:
    """A name that is not an entry of a free-form dict (data.sources, reward.sources, deepspeed_overrides...)."""
    parent, _, leaf = key.rpartition(".")
    cfg = _compose_quietly(_without(key, overrides), config_name)
    node = _select(cfg, parent)
    entries = sorted(node.keys()) if hasattr(node, "keys") else []
    msg = f"'{parent}' has no entry '{leaf}'"
    msg += f" (entries: {', '.join(entries)})" if entries else " (it is empty)"
    if parent == "data.sources" and leaf == "train" and any(_override_key(o) == "data.train" for o in overrides):
        return msg + (
            "\ndata.train becomes the source 'train' only after composition; describe it with data.split=, "
            "data.eval_split=, data.hub_config=, data.format= or data.eval="
        )
    hint = difflib.get_close_matches(leaf, entries, n=1)
    if hint:
        return msg + f". Did you mean '{parent}.{hint[0]}'?"
    typed = re.search(r"reference_type=Dict\[str, (\w+)\]", text)
    if typed and typed.group(1) not in ("Any", "str", "int", "float", "bool"):
        return msg + "\n" + _typed_entry_advice(parent, typed.group(1), entries)
    override = next((o for o in overrides if _override_key(o) == key or _override_key(o).startswith(key + ".")), None)
    if override:
        msg += f"\nto add an entry, prefix the override with '+': +{override.lstrip('+~')}"
    return msg


# Option files that show a dict of several entries, quoted as examples.
_EXAMPLES = {"data": "conf/data/sft_mixture.yaml", "reward": "conf/reward/numeric.yaml"}


def _typed_entry_advice(parent: str, schema: str, entries: list[str]) -> str:
    group = parent.split(".")[0]
    example = f"{parent}.{entries[0]}.<field>=..." if entries else f"{group}=<option>"
    like = f", like {_EXAMPLES[group]}" if group in _EXAMPLES else ""
    return (
        f"entries of '{parent}' are {schema} records: `python -m rlhf.run` adds one from the command line with a "
        f"'+' on each of its fields (+{parent}.<name>.path=... +{parent}.<name>.weight=...); or add the entry in "
        f"an option file (conf/{group}/<option>.yaml{like}) and pick it with {group}=<option>, or change an "
        f"existing entry ({example})"
    )


def _cannot_add_typed_entry(key: str, schema: str, overrides: list[str], config_name: str) -> str:
    parent = key.rpartition(".")[0]
    # `+data.sources.new.path=x` fails on `data.sources.new`; find the dict that holds the new entry.
    cfg = _compose_quietly(_without(key, overrides), config_name)
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        node = _select(cfg, ".".join(parts[:i]))
        if hasattr(node, "keys") and not dataclasses.is_dataclass(_type_of(node)):
            parent = ".".join(parts[:i])
            entries = sorted(node.keys())
            return f"cannot add '{parts[i]}' to '{parent}' from the command line\n" + _typed_entry_advice(
                parent, schema, entries
            )
    return f"cannot add '{key}' from the command line\n" + _typed_entry_advice(parent, schema, [])


def _type_of(node):
    from omegaconf import OmegaConf

    return OmegaConf.get_type(node)


def _wrong_type(key: str, value: str, expected: str, overrides: list[str], config_name: str) -> str:
    schema_text = {"Float": "a float", "Integer": "an integer", "bool": "a bool (true or false)"}
    want = schema_text.get(expected, expected.lower())
    msg = f"wrong type for '{key}': got '{value}', expected {want}"
    current = _select(_compose_quietly(_without(key, overrides), config_name), key)
    if current is not None and not hasattr(current, "keys"):
        msg += f" (current value: {key}={_yaml_scalar(current)})"
    return msg


def _yaml_scalar(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _unparsable(override: str) -> str:
    msg = f"cannot parse '{override}': overrides are key=value, e.g. algo=dpo or algo.beta=0.1"
    groups = sorted(p.parent.name for p in CONF_DIR.glob(f"*/{override}.yaml"))
    if groups:
        msg += f". '{override}' is an option of {', '.join(groups)}: {groups[0]}={override}"
    return msg


def _unknown_option(path: str) -> str:
    group, _, bad = path.rpartition("/")
    group = group or path
    folder = CONF_DIR / group
    if not folder.is_dir():
        groups = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir())
        return f"there is no config group '{group}' (groups: {', '.join(groups)}; folders in conf/)"
    options = sorted(p.stem for p in folder.glob("*.yaml"))
    msg = f"unknown option '{bad}' for config group '{group}'"
    hint = difflib.get_close_matches(bad, options, n=1)
    if hint:
        msg += f". Did you mean '{group}={hint[0]}'?"
    return msg + f"\nvalid options: {', '.join(options)} (files in conf/{group}/)"
