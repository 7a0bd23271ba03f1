"""Facts about the machine a run executed on, as MLflow tags (`host.*`, `slurm.*`).

The `hw` profile says what the run was planned for; these say where it actually ran, which is what one needs
when two runs of the same config differ.
"""

from __future__ import annotations

import os
import platform
import socket
import sys

# Scheduler variables worth keeping: they locate the job's logs and allocation.
_SLURM_VARS = (
    "SLURM_JOB_ID",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_PARTITION",
    "SLURM_JOB_ACCOUNT",
    "SLURM_RESTART_COUNT",
)


def host_tags() -> dict[str, str]:
    """Hostname, CPUs, memory, GPUs, Python/torch versions and Slurm job facts (only those present)."""
    tags = {
        "host.name": socket.gethostname(),
        "host.platform": platform.platform(),
        "host.cpus": str(os.cpu_count() or 0),
        "host.python": platform.python_version(),
    }
    try:
        import psutil

        tags["host.memory_gb"] = f"{psutil.virtual_memory().total / 1024**3:.1f}"
    except ImportError:
        pass
    # torch is already loaded by the time a run logs; importing it here would slow `mode=plan`.
    torch = sys.modules.get("torch")
    if torch is not None:
        tags["host.torch"] = torch.__version__
        if torch.cuda.is_available():
            names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            tags["host.gpus"] = str(len(names))
            tags["host.gpu_name"] = names[0]
        else:
            tags["host.gpus"] = "0"
    if os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        tags["host.cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    for var in _SLURM_VARS:
        if var in os.environ:
            tags["slurm." + var[len("SLURM_") :].lower()] = os.environ[var]
    return tags
