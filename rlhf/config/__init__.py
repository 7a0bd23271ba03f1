"""Typed configuration schemas (stdlib + omegaconf only: imports without torch, ray or vllm)."""

from rlhf.config.run import SCHEMAS, RunConfig, register_configs

__all__ = ["RunConfig", "SCHEMAS", "register_configs"]
