"""Resume never lies: a resuming command may change only what the resumed run really applies.

The checkpoint fixes the optimizer, its learning-rate state, the models, the data and the algorithm; the command
line can still move the run's end (max_steps, epochs, max_time), its cadence (eval, save, retention) and where
it is tracked. Anything else that differs from the run's recorded `config.yaml` is refused with the list of
differences, instead of being recorded while the checkpoint's value is used. Applied changes are appended to
`<output_dir>/resume_changes.jsonl` with the step they take effect at (and MLflow tags them `resumed_with.*`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

# Keys (or prefixes ending in '.') a resumed run applies as given.
APPLIED = (
    "algo.max_steps",
    "algo.epochs",
    "algo.max_time",
    "algo.eval_every",
    "algo.save_every",
    "algo.keep_checkpoints",
    "algo.log_every",
    "tracking.",
    "verbose",
    "output_dir",
    "resume",
    "mode",
    "eval.",
)
CHANGES_FILE = "resume_changes.jsonl"


class ResumeMismatchError(ValueError):
    """The resuming command changes settings the checkpoint fixed."""


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out or {prefix[:-1]: {}}
    return {prefix[:-1]: node}


def _applied(key: str) -> bool:
    return any(key == a or (a.endswith(".") and key.startswith(a)) for a in APPLIED)


def check_resume(out: Path, new_config: dict, step: int) -> dict[str, tuple[Any, Any]]:
    """Compare the run's recorded config with the resuming one; returns the applied changes {key: (old, new)}.

    Raises ResumeMismatchError listing every refused difference. No recorded config (a checkpoint copied by
    hand): nothing to compare, nothing refused.
    """
    recorded = Path(out) / "config.yaml"
    if not recorded.is_file():
        return {}
    old = _flat(yaml.safe_load(recorded.read_text()) or {})
    new = _flat(json.loads(json.dumps(new_config, default=str)))
    diffs = {
        k: (old.get(k, "<unset>"), new.get(k, "<unset>"))
        for k in sorted(set(old) | set(new))
        if old.get(k, "<unset>") != new.get(k, "<unset>")
    }
    refused = {k: v for k, v in diffs.items() if not _applied(k)}
    if refused:
        lines = "\n".join(f"  - {k}: {a!r} in the run, {b!r} now" for k, (a, b) in list(refused.items())[:20])
        more = f"\n  ... and {len(refused) - 20} more" if len(refused) > 20 else ""
        raise ResumeMismatchError(
            f"resuming {out} at step {step} would change settings its checkpoint fixed (the checkpoint's values "
            f"would be used while the new ones were recorded):\n{lines}{more}\nGive the run's own values again, or "
            "start a new run: another output_dir=..., or resume=false to start over in this one. A resumed run "
            f"may change only: {', '.join(APPLIED)}"
        )
    applied = {k: v for k, v in diffs.items() if k not in ("output_dir", "resume")}
    if applied:
        with open(Path(out) / CHANGES_FILE, "a") as f:
            f.write(
                json.dumps(
                    {"step": step, "changes": {k: {"from": a, "to": b} for k, (a, b) in applied.items()}}, default=str
                )
                + "\n"
            )
    return applied
