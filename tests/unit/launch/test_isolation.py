"""Sweep-point isolation names and the multi-node Ray bootstrap's pure parts."""

from __future__ import annotations

from rlhf.launch.isolation import point_key, ray_namespace, ray_temp_root
from rlhf.launch.ray_cluster import head_port, job_topology


def test_point_key_is_stable_and_distinct(tmp_path):
    assert point_key(tmp_path / "0") == point_key(tmp_path / "0")
    assert point_key(tmp_path / "0") != point_key(tmp_path / "1")
    # Ray's Unix sockets sit about 70 characters below the temp root; the limit is 107.
    assert len(str(ray_temp_root(point_key(tmp_path / "0")))) < 40


def test_namespace_keeps_only_characters_ray_accepts():
    assert ray_namespace("ppo kl/grid", 3, "abc") == "rlhf-ppo_kl_grid-3-abc"


def test_head_port_from_job_id():
    # 20000 + 10 * (123456 % 900) = 20000 + 10 * 156 = 21560
    assert head_port("123456") == 21560
    # Array jobs: the digits of "987_3" are 9873 -> 20000 + 10 * (9873 % 900) = 20000 + 10 * 873 = 28730
    assert head_port("987_3") == 28730
    assert all(20000 <= head_port(str(j)) < 29000 for j in range(0, 5000, 37))


def test_no_topology_outside_a_submitit_job(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    assert job_topology() is None
