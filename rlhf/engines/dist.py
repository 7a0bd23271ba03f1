"""torch.distributed setup for one rank of a role (gloo on CPU, NCCL on GPU)."""

from __future__ import annotations

import os
import socket
import sys
from datetime import timedelta


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def node_ip() -> str:
    try:
        import ray

        if ray.is_initialized():
            return ray.util.get_node_ip_address()
    except ImportError:
        pass
    return "127.0.0.1"


def init_distributed(
    rank: int, world_size: int, master_addr: str, master_port: int, device: str, timeout_s: float = 600.0
) -> None:
    """Join the role's process group. DeepSpeed reads these variables (else it looks for MPI)."""
    import torch
    import torch.distributed as dist

    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK="0",  # one visible GPU per Ray actor
        MASTER_ADDR=master_addr,
        MASTER_PORT=str(master_port),
    )
    if dist.is_initialized():
        return
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend=backend, rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout_s))


def destroy_distributed() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        # Without this, multi-process ZeRO-2/3 on gloo aborts at interpreter exit.
        dist.barrier()
        ds_comm = sys.modules.get("deepspeed.comm.comm")
        if ds_comm is not None and getattr(ds_comm, "cdb", None) is not None:
            # DeepSpeed's teardown also drops the groups it cached (its world-group clone): a later engine in
            # this process would otherwise broadcast over a destroyed group.
            ds_comm.destroy_process_group()
        else:
            dist.destroy_process_group()


def all_reduce_sum(value: float) -> float:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return float(value)
    device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item())
