"""Compose-time checks with messages that name the key, the valid choices and what to change.

Hydra already refuses unknown keys and options; this adds "did you mean" and the list of valid keys, so a
typo like `algo.betaa=0.1` reads as a fix rather than a stack trace.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Optional

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def _compose(overrides: list[str], config_name: str = "config"):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from rlhf.config.run import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name, overrides=overrides)


def compose_config(overrides: list[str], config_name: str = "config"):
    """Compose the run config (for tests and tools); raises ConfigError with a friendly message."""
    try:
        return _compose(overrides, config_name)
    except Exception as e:  # noqa: BLE001 - rewritten below with context
        raise ConfigError(explain(e, overrides, config_name)) from None


class ConfigError(ValueError):
    pass


def explain(error: Exception, overrides: list[str], config_name: str = "config") -> str:
    text = str(error)
    m = re.search(r"Key '([^']+)' (?:is )?not in (?:struct|'(\w+)')", text)
    full = re.search(r"full_key: (\S+)", text)
    if m and full:
        key = full.group(1)
        parent, _, leaf = key.rpartition(".")
        valid = _valid_keys(parent, [o for o in overrides if not o.lstrip("+~").startswith(key)], config_name)
        hint = difflib.get_close_matches(leaf, valid, n=1)
        msg = f"unknown config key '{key}'"
        if m.group(2):
            msg += f" (schema {m.group(2)})"
        if hint:
            msg += f". Did you mean '{parent + '.' if parent else ''}{hint[0]}'?"
        msg += f"\nvalid keys of '{parent or '<root>'}': {', '.join(sorted(valid))}"
        return msg
    m = re.search(r"could not be converted to (\w+)", text) or re.search(r"Value '(.+)' is not a valid", text)
    if m and full:
        return f"wrong type for '{full.group(1)}': {text.splitlines()[0]}"
    m = re.search(r"Could not find '([^']+)'", text)
    if m:
        group = m.group(1).split("/")[0]
        options = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
        bad = m.group(1).split("/")[-1]
        hint = difflib.get_close_matches(bad, options, n=1)
        msg = f"unknown option '{bad}' for config group '{group}'"
        if hint:
            msg += f". Did you mean '{group}={hint[0]}'?"
        return msg + f"\nvalid options: {', '.join(options)} (files in conf/{group}/)"
    return text


def _valid_keys(parent: str, overrides: list[str], config_name: str) -> list[str]:
    from omegaconf import OmegaConf

    try:
        cfg = _compose(overrides, config_name)
    except Exception:  # noqa: BLE001 - another problem; fall back to no list
        return []
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return list(node.keys()) if hasattr(node, "keys") else []


def preflight(argv: list[str]) -> Optional[str]:
    """None when the command line composes; else the message to print. Skips multirun and custom configs."""
    if any(a in ("-m", "--multirun") for a in argv):
        return None
    if any(a.startswith(("-cd", "-cn", "--config-dir", "--config-name", "--config-path", "-cp")) for a in argv):
        return None
    overrides = [a for a in argv if not a.startswith("-") and not a.startswith(("hydra.", "hydra/", "+hydra"))]
    # Flags like `--cfg job` take a value that is not an override.
    for flag in ("--cfg", "-c", "--package", "-p", "--info", "-i"):
        if flag in argv:
            i = argv.index(flag)
            if i + 1 < len(argv) and argv[i + 1] in overrides:
                overrides.remove(argv[i + 1])
    try:
        _compose(overrides)
    except Exception as e:  # noqa: BLE001 - every composition error becomes a message
        return explain(e, overrides)
    return None
