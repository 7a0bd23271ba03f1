"""Helpers of the configuration tests: a cached composer and the option files on disk.

Composing takes about 0.1 s (Hydra rebuilds the defaults tree each time), so configurations are composed once
per session and handed out as fresh typed objects.
"""

from __future__ import annotations

import functools

import yaml
from omegaconf import OmegaConf

from rlhf.config.preflight import CONF_DIR, compose_config

# The groups of conf/ this suite composes option by option; a new folder must be added here (and tested).
GROUPS = ("algo", "model", "data", "hw", "placement", "engine", "rollout", "reward", "tracking")
# Folders of conf/ without a schema: `tuning/<algo>_<model>_<hw>.yaml` files (package _global_) picked by the
# primary defaults list; tests/config/test_tuning.py composes and plans each one. `bench/<name>.yaml` benchmark
# workloads (rlhf/bench/workloads.py); tests/config/test_bench_workloads.py composes and plans each one.
UNTYPED_GROUPS = ("tuning", "bench")


def tuning_files() -> list[str]:
    return options("tuning")


def tuning_triple(name: str) -> tuple[str, str, str]:
    """(algo, model, hw) of a tuning file name, matched against the option files on disk."""
    for algo in options("algo"):
        for hw in options("hw"):
            prefix, suffix = f"{algo}_", f"_{hw}"
            if name.startswith(prefix) and name.endswith(suffix):
                model = name[len(prefix) : -len(suffix)]
                if model in options("model"):
                    return algo, model, hw
    raise AssertionError(f"conf/tuning/{name}.yaml is not named <algo>_<model>_<hw> after existing option files")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def schema_name(group: str, option: str) -> str:
    """The schema an option file names first in its defaults list (`/schema/<group>/<name>@_here_`)."""
    defaults = yaml.safe_load((CONF_DIR / group / f"{option}.yaml").read_text())["defaults"]
    first = defaults[0]
    prefix, suffix = f"/schema/{group}/", "@_here_"
    assert isinstance(first, str) and first.startswith(prefix) and first.endswith(suffix), (
        f"conf/{group}/{option}.yaml must start its defaults list with {prefix}<schema>{suffix}, got {first!r}"
    )
    return first[len(prefix) : -len(suffix)]


def algo_data(option: str) -> str:
    """The data option an algo file selects (`override /data@_global_.data: <option>`)."""
    defaults = yaml.safe_load((CONF_DIR / "algo" / f"{option}.yaml").read_text())["defaults"]
    picks = [
        d["override /data@_global_.data"]
        for d in defaults
        if isinstance(d, dict) and "override /data@_global_.data" in d
    ]
    assert len(picks) == 1, f"conf/algo/{option}.yaml should pick its data set once, found {picks}"
    return picks[0]


@functools.cache
def _composed(overrides: tuple[str, ...]):
    return compose_config(list(overrides))


def compose(*overrides: str):
    """The composed DictConfig (cached; do not modify it)."""
    return _composed(tuple(overrides))


def typed(*overrides: str):
    """A fresh RunConfig for these overrides."""
    return OmegaConf.to_object(compose(*overrides))
