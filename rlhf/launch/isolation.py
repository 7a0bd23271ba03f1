"""Keep the points of a sweep apart when several run on one machine or in one process.

Each point of a Hydra multirun gets: its output and checkpoint directories under its sweep subdirectory
(Hydra's `runtime.output_dir`, stable across a requeue), its own Ray temp directory (so session logs and
sockets of concurrent local clusters never mix), its own Ray namespace, and a fresh local Ray that is shut
down when the point ends (an in-process sweep such as Optuna's would otherwise reuse the first point's Ray).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional


def point_key(output_dir: Path) -> str:
    """A short stable name for a sweep point, from its output directory (same point, same key)."""
    return hashlib.sha256(str(Path(output_dir).resolve()).encode()).hexdigest()[:10]


def ray_namespace(config_name: str, job_num: int, key: str) -> str:
    """`rlhf-<config>-<job num>-<key>`, restricted to characters Ray accepts in a namespace."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"rlhf-{config_name}-{job_num}-{key}")


def ray_temp_root(key: str) -> Path:
    # Under the system temp dir, not the sweep dir: Ray's Unix sockets live below it and socket paths are
    # limited to 107 bytes, which a deep sweep directory easily exceeds.
    return Path(tempfile.gettempdir()) / f"rlhf-ray-{key}"


@contextmanager
def sweep_point(output_dir: Path, namespace: str, *, num_gpus: int, cpu_processes: int) -> Iterator[Optional[str]]:
    """Run one sweep point in its own local Ray (or the cluster at $RAY_ADDRESS); yields the namespace used.

    When Ray is already running in this process (a job executed as a Ray task on a standing cluster), the
    point uses it as it is and yields None.
    """
    import ray

    from rlhf.workers.cluster import ensure_ray

    if ray.is_initialized():
        yield None
        return
    key = point_key(output_dir)
    saved = os.environ.get("RAY_TMPDIR")
    temp = ray_temp_root(key)
    temp.mkdir(parents=True, exist_ok=True)
    os.environ["RAY_TMPDIR"] = str(temp)
    try:
        ensure_ray(num_gpus=num_gpus, namespace=namespace, cpu_processes=cpu_processes)
        yield namespace
    finally:
        if ray.is_initialized():
            ray.shutdown()
        if saved is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = saved
