"""Actor groups on placement groups: GPUs reserved by a run are given back when its roles shut down.

Ray accepts a logical GPU count on a machine without GPUs, so the reservation logic runs for real here.
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")


class _Echo:
    def __init__(self, rank: int, world_size: int, tag: str):
        self.rank, self.tag = rank, tag

    def who(self) -> str:
        return f"{self.tag}:{self.rank}"


@pytest.fixture(scope="module")
def one_logical_gpu():
    ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_roles_share_a_bundle_and_release_it(one_logical_gpu) -> None:
    from rlhf.workers.group import ActorGroup, RoleError, make_placement_group

    for run in range(2):  # the second run needs the GPU the first one held
        pg = make_placement_group(1, 1.0, timeout_s=20)
        # Two roles on one GPU bundle, a third of a GPU each (the colocated layout).
        actor = ActorGroup("actor", _Echo, 1, gpus_per_worker=1 / 3, args=("actor",), placement_group=pg, timeout_s=30)
        ref = ActorGroup("ref", _Echo, 1, gpus_per_worker=1 / 3, args=("ref",), placement_group=pg, timeout_s=30)
        assert actor.run("who") == ["actor:0"] and ref.run("who") == ["ref:0"], run
        actor.shutdown()
        ref.shutdown()
    with pytest.raises(RoleError, match="could not reserve 2 GPU bundles"):
        make_placement_group(2, 1.0, timeout_s=2)


class _Slow:
    def __init__(self, rank: int, world_size: int):
        self.rank = rank

    def work(self, seconds: float) -> int:
        import time

        time.sleep(seconds)
        return self.rank


def test_a_killed_rank_stops_the_call_with_its_role_and_rank(one_logical_gpu) -> None:
    """Killing one actor mid-call ends the wait at once with an error naming the role and rank (no hang)."""
    import time

    from rlhf.workers.group import ActorGroup, RoleError

    group = ActorGroup("critic", _Slow, 2, gpus_per_worker=0, timeout_s=120)
    assert group.run("work", 0.0) == [0, 1]
    refs = group.submit("work", 60.0)
    ray.kill(group.actors[1])
    started = time.time()
    with pytest.raises(RoleError, match=r"role critic rank 1 failed in work"):
        group.wait(refs, "work")
    assert time.time() - started < 30
    group.shutdown()
