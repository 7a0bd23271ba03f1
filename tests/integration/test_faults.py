"""Faults injected into real runs: a disk that fills up, a damaged newest checkpoint.

Each case asserts a bounded time to a clear error, nothing half-written left behind, and that the run resumes
from what is intact. The tiny SFT run of test_offline_e2e (8 steps, one checkpoint every step here).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from rlhf.engines import checkpoint as ck
from tests.integration.conftest import SMALL_DATA, run

pytestmark = [pytest.mark.timeout(900), pytest.mark.faults]

SFT = [
    "algo=sft",
    "algo.train_batch_samples=8",
    "algo.micro_batch_per_gpu=4",
    "algo.epochs=1",
    "algo.save_every=1",
    "algo.keep_checkpoints=1",
    *SMALL_DATA["sft"],
]


def _checkpoint_bytes(root: Path) -> int:
    latest = ck.latest_checkpoint(root)
    return sum(p.stat().st_size for p in latest.rglob("*") if p.is_file())


@pytest.fixture
def mount_tmpfs(tmp_path):
    mounts = []

    def mount(size_bytes: int) -> Path:
        path = tmp_path / f"disk{len(mounts)}"
        path.mkdir()
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)], capture_output=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.decode().strip()}")
        mounts.append(path)
        return path

    yield mount
    for path in mounts:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_full_disk_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, mlflow_uri, mount_tmpfs):
    # Measure one checkpoint of this run on a roomy disk, then give the run room for one and a half.
    probe = tmp_path / "probe"
    run(probe, mlflow_uri, *SFT, "algo.max_steps=2")  # the last step is not checkpointed: step 1 is
    size = _checkpoint_bytes(probe / "checkpoints")
    disk = mount_tmpfs(int(size * 1.5) + (1 << 20))
    out = disk / "run"
    start = time.monotonic()
    with pytest.raises(Exception, match=r"not enough disk space for the step-2 checkpoint|disk is full") as info:
        run(out, mlflow_uri, *SFT, "algo.max_steps=4")
    assert time.monotonic() - start < 600
    assert "Traceback" not in str(info.value).splitlines()[0]
    root = out / "checkpoints"
    assert ck.latest_checkpoint(root) == root / "step_000001"
    assert not list(root.glob(".tmp-*")), "a failed save must not leave its partial directory on the full disk"


def test_damaged_newest_checkpoint_resumes_from_the_one_before(tmp_path, mlflow_uri, capsys):
    out = tmp_path / "run"
    keep = [*SFT, "algo.keep_checkpoints=3"]
    run(out, mlflow_uri, *keep, "algo.max_steps=3")
    # As if it had been killed after its last checkpoint (step 2): no final model, no finished marker.
    (out / "finished.json").unlink()
    root = out / "checkpoints"
    newest = ck.latest_checkpoint(root)
    assert newest == root / "step_000002"
    shard = max((p for p in newest.rglob("*.pt")), key=lambda p: p.stat().st_size)
    with open(shard, "r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    capsys.readouterr()
    result = run(out, mlflow_uri, *keep, "algo.max_steps=4")
    assert result.steps == 4
    printed = capsys.readouterr().out
    assert "skipping damaged checkpoint step_000002" in printed and shard.name in printed
