"""Checkpoint state that loads without running code, and digests that catch damaged files.

DeepSpeed saves its states with `torch.save` and loads them with `torch.load(weights_only=False)`: unpickling
arbitrary objects, so a file planted in `checkpoints/step_N/` runs whatever it names. `restrict_loading(engine)`
makes an engine load with `weights_only=True` and an allow-list of the few non-tensor types DeepSpeed itself
writes (below); anything else is refused with the type named. `write_digests(dir)` records the SHA-256 of every
file of a finished checkpoint, and `verify_digests(dir)` names the first file that no longer matches (a
truncated write, a disk error, an edit), so resume can fall back to an older intact checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

DIGEST_FILE = "digests.json"

# Non-tensor types found in DeepSpeed 0.19 checkpoints (ZeRO 0-3, fp32/bf16/fp16): the loss scaler object,
# the ZeRO stage enum, and the namedtuple of parameter slice mappings (universal-checkpoint metadata).
_ALLOWED = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.fp16.loss_scaler", "DynamicLossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


class UnsafeCheckpointError(RuntimeError):
    """A checkpoint file holds an object that loading would have to construct by running code."""


class DamagedCheckpointError(RuntimeError):
    """A checkpoint file does not match the digest written when it was saved."""


def allowed_globals() -> list:
    import importlib

    found = []
    for module, name in _ALLOWED:
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: a type it does not have cannot be in its files
    return found


def safe_torch_load(path: str, map_location: Any = None) -> Any:
    """`torch.load` with weights_only=True and DeepSpeed's own types allowed; UnsafeCheckpointError otherwise."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UnsafeCheckpointError(
            f"{path} holds an object that is not plain checkpoint state ({first}); loading it would run code, so "
            "it was not loaded. If this checkpoint is not one this project wrote, delete it; if it is, report the "
            "type named above (rlhf/engines/safe_load.py lists the types allowed)"
        ) from None


def restrict_loading(engine: Any) -> None:
    """Make a DeepSpeed engine load its state files through `safe_torch_load`."""
    ckpt_engine = getattr(engine, "checkpoint_engine", None)
    if ckpt_engine is None or not hasattr(ckpt_engine, "load"):
        return
    ckpt_engine.load = lambda path, map_location=None: safe_torch_load(path, map_location)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name != DIGEST_FILE)


def write_digests(root: Path) -> None:
    """Record the SHA-256 and size of every file under `root` (call when the checkpoint is complete)."""
    root = Path(root)
    digests = {str(p.relative_to(root)): {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in _files(root)}
    tmp = root / f".{DIGEST_FILE}.tmp"
    tmp.write_text(json.dumps(digests, indent=1, sort_keys=True))
    os.replace(tmp, root / DIGEST_FILE)


def verify_digests(root: Path, progress: Optional[Callable[[str], None]] = None) -> None:
    """Raise DamagedCheckpointError naming the first missing, resized or changed file; no digest file: no check
    (checkpoints written before digests existed)."""
    root = Path(root)
    manifest = root / DIGEST_FILE
    if not manifest.is_file():
        return
    try:
        digests = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise DamagedCheckpointError(f"{manifest} is not valid JSON ({e.msg}): the checkpoint is damaged") from None
    for rel, want in sorted(digests.items()):
        path = root / rel
        if not path.is_file():
            raise DamagedCheckpointError(f"{path} is missing from the checkpoint (it was saved with it)")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise DamagedCheckpointError(
                f"{path} has {size} bytes, {want['bytes']} were saved: it is truncated or was rewritten"
            )
        if _sha256(path) != want["sha256"]:
            raise DamagedCheckpointError(f"{path} does not match the digest written at save: its contents changed")
        if progress:
            progress(rel)
