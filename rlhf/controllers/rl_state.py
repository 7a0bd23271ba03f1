"""Save and resume the state of an on-policy run: every trained role's DeepSpeed state plus the driver's own.

Layout (see rlhf/engines/checkpoint.py): ``checkpoints/step_N/<role>/`` holds each trained role's engine
state (policy, critic), ``checkpoints/step_N/trainer_state.json`` the driver's: the step, the KL
controller's coefficient and the reward normalizer's running moments. Prompt order and sampling seeds are
functions of the step, so a resumed run continues exactly where the saved one stood.

The roles write into the temporary sibling of the step directory; the driver adds its state file last and
renames the directory into place, so ``latest`` only ever names a complete checkpoint.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from rlhf.engines import checkpoint as ck

log = logging.getLogger(__name__)

# Roles whose weights change during training; the others (reference, reward models) reload from their paths.
TRAINED_ROLES = ("actor", "critic")


def save_rl_state(roles: dict, output_dir: Path, step: int, driver_state: dict, keep: int) -> Path:
    """Checkpoint every trained role and the driver state at ``step``; returns the published directory."""
    root = Path(output_dir) / "checkpoints"
    final = root / ck.step_dir_name(step)
    tmp = ck.temp_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in TRAINED_ROLES:
        if name in roles:
            roles[name].run("save_state", step)
    ck.publish_step(tmp, final, {"step": step, **driver_state}, keep)
    return final


def resume_rl_state(roles: dict, output_dir: Path, algo: str) -> Optional[dict]:
    """Load the newest complete checkpoint into the trained roles; returns its driver state, or None.

    Refuses, before loading anything, a checkpoint written by another algorithm."""
    latest = ck.latest_checkpoint(Path(output_dir) / "checkpoints")
    if latest is None:
        return None
    saved = ck.read_state(latest).get("algo")
    if saved != algo:
        raise RuntimeError(f"{latest} holds a {saved} run, this is algo={algo}: resume it with algo={saved} or "
                           "start a new output_dir")
    missing = [n for n in TRAINED_ROLES if n in roles and not (latest / _ckpt_name(n)).is_dir()]
    if missing:
        raise RuntimeError(
            f"checkpoint {latest} has no state for role(s) {missing}: it was written by a run with other roles "
            "(e.g. algo=grpo resumed as algo=ppo); resume with the same algo or start a new output_dir"
        )
    for name in TRAINED_ROLES:
        if name in roles:
            roles[name].run("load_state", str(latest))
    state = ck.read_state(latest)
    log.warning("resumed from %s (step %d)", latest, state["step"])
    return state


def _ckpt_name(role: str) -> str:
    """The sub-directory a role's worker writes (``TrainedRole.ckpt_name``)."""
    return {"actor": "policy", "critic": "critic"}[role]
