"""Schema of the `hw` group: facts about a machine or cluster (never tuning)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class HwConfig:
    # Profile name, `<gpu>x<total gpus>` (`cpu` for a machine without GPUs).
    name: str = "cpu"
    gpu: str = "none"
    gpus_per_node: int = 0
    nodes: int = 1
    # Usable memory of one GPU, GiB.
    gpu_memory_gb: float = 0.0
    # Host memory of one node, GiB (CPU offload and CPU runs draw on it).
    cpu_memory_gb: float = 16.0
    cpus_per_node: int = 2
    # Link between the GPUs of one node: nvlink, pcie, or none (a single GPU).
    interconnect: str = "none"
    # Link between nodes: infiniband, ethernet, or none (a single node).
    network: str = "none"
    # Dense bf16 peak of one GPU, TFLOP/s (for MFU).
    peak_tflops: float = 0.0
    bf16: bool = False
    # On a machine without GPUs: how many data-parallel training processes (gloo) to start.
    cpu_workers: int = 1
