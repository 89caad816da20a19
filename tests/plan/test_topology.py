"""Rank and world size: torch.distributed first, then RANK / WORLD_SIZE / LOCAL_RANK."""

from __future__ import annotations

import pytest

from fastload.plan import Topology, current_topology


def test_defaults_to_a_single_process():
    assert current_topology({}) == Topology(0, 1, 0)


def test_from_the_standard_variables():
    env = {"RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}
    assert current_topology(env) == Topology(5, 8, 1)
    assert current_topology({"RANK": " ", "WORLD_SIZE": ""}) == Topology(0, 1, 0)


@pytest.mark.parametrize(
    "env,match",
    [
        ({"RANK": "two"}, "RANK='two' is not an integer"),
        ({"RANK": "4", "WORLD_SIZE": "4"}, "rank 4 is out of range for world_size 4"),
        ({"WORLD_SIZE": "0"}, "out of range for world_size 0"),
        ({"LOCAL_RANK": "-1"}, "local_rank must be >= 0"),
    ],
)
def test_bad_variables_are_named(env, match):
    with pytest.raises(ValueError, match=match):
        current_topology(env)


@pytest.mark.timeout(120)
def test_an_initialised_process_group_wins(tmp_path, monkeypatch):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        assert current_topology() == Topology(0, 1, 0)
    finally:
        dist.destroy_process_group()
    assert current_topology() == Topology(3, 4, 0)
