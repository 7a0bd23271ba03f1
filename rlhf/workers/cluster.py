"""Start or join the Ray cluster a run uses."""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

# The watcher of the local cluster this process started; held so that its pipe stays open while Ray runs.
_reaper = None


def ensure_ray(
    *, num_gpus: int, namespace: str | None = None, num_cpus: int | None = None, cpu_processes: int = 1
) -> None:
    """Join $RAY_ADDRESS when set (a Slurm or standing cluster), else start a local one sized for the run.

    Locally, logical CPUs are over-provisioned (roles mostly wait on each other), so a 2-core laptop can host
    an actor, a reference and a critic process at once.
    """
    import ray

    if ray.is_initialized():
        return
    env_vars = {
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        # vLLM inside Ray actors: keep the engine in-process so weights can be updated directly.
        "VLLM_ENABLE_V1_MULTIPROCESSING": os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "0"),
    }
    if num_gpus == 0:
        env_vars["RLHF_CPU_THREADS"] = str(max(1, (os.cpu_count() or 2) // max(cpu_processes, 1)))
    for key in (
        "RLHF_CACHE",
        "HF_HOME",
        "TORCH_EXTENSIONS_DIR",
        "HF_HUB_OFFLINE",
        "CUDA_VISIBLE_DEVICES",
        "RLHF_VERBOSE",
        "VLLM_LOGGING_LEVEL",
    ):
        if key in os.environ:
            env_vars[key] = os.environ[key]
    runtime_env = {"env_vars": env_vars}
    address = os.environ.get("RAY_ADDRESS")
    if address:
        log.info("joining Ray cluster at %s", address)
        _init_keeping_sigterm(address=address, namespace=namespace, runtime_env=runtime_env, log_to_driver=True)
        return
    cpus = num_cpus or max(8, (os.cpu_count() or 2) * 4)
    # Whatever this local cluster starts is killed when this process ends, even by kill -9 (rlhf/launch/reaper.py).
    from rlhf.launch.reaper import children, start_reaper

    global _reaper
    if _reaper is not None:
        _reaper.close()
    _reaper = start_reaper()
    before = children()
    _init_keeping_sigterm(
        num_cpus=cpus,
        num_gpus=num_gpus,
        namespace=namespace,
        object_store_memory=512 * 1024**2,
        include_dashboard=False,
        runtime_env=runtime_env,
        log_to_driver=True,
        configure_logging=True,
        logging_level=logging.WARNING,
    )
    if _reaper is not None:
        _reaper.watch(children() - before - {_reaper.proc.pid})


def _init_keeping_sigterm(**kwargs) -> None:
    """ray.init, then the SIGTERM handler this program had installed in Python, if any: Ray's failure-signal
    handler replaces it at the C level (it prints a stack and exits), and a harness that reports on SIGTERM
    (rlhf/bench/runner.py interruptible) would lose its report."""
    import signal
    import threading

    import ray

    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**kwargs)
    if callable(handler):
        signal.signal(signal.SIGTERM, handler)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
