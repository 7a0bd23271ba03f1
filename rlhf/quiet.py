"""Third-party noise off by default, on with `-v` / `verbose=true`: one switch for the driver and every Ray
worker (workers read RLHF_VERBOSE, which the driver sets before Ray starts them).

Silenced: vLLM's per-sync 'Failed to load weights' lines (VLLM_LOGGING_LEVEL=ERROR), Ray's token-auth notice,
DeepSpeed's 'Setting accelerator to CPU', MLflow's dataset-source notice and its database-setup INFO lines,
torch's 'requires_grad ... to a scalar' warning, UserWarning/FutureWarning/DeprecationWarning raised inside
transformers, torch, peft, deepspeed and mlflow, and transformers' progress bars, and DeepSpeed's bare
'... built successfully' print of its CPU communication op (``stdout_without`` around engine setup). The
project's own warnings (rlhf.*) always show.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

ENV = "RLHF_VERBOSE"

# (logger name, message start) pairs dropped at the logger that emits them.
_LOGGER_NOISE = (
    ("DeepSpeed", "Setting accelerator to CPU"),
    ("ray._private.authentication.authentication_token_setup", "Token authentication is enabled"),
    # Logged when peft imports bitsandbytes on a CPU machine; 4-bit training needs a GPU anyway.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
# INFO chatter (database creation and migration) -> WARNING. The child loggers, since mlflow resets the level of
# its "mlflow" logger when it is imported.
_QUIET_LOGGERS = ("mlflow.store.db.utils", "alembic", "alembic.runtime.migration")
_WARNING_MODULES = r"(transformers|torch|peft|deepspeed|mlflow|accelerate|huggingface_hub)(\..*)?$"
_WARNING_MESSAGES = (
    r".*dataset source can be interpreted in multiple ways",
    r".*requires_grad=True to a scalar",
)


class _Drop(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.start)


_installed: list[tuple[logging.Logger, logging.Filter]] = []
_levels: dict[str, int] = {}


def is_verbose() -> bool:
    return os.environ.get(ENV, "") not in ("", "0", "false")


def set_verbose(verbose: bool | None = None) -> None:
    """Install the filters (verbose False) or remove them (True); None reads RLHF_VERBOSE. Idempotent; the
    setting is exported to RLHF_VERBOSE so processes started later (Ray workers) follow it."""
    if verbose is None:
        verbose = is_verbose()
    os.environ[ENV] = "1" if verbose else "0"
    _remove()
    if verbose:
        if os.environ.get("VLLM_LOGGING_LEVEL") == "ERROR":
            os.environ.pop("VLLM_LOGGING_LEVEL")
        return
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    for name, start in _LOGGER_NOISE:
        logger, f = logging.getLogger(name), _Drop(start)
        logger.addFilter(f)
        _installed.append((logger, f))
    for name in _QUIET_LOGGERS:
        logger = logging.getLogger(name)
        _levels[name] = logger.level
        if logger.level < logging.WARNING:
            logger.setLevel(logging.WARNING)
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category, module=_WARNING_MODULES)
    for message in _WARNING_MESSAGES:
        warnings.filterwarnings("ignore", message=message)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass


class _LineFilter:
    """A stdout stand-in passing every line except those starting with one of `starts`."""

    def __init__(self, out, starts: tuple[str, ...]):
        self.out, self.starts, self.partial = out, starts, ""

    def write(self, text: str) -> int:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        for line in lines:
            if not line.startswith(self.starts):
                self.out.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self.out.flush()

    def close(self) -> None:
        if self.partial and not self.partial.startswith(self.starts):
            self.out.write(self.partial)
        self.partial = ""


@contextlib.contextmanager
def stdout_without(*starts: str) -> Iterator[None]:
    """Drop stdout lines starting with one of `starts` while the block runs (third-party bare prints), unless
    verbose."""
    if is_verbose():
        yield
        return
    f = _LineFilter(sys.stdout, starts)
    try:
        with contextlib.redirect_stdout(f):  # type: ignore[type-var]
            yield
    finally:
        f.close()


# DeepSpeed prints this once per process that starts an engine on CPU.
DEEPSPEED_PRINTS = ("DeepSpeed deepspeed.ops.comm",)


def _remove() -> None:
    while _installed:
        logger, f = _installed.pop()
        logger.removeFilter(f)
    for name, level in _levels.items():
        logging.getLogger(name).setLevel(level)
    _levels.clear()
    ours = {(_WARNING_MODULES, c) for c in (UserWarning, FutureWarning, DeprecationWarning)}
    warnings.filters[:] = [
        f
        for f in warnings.filters
        if not (
            f[0] == "ignore"
            and (
                (f[3] is not None and (getattr(f[3], "pattern", None), f[2]) in ours)
                or (f[1] is not None and getattr(f[1], "pattern", None) in _WARNING_MESSAGES)
            )
        )
    ]
