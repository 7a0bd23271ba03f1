"""Damaged and oversized checkpoints: the newest intact one is used, and a save the disk cannot hold is refused."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from rlhf.engines import checkpoint as ck


def _publish(root: Path, step: int, payload: bytes) -> Path:
    final = root / ck.step_dir_name(step)
    tmp = ck.temp_sibling(final)
    (tmp / "policy").mkdir(parents=True)
    (tmp / "policy" / "shard.pt").write_bytes(payload)
    ck.publish_step(tmp, final, {"step": step, "algo": "sft"}, keep=3)
    return final


def test_damaged_latest_falls_back_to_the_previous_intact_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    _publish(root, 2, b"a" * 4096)
    newest = _publish(root, 4, b"b" * 4096)
    assert ck.intact_checkpoint(root) == (newest, [])
    with open(newest / "policy" / "shard.pt", "r+b") as f:  # a write cut short
        f.truncate(100)
    path, skipped = ck.intact_checkpoint(root)
    assert path == root / "step_000002"
    assert len(skipped) == 1 and skipped[0].startswith("step_000004:") and "shard.pt has 100 bytes" in skipped[0]
    (root / "step_000002" / ck.STATE_FILE).write_text("{not json")
    path, skipped = ck.intact_checkpoint(root)
    assert path is None and len(skipped) == 2


@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_save_the_disk_cannot_hold_is_refused_before_it_starts(small_disk):
    root = small_disk / "checkpoints"
    _publish(root, 2, b"a" * 600_000)  # 0.6 MB of a 1 MB disk: the next one cannot fit
    with pytest.raises(OSError, match=r"not enough disk space for the step-4 checkpoint .* free space"):
        ck.check_free_space(root, 4)
    # And a write that runs out of space anyway fails with ENOSPC, not a serializer's riddle.
    with pytest.raises(OSError) as info:
        _publish(root, 4, b"b" * 600_000)
    assert info.value.errno == 28
    assert json.loads((root / "step_000002" / ck.STATE_FILE).read_text())["step"] == 2
    assert ck.latest_checkpoint(root) == root / "step_000002"
