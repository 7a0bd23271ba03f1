"""Checkpoint directories that are either complete or absent.

Layout under a run's output directory:
  checkpoints/step_000040/   training state of every rank (DeepSpeed) + trainer_state.json
  checkpoints/latest         name of the newest complete checkpoint (replaced atomically)
  final/                     the model in Hugging Face format (save_pretrained + tokenizer)
Everything is written into a temporary sibling first and renamed into place, so a crash mid-save leaves the
previous checkpoint untouched and `latest` never names a partial directory.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

LATEST = "latest"
STATE_FILE = "trainer_state.json"


def step_dir_name(step: int) -> str:
    return f"step_{step:06d}"


def temp_sibling(final: Path) -> Path:
    return final.parent / f".tmp-{final.name}"


def publish_dir(tmp: Path, final: Path) -> None:
    """Move a fully written directory into place, replacing an older one at the same path."""
    final = Path(final)
    if final.exists():
        old = final.parent / f".old-{final.name}-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(final.parent)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def mark_latest(ckpt_root: Path, name: str) -> None:
    write_text_atomic(Path(ckpt_root) / LATEST, name + "\n")


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The newest complete checkpoint directory, or None."""
    root = Path(ckpt_root)
    pointer = root / LATEST
    if not pointer.exists():
        return None
    path = root / pointer.read_text().strip()
    return path if (path / STATE_FILE).exists() else None


def publish_step(tmp: Path, final: Path, state: dict, keep: int) -> None:
    """Finish a step checkpoint whose shards are in `tmp`: write its state file and the digests of every file
    last, move it into place, point `latest` at it and prune older ones down to `keep`."""
    from rlhf.engines.safe_load import write_digests

    (Path(tmp) / STATE_FILE).write_text(json.dumps(state, indent=2))
    write_digests(tmp)
    publish_dir(tmp, final)
    mark_latest(final.parent, final.name)
    prune_checkpoints(final.parent, keep)


def intact_checkpoint(ckpt_root: Path) -> tuple[Optional[Path], list[str]]:
    """The newest checkpoint whose files match their digests, and why each newer one was passed over.

    `latest` first, then the other step directories newest first: a damaged newest checkpoint (a truncated
    shard, a disk error) falls back to the one before it instead of blocking the resume.
    """
    from rlhf.engines.safe_load import DamagedCheckpointError, verify_digests

    root = Path(ckpt_root)
    first = latest_checkpoint(root)
    others = sorted((p for p in root.glob("step_*") if p.is_dir() and p != first), reverse=True)
    skipped: list[str] = []
    for path in ([first] if first is not None else []) + others:
        if not (path / STATE_FILE).is_file():
            continue
        try:
            json.loads((path / STATE_FILE).read_text())
            verify_digests(path)
        except (DamagedCheckpointError, json.JSONDecodeError) as e:
            skipped.append(f"{path.name}: {e}")
            continue
        return path, skipped
    return None, skipped


def check_free_space(ckpt_root: Path, step: int) -> None:
    """Refuse to start a save the disk cannot hold: the previous checkpoint's size is the estimate."""
    root = Path(ckpt_root)
    previous = latest_checkpoint(root)
    if previous is None:
        return
    need = sum(p.stat().st_size for p in previous.rglob("*") if p.is_file())
    free = shutil.disk_usage(root).free
    if free < need * 1.05:
        raise OSError(
            28,
            f"not enough disk space for the step-{step} checkpoint in {root}: the last one took "
            f"{need / 2**30:.2f} GiB and {free / 2**30:.2f} GiB are free; free space, lower algo.keep_checkpoints, "
            "or point output_dir at a larger disk",
        )


def read_state(ckpt: Path) -> dict:
    return json.loads((Path(ckpt) / STATE_FILE).read_text())


def prune_checkpoints(ckpt_root: Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step directories (never the one `latest` names)."""
    root = Path(ckpt_root)
    latest = latest_checkpoint(root)
    steps = sorted(p for p in root.glob("step_*") if p.is_dir())
    doomed = [p for p in steps[: max(len(steps) - max(keep, 1), 0)] if p != latest]
    for p in doomed:
        shutil.rmtree(p, ignore_errors=True)
    return doomed
