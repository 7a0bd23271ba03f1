"""Named benchmark workloads: one conf/bench/<name>.yaml each, typed by ``Workload``.

A workload is a run of the real entry point (``rlhf.run``'s ``execute``) given by Hydra overrides, plus what
the harness needs around it: the model to build, how many warm-up and measured steps, and the report kind
(``step``: per-step time and throughput; ``accuracy``: held-out accuracy against wall time).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

REPO = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO / "conf" / "bench"


@dataclass
class Workload:
    name: str = ""
    # One line: what it measures and why.
    description: str = ""
    # shape:<qwen2_5_0_5b|qwen2_5_1_5b|llama3_2_1b> (random init), smollm2, or null (the overrides name it).
    model: Optional[str] = None
    warmup_steps: int = 1
    measure_steps: int = 3
    # step | accuracy
    report: str = "step"
    # cpu | cuda: where it is meant to run (a cuda workload on a machine without GPUs is refused).
    device: str = "cuda"
    # `{repo}` stands for the project's root (data files shipped under benchmarks/).
    overrides: List[str] = field(default_factory=list)


def names() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.yaml"))


def load(name: str) -> Workload:
    """conf/bench/<name>.yaml checked against Workload (unknown keys and wrong types fail, naming the file)."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = BENCH_DIR / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"bench workload {name!r} is not one of {names()} (files of {BENCH_DIR})")
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Workload(name=name)), OmegaConf.load(path))
    except OmegaConfBaseException as e:
        raise ValueError(f"{path}: {e}; the keys of a workload are those of rlhf/bench/workloads.py Workload") from e
    w = OmegaConf.to_object(merged)
    if w.report not in ("step", "accuracy"):
        raise ValueError(f"{path}: report={w.report!r}; allowed: step, accuracy")
    if w.device not in ("cpu", "cuda"):
        raise ValueError(f"{path}: device={w.device!r}; allowed: cpu, cuda")
    if w.warmup_steps < 0 or w.measure_steps < 1:
        raise ValueError(f"{path}: warmup_steps >= 0 and measure_steps >= 1 needed")
    w.overrides = [o.replace("{repo}", str(REPO)) for o in w.overrides]
    return w
