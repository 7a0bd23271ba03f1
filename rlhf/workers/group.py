"""A group of Ray actors playing one role: N ranks on a placement group, call a method on all of them.

After OpenRLHF's actor-group launcher: the driver creates the actors, rank 0 picks the rendezvous address,
and every rank joins one torch.distributed group for its role.
"""

from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)


class RoleError(RuntimeError):
    """A role's actor failed; names the role and rank."""


class ActorGroup:
    def __init__(
        self,
        role: str,
        actor_cls,
        num_workers: int,
        *,
        gpus_per_worker: float,
        args: Sequence[Any] = (),
        placement_group=None,
        bundle_offset: int = 0,
        timeout_s: float = 1800.0,
    ):
        import ray
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        self.role = role
        self.timeout_s = timeout_s
        self.placement_group = placement_group
        remote_cls = ray.remote(actor_cls)
        self.actors = []
        for rank in range(num_workers):
            # Roles sharing a GPU bundle ({"GPU": 1, "CPU": 1}) split its CPU as they split the GPU; a whole
            # CPU each would leave the second role unschedulable inside the bundle (a silent wait).
            shared = placement_group is not None and 0 < gpus_per_worker < 1
            opts: dict[str, Any] = {
                "num_cpus": gpus_per_worker if shared else 1,
                "num_gpus": gpus_per_worker,
                "name": None,
            }
            if placement_group is not None:
                opts["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                    placement_group=placement_group, placement_group_bundle_index=bundle_offset + rank
                )
            opts.pop("name")
            self.actors.append(remote_cls.options(**opts).remote(rank, num_workers, *args))

    def __len__(self) -> int:
        return len(self.actors)

    def run(self, method: str, *args, per_rank: Optional[Sequence[tuple]] = None, timeout_s=None, **kwargs) -> list:
        """Call `method` on every rank and wait; per_rank gives each rank its own positional args."""
        refs = self.submit(method, *args, per_rank=per_rank, **kwargs)
        return self.wait(refs, method, timeout_s)

    def submit(self, method: str, *args, per_rank=None, **kwargs) -> list:
        refs = []
        for rank, actor in enumerate(self.actors):
            a = per_rank[rank] if per_rank is not None else args
            refs.append(getattr(actor, method).remote(*a, **kwargs))
        return refs

    def wait(self, refs: list, what: str = "call", timeout_s=None) -> list:
        """Results in rank order; the first failure (or a timeout) stops the run with the role and rank."""
        import ray

        timeout = timeout_s or self.timeout_s
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=timeout)
            if not done:
                raise RoleError(
                    f"role {self.role}: {what} did not finish within {timeout:.0f}s on ranks "
                    f"{[refs.index(p) for p in pending]}; a rank may be hung or out of memory"
                )
            try:
                ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - re-raised with the rank named
                rank = refs.index(done[0])
                raise RoleError(f"role {self.role} rank {rank} failed in {what}: {_root(e)}") from e
        return ray.get(refs)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self.actors = []
        if self.placement_group is not None:
            # Give the GPUs back to the cluster: a later run in this process (a sweep point, a test) would
            # otherwise find them reserved. Roles sharing a pool remove it once; later calls find it gone.
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.placement_group)
            except Exception:  # noqa: BLE001 - already removed by a role sharing the pool
                pass
            self.placement_group = None


def _root(e: BaseException) -> str:
    cause = getattr(e, "cause", None)
    if cause is not None and cause is not e:
        return f"{type(cause).__name__}: {cause}"
    text = str(e).strip().splitlines()
    return text[-1] if text else type(e).__name__


def make_placement_group(num_bundles: int, gpus_per_bundle: float, timeout_s: float = 120.0):
    """A placement group of GPU bundles (one per rank), waited for with a timeout and a clear error."""
    import ray
    from ray.util.placement_group import placement_group

    bundles = [{"GPU": gpus_per_bundle, "CPU": 1} for _ in range(num_bundles)]
    pg = placement_group(bundles, strategy="PACK")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        avail = ray.available_resources()
        raise RoleError(
            f"could not reserve {num_bundles} GPU bundles within {timeout_s:.0f}s (cluster has "
            f"{avail.get('GPU', 0):g} free GPUs); check hw=<profile> against the cluster, or other jobs holding GPUs"
        )
    return pg
