"""What every Ray worker of a role shares: its rank, the rendezvous, seeding, logging."""

from __future__ import annotations

import logging
import os
import random


class RankWorker:
    def __init__(self, rank: int, world_size: int):
        import faulthandler
        import signal

        # `kill -USR1 <pid>` prints every thread's stack into the worker log: the first thing to look at in a hang.
        faulthandler.register(signal.SIGUSR1, all_threads=True)
        self.rank = rank
        self.world_size = world_size
        logging.basicConfig(level=logging.WARNING, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
        # CPU runs: the driver gives each process its share of the cores (RLHF_CPU_THREADS); oversubscribed
        # intra-op threads make tiny models 10-20x slower.
        threads = os.environ.get("RLHF_CPU_THREADS")
        if threads:
            import torch

            torch.set_num_threads(int(threads))
        # Per-file progress bars from every rank would bury the driver's own bar in the log.
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        # The driver's -v / verbose=true (RLHF_VERBOSE) decides whether third-party warnings show here too.
        from rlhf.quiet import set_verbose

        set_verbose(None)

    def rendezvous(self) -> tuple[str, int]:
        """Rank 0's address and a free port for the role's process group."""
        from rlhf.engines.dist import free_port, node_ip

        return node_ip(), free_port()

    def init_dist(self, master_addr: str, master_port: int, device: str) -> None:
        from rlhf.engines.dist import init_distributed

        init_distributed(self.rank, self.world_size, master_addr, master_port, device)

    @staticmethod
    def seed_everything(seed: int) -> None:
        import numpy as np
        import torch

        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)

    def close(self) -> None:
        from rlhf.engines.dist import destroy_distributed

        destroy_distributed()

    def ping(self) -> int:
        return os.getpid()
