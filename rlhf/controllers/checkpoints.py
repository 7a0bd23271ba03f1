"""Save and resume a run's step checkpoints, the same way for every algorithm family.

Layout (see rlhf/engines/checkpoint.py): ``checkpoints/step_N/<role>/`` holds each trained role's engine
state (``policy``; PPO adds ``critic``), ``checkpoints/step_N/trainer_state.json`` the driver's: the step, the
algorithm and model that wrote it, and whatever the loop keeps (the KL controller's coefficient, the reward
normalizer's moments). Data order and sampling seeds are functions of the step, so a resumed run continues
exactly where the saved one stood.

The roles' ranks write into the temporary sibling of the step directory; the driver, once every rank has
returned, adds its state file last and renames the directory into place, so ``latest`` only ever names a
complete checkpoint. Resuming refuses, before any role loads anything, a checkpoint of another algorithm or
model, or one without state for a role this run trains.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Optional

from rlhf.engines import checkpoint as ck

log = logging.getLogger(__name__)

# Roles whose weights change during training and the sub-directory each writes (``TrainedRole.ckpt_name``);
# the others (reference, reward models) reload from their paths.
TRAINED_ROLES = {"actor": "policy", "critic": "critic"}


def save_checkpoint(roles: dict, output_dir: Path, step: int, *, algo: str, model: str, state: dict, keep: int) -> Path:
    """Checkpoint every trained role and the driver state at ``step``; returns the published directory."""
    root = Path(output_dir) / "checkpoints"
    final = root / ck.step_dir_name(step)
    tmp = ck.temp_sibling(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        ck.check_free_space(root, step)
        for name in TRAINED_ROLES:
            if name in roles:
                roles[name].run("save_state", step)
        ck.publish_step(tmp, final, {"step": step, "algo": algo, "model": model, **state}, keep)
    except BaseException as e:
        # A failed save leaves nothing half-written behind (on a full disk that space is needed back).
        shutil.rmtree(tmp, ignore_errors=True)
        free = shutil.disk_usage(root).free
        if free < 64 * 2**20 or "No space left" in str(e) or "unexpected pos" in str(e):
            raise OSError(
                28,
                f"saving the step-{step} checkpoint in {root} failed: the disk is full "
                f"({free / 2**20:.0f} MiB free). The previous checkpoint is intact; free space, lower "
                "algo.keep_checkpoints, or point output_dir at a larger disk, then resume",
            ) from e
        raise
    return final


def resume_checkpoint(roles: dict, output_dir: Path, *, algo: str, model: str) -> Optional[dict]:
    """Load the newest complete checkpoint into the trained roles; returns its driver state, or None."""
    latest, skipped = ck.intact_checkpoint(Path(output_dir) / "checkpoints")
    for reason in skipped:
        log.warning("not resuming from damaged checkpoint %s", reason)
        print(f"resume: skipping damaged checkpoint {reason}")
    if latest is None:
        if skipped:
            raise RuntimeError(
                f"no intact checkpoint in {Path(output_dir) / 'checkpoints'}: "
                + "; ".join(skipped)
                + ". Delete the damaged ones to start over, or resume=false"
            )
        return None
    state = ck.read_state(latest)
    saved = state.get("algo")
    if saved != algo:
        raise RuntimeError(
            f"{latest} holds a {saved} run, this is algo={algo}: resume it with algo={saved} or start a new output_dir"
        )
    # Checkpoints written before the model was recorded carry no "model": nothing to compare.
    if state.get("model", model) != model:
        raise RuntimeError(
            f"{latest} holds a run of model {state['model']}, this is model.name_or_path={model}: "
            f"resume it with model.name_or_path={state['model']} or start a new output_dir"
        )
    missing = [n for n in TRAINED_ROLES if n in roles and not (latest / TRAINED_ROLES[n]).is_dir()]
    if missing:
        raise RuntimeError(
            f"checkpoint {latest} has no state for role(s) {missing}: it was written by a run with other roles "
            "(e.g. algo=grpo resumed as algo=ppo); resume with the same algo or start a new output_dir"
        )
    for name in TRAINED_ROLES:
        if name in roles:
            roles[name].run("load_state", str(latest))
    log.warning("resumed from %s (step %d)", latest, state["step"])
    return state
